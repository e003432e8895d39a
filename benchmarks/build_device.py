"""Index build on each device: `fashion_rag index build --device` on the CPU and on a CUDA GPU.

    python benchmarks/build_device.py             # OpenCLIP ViT-L-14 (random weights), 256 garments
    python benchmarks/build_device.py --smoke     # the tiny demo encoder, 24 garments (checks the script)

Each device builds the same catalog (synthetic garments in three categories, drawn with
tools/demo/catalog.py) through the command's entry point, as a user runs it; the table gives the
build's seconds and images per second, then how far the GPU-built embeddings are from the
CPU-built ones (largest relative error of a row, smallest cosine) and how many of each garment's
10 nearest neighbours (by image, in the CPU index) the GPU index returns. Random weights of
ViT-L-14's layout are written once to --cache (benchmarks/encoder_load.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from encoder_load import weights_file  # noqa: E402

from tools.demo.catalog import COLOURS, PATTERNS, SHAPES, draw_garment  # noqa: E402


def write_catalog(root: Path, n: int) -> Path:
    """n distinct garments (shape x colour x pattern, then shifted colours), a third per category."""
    rows = []
    combos = itertools.cycle([(cat, shape, c, p) for cat, shapes in SHAPES.items() for shape in shapes
                              for c in COLOURS for p in PATTERNS])
    for i, (category, shape, colour, pattern) in zip(range(n), combos, strict=False):
        rgb = tuple((v + 37 * (i // 100)) % 256 for v in COLOURS[colour])  # past one round: other colours
        path = root / category / f"g{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_garment(SHAPES[category][shape], rgb, pattern).save(path)
        rows.append({"id": f"g{i:05d}", "image": f"{category}/g{i:05d}.png", "category": category,
                     "caption": f"{colour} {pattern} {shape}"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


def build(catalog: Path, out: Path, weights: Path, arch: str, device: str, batch: int) -> float:
    """Seconds of one `index build --device` through the command's entry point (its log kept quiet)."""
    from fashion_rag.cli import main

    log = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(log):
        code = main(["index", "build", "--catalog", str(catalog), "--out", str(out), "--encoder", arch,
                     "--weights", str(weights), "--device", device, "--batch-size", str(batch)])
    seconds = time.perf_counter() - start
    if code != 0 or f"encoding on {device}" not in log.getvalue():
        raise SystemExit(f"build on {device} failed (exit {code}):\n{log.getvalue()[-3000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="the tiny encoder, 24 garments (checks the script)")
    p.add_argument("--n", type=int, default=None, help="garments (default 256; smoke 24)")
    p.add_argument("--batch-size", type=int, default=None, help="default 128 (smoke 8)")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "fashion_rag_bench",
                   help="where the encoder weights are written once")
    p.add_argument("--devices", default=None,
                   help="comma-separated (default: cpu, and cuda if torch sees one)")
    a = p.parse_args(argv)
    import numpy as np
    import torch

    from fashion_rag.retrieval.index import load_index

    n = a.n or (24 if a.smoke else 256)
    batch = a.batch_size or (8 if a.smoke else 128)
    devices = a.devices.split(",") if a.devices else ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    weights, arch = weights_file(a.cache, a.smoke)
    with tempfile.TemporaryDirectory(prefix="fashion_rag_build_device_") as tmp:
        catalog = write_catalog(Path(tmp) / "catalog", n)
        seconds = {d: build(catalog, Path(tmp) / f"index-{d}", weights, arch, d, batch) for d in devices}
        emb = {d: np.asarray(load_index(Path(tmp) / f"index-{d}").embeddings) for d in devices}
        name = torch.cuda.get_device_name(0) if "cuda" in devices else "no GPU"
        print(f"\n{arch}, {n} garments, batch {batch}; torch {torch.__version__}; {name}")
        print("| device | build, s | images/s | embeddings vs cpu: max relative error / min cosine | "
              "top-10 neighbours as cpu |")
        print("|---|---|---|---|---|")
        base = emb[devices[0]]
        exact = np.argsort(-(base @ base.T), axis=1, kind="stable")[:, :10]
        for d in devices:
            rel = float((np.linalg.norm(emb[d] - base, axis=1) / np.linalg.norm(base, axis=1)).max())
            cos = float((emb[d] * base).sum(axis=1).min())
            found = np.argsort(-(emb[d] @ emb[d].T), axis=1, kind="stable")[:, :10]
            overlap = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)])
            print(f"| {d} | {seconds[d]:.1f} | {n / seconds[d]:.1f} | {rel:.1e} / {cos:.6f} "
                  f"| {overlap:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
