"""Where a Ray build's time goes, per phase: the builds tests/test_index_ray.py runs.

    python benchmarks/ray_build.py [--images 300]

On a local Ray cluster of 2 CPUs (as the tests start it), with the tiny encoder: a catalog of
--images small garments plus two unreadable files (every build reads those again: they have no
embedding), then
1. a local build (the reference), 2. a Ray build into a fresh folder, 3. a Ray rebuild with
nothing new (only the two unreadable files to read), 4. a Ray rebuild with 3 new garments.
Each Ray build's time is split into its phases: hashing (RayEngine.hash_images), encoding
(RayEngine.encode) and the rest (plan, write: the same code as the local build). Prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fashion_rag.openclip_encoder import GarmentEncoder  # noqa: E402
from fashion_rag.retrieval.build import build_index  # noqa: E402
from fashion_rag.retrieval.build.engines import RayEngine  # noqa: E402
from fashion_rag.retrieval.catalog import scan_catalog  # noqa: E402
from tools.demo.encoder import TINY_ARCH, write_tiny_encoder_weights  # noqa: E402


class TimedRayEngine(RayEngine):
    """RayEngine, recording how long each of its two Ray steps took."""

    def __init__(self) -> None:
        super().__init__()
        self.phases: dict[str, float] = {}

    def hash_images(self, catalog, items):
        start = time.perf_counter()
        try:
            return super().hash_images(catalog, items)
        finally:
            self.phases["hash"] = time.perf_counter() - start

    def encode(self, catalog, todo, encoder, batch_size, store, work_dir, progress):
        start = time.perf_counter()
        try:
            return super().encode(catalog, todo, encoder, batch_size, store, work_dir, progress)
        finally:
            self.phases["encode"] = time.perf_counter() - start


def write_catalog(root: Path, n: int, seed: int = 11) -> list[dict]:
    rng = np.random.default_rng(seed)
    (root / "garments").mkdir(parents=True)
    rows = []
    for i in range(n):
        pixels = np.empty((64, 48, 3), np.uint8)
        pixels[:] = rng.integers(0, 256, 3)
        pixels[int(rng.integers(0, 50)) :: 7] = rng.integers(0, 256, 3)
        Image.fromarray(pixels).save(root / "garments" / f"g{i:05d}.png")
        rows.append({"id": f"g{i:05d}", "image": f"garments/g{i:05d}.png", "category": "upper_body"})
    (root / "garments" / "broken.png").write_bytes(b"not an image")
    good = (root / "garments" / "g00000.png").read_bytes()
    (root / "garments" / "cut.png").write_bytes(good[: len(good) // 2])
    rows += [{"id": "broken", "image": "garments/broken.png", "category": "upper_body"},
             {"id": "cut", "image": "garments/cut.png", "category": "upper_body"}]
    return rows


def save_rows(root: Path, rows: list[dict]) -> None:
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300)
    args = ap.parse_args()
    table: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        import ray

        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20,
                 logging_level="ERROR", configure_logging=False)
        table.append(("import ray, ray.init (2 CPUs)", time.perf_counter() - start, ""))
        weights = write_tiny_encoder_weights(root / "tiny.safetensors", seed=0)
        encoder = GarmentEncoder(weights, TINY_ARCH)
        catalog = root / "catalog"
        rows = write_catalog(catalog, args.images)
        save_rows(catalog, rows)

        start = time.perf_counter()
        report = build_index(scan_catalog(catalog), root / "local", encoder)
        table.append((f"local build ({report.encoded} encoded)", time.perf_counter() - start, ""))

        def ray_build(what: str) -> None:
            engine = TimedRayEngine()
            start = time.perf_counter()
            report = build_index(scan_catalog(catalog), root / "ray", encoder, engine=engine)
            total = time.perf_counter() - start
            phases = ", ".join(f"{k} {v:.1f}" for k, v in engine.phases.items())
            rest = total - sum(engine.phases.values())
            step = f"Ray build, {what} ({report.encoded} encoded)"
            table.append((step, total, f"{phases}, rest {rest:.1f}"))

        ray_build("fresh folder")
        ray_build("nothing new")
        rng = np.random.default_rng(5)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)).save(
                catalog / "garments" / f"new{i}.png")
            rows.append({"id": f"new{i}", "image": f"garments/new{i}.png", "category": "upper_body"})
        save_rows(catalog, rows)
        ray_build("3 new garments")
        ray.shutdown()
    print("| step | s | phases (s) |\n|---|---|---|")
    for step, seconds, phases in table:
        print(f"| {step} | {seconds:.1f} | {phases} |")


if __name__ == "__main__":
    main()
