"""Bytes per garment of an index (format 4: the fitted garments stored in it), and the index size
at 10k / 1M garments, from a real build of two catalogs:

    python benchmarks/garment_storage.py [--photos N]

- "drawn": the demo catalog (tools/demo/catalog.py: flat-coloured drawings, 36 garments);
- "photos": N crops of the photographs scikit-image ships (astronaut, chelsea, coffee, rocket,
  motorcycle, retina), each resized to a product-photo size: photographic detail, which compresses like a
  real product photo's (a pessimistic stand-in: no white in-shop background).
Each is built with the library's build (tiny demo encoder, 32-d). The table gives the measured
bytes per garment of every file of the built version; the 10k / 1M columns are extrapolated
linearly from them (labelled so), with the embeddings at ViT-L/14's 768-d float32 (3,072
bytes) in place of the tiny encoder's, and IVF parts (1 byte/dim + 8-byte ids) at 1M.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from fashion_rag.openclip_encoder import GarmentEncoder  # noqa: E402
from fashion_rag.retrieval.build import build_index  # noqa: E402
from fashion_rag.retrieval.catalog import scan_catalog  # noqa: E402
from fashion_rag.retrieval.ondisk import resolve_version  # noqa: E402
from tools.demo.catalog import write_demo_catalog  # noqa: E402
from tools.demo.encoder import TINY_ARCH, write_tiny_encoder_weights  # noqa: E402

VIT_L_DIM = 768
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg")


def photo_catalog(root: Path, n: int) -> Path:
    import skimage.data

    folder = Path(skimage.data.__file__).parent  # the photographs shipped in the wheel
    rng = np.random.default_rng(0)
    sources = [np.asarray(Image.open(folder / name).convert("RGB")) for name in PHOTOS]
    for i in range(n):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 0.9)), int(w * rng.uniform(0.5, 0.9))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = Image.fromarray(src[y : y + ch, x : x + cw]).resize((750, 1000))  # a product photo's size
        (root / "upper_body").mkdir(parents=True, exist_ok=True)
        crop.save(root / "upper_body" / f"p{i:04d}.jpg", quality=92)
    return root


def measure(catalog: Path, out: Path, encoder: GarmentEncoder) -> tuple[int, dict[str, int]]:
    report = build_index(scan_catalog(catalog), out, encoder, log_fn=lambda m: None)
    folder = resolve_version(out).data_dir
    return report.items, {p.name: p.stat().st_size for p in sorted(folder.iterdir())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=70)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        encoder = GarmentEncoder(write_tiny_encoder_weights(root / "tiny.safetensors"), TINY_ARCH)
        catalogs = {"drawn": write_demo_catalog(root / "drawn", seed=0),
                    "photos": photo_catalog(root / "photos", args.photos)}
        print("| catalog | garments | stored images B/garment | manifest B/garment | embeddings B/garment "
              "(ViT-L/14) | index at 10k (extrapolated) | index at 1M (extrapolated) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, catalog in catalogs.items():
            n, sizes = measure(catalog, root / f"idx-{name}", encoder)
            images = sizes["garments.bin"] / n
            manifest = sizes["manifest.json"] / n
            emb = VIT_L_DIM * 4
            flat = images + manifest + emb  # exact search below 10k per category: no .faiss file
            ivf = flat + VIT_L_DIM + 8  # IVF,SQ8 parts at 1M
            print(f"| {name} | {n} | {images:,.0f} | {manifest:,.0f} | {emb:,} "
                  f"| {flat * 1e4 / 2**20:,.0f} MiB | {ivf * 1e6 / 2**30:,.1f} GiB |")


if __name__ == "__main__":
    main()
