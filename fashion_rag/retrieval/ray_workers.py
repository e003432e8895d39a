"""What the Ray build runs on the cluster's workers (ray_engine.py drives it).

The per-image steps are the local build's (build_plan.hash_image, build_plan.load_garment), so
both engines skip the same images for the same reasons. A batch whose code raises is not
raised but recorded, row by row, in its output's "error" column: the rest of the build
finishes and the driver then names every failing item at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..images import GARMENT_SIZE, PAD_COLOR
from .build_plan import garment_png, hash_image, load_garment
from .catalog import Catalog, CatalogItem, Skip
from .paths import shorten


def _failure(exc: Exception) -> str:
    return shorten(f"{type(exc).__name__}: {exc}", 500)


def hash_batch(batch: Any, root: str) -> Any:
    import pyarrow as pa

    catalog = Catalog(Path(root), [])
    rows = batch["row"].to_pylist()
    out: dict[str, list[Any]] = {"sha256": [], "reason": [], "detail": [], "error": []}
    try:
        for path in batch["path"].to_pylist():
            result = hash_image(catalog, CatalogItem("", path, ""))
            skip = result if isinstance(result, Skip) else None
            out["sha256"].append("" if skip else result)
            out["reason"].append(skip.reason if skip else "")
            out["detail"].append(skip.detail if skip else "")
            out["error"].append("")
    except Exception as exc:  # a bug or a broken worker, not a bad image (those are skips)
        out = {"sha256": [""] * len(rows), "reason": [""] * len(rows), "detail": [""] * len(rows),
               "error": [_failure(exc)] * len(rows)}
    columns = {k: pa.array(v, pa.string()) for k, v in out.items()}
    return pa.table({"row": pa.array(rows, pa.int64()), **columns})


def prepare_batch(batch: Any, root: str, encoder: Any) -> dict[str, np.ndarray]:
    """Read, check, decode and preprocess a batch (CPU): pixels and the garment PNG the index
    stores, or the reason an image is skipped."""
    from PIL import Image

    catalog = Catalog(Path(root), [])
    rows = batch["row"].to_pylist()
    blank = Image.new("RGB", GARMENT_SIZE, PAD_COLOR)  # in place of an image that is not encoded
    reasons, details, errors = [""] * len(rows), [""] * len(rows), [""] * len(rows)
    try:
        garments = []
        listed = zip(batch["path"].to_pylist(), batch["sha256"].to_pylist(), strict=True)
        for i, (path, sha) in enumerate(listed):
            result = load_garment(catalog, CatalogItem("", path, ""), sha)
            if isinstance(result, Skip):
                reasons[i], details[i] = result.reason, result.detail
            garments.append(blank if isinstance(result, Skip) else result)
        pixels = encoder.preprocess_images(garments).numpy()
        pngs = [b"" if reasons[i] else garment_png(g) for i, g in enumerate(garments)]
    except Exception as exc:
        errors = [_failure(exc)] * len(rows)
        pixels = encoder.preprocess_images([blank] * len(rows)).numpy()  # same shape as other batches
        pngs = [b""] * len(rows)
    return {"row": np.asarray(rows, dtype=np.int64), "reason": np.asarray(reasons, dtype=object),
            "detail": np.asarray(details, dtype=object), "error": np.asarray(errors, dtype=object),
            "pixels": pixels, "garment": np.asarray(pngs, dtype=object)}


class EncoderActor:
    """An actor holding the model: pixels -> embeddings, a batch at a time."""

    def __init__(self, encoder: Any, gpu: bool) -> None:
        self.encoder = encoder
        module = encoder.module  # loaded here, once per actor, not in its first batch
        if gpu:
            module.to("cuda")

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        rows = batch["row"].astype(np.int64)
        errors = [str(e) for e in batch["error"]]
        ok = (batch["reason"] == "") & (batch["error"] == "")
        emb = np.zeros((len(rows), int(self.encoder.dim)), dtype=np.float32)
        try:
            if ok.any():
                emb[ok] = self.encoder.encode_pixels(batch["pixels"][ok])
        except Exception as exc:  # recorded, not raised: the build names every failing item at the end
            errors = [_failure(exc) if k else e for k, e in zip(ok, errors, strict=True)]
        flat = pa.array(emb.reshape(-1), pa.float32())
        return pa.table({"row": pa.array(rows), "reason": pa.array(list(batch["reason"]), pa.string()),
                         "detail": pa.array(list(batch["detail"]), pa.string()),
                         "error": pa.array(errors, pa.string()),
                         "garment": pa.array(list(batch["garment"]), pa.binary()),
                         "embedding": pa.FixedSizeListArray.from_arrays(flat, emb.shape[1])})
