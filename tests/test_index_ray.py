"""`index build --engine ray`: the same index as the local build, built by Ray Data workers.

A real local Ray cluster (2 CPUs) for the module; the encoders below are the real tiny encoder,
counting what it encodes or dying once, shipped to the workers by value.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="Ray Data is optional (pip install \"fashion-rag[ray]\")")

from fashion_rag.cli import main as cli_main  # noqa: E402
from fashion_rag.openclip_encoder import GarmentEncoder  # noqa: E402
from fashion_rag.retrieval.build import build_index, engines  # noqa: E402
from fashion_rag.retrieval.build.engines import BuildFailedError, RayEngine  # noqa: E402
from fashion_rag.retrieval.catalog import scan_catalog  # noqa: E402
from fashion_rag.retrieval.index import load_index  # noqa: E402
from fashion_rag.retrieval.search import search  # noqa: E402
from tools.demo.encoder import TINY_ARCH  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = ("upper_body", "lower_body", "dresses")
PER_CATEGORY = 100
QUERIES = ["red top", "blue striped trousers", "a long dress", "green", "checked skirt", "black"]


def _die_once(marks: Path, name: str) -> None:
    """Kill this process the first time `name` is marked in `marks` (workers are processes)."""
    try:
        os.close(os.open(marks / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os._exit(1)  # no exception, no cleanup: the process is gone, as with a crash or an OOM kill


class CountingEncoder(GarmentEncoder):
    """The tiny encoder, appending the size of every batch it encodes to a file; its worker dies
    once, before its first batch is counted."""

    def __init__(self, weights: Path, log: Path, marks: Path) -> None:
        super().__init__(weights, TINY_ARCH)
        self.log, self.marks = log, marks

    def encode_pixels(self, pixels):
        _die_once(self.marks, "died-encoding")
        with open(self.log, "a") as f:
            f.write(f"{len(pixels)}\n")
        return super().encode_pixels(pixels)


class DiesOnceEncoder(GarmentEncoder):
    """Kills its worker process once while preprocessing (a task) and once while encoding (an actor)."""

    def __init__(self, weights: Path, marks: Path) -> None:
        super().__init__(weights, TINY_ARCH)
        self.marks = marks

    def _die_once(self, name: str) -> None:
        _die_once(self.marks, name)

    def preprocess_images(self, images):
        self._die_once("task-died")
        return super().preprocess_images(images)

    def encode_pixels(self, pixels):
        self._die_once("actor-died")
        return super().encode_pixels(pixels)


class CrashesOnMagentaEncoder(GarmentEncoder):
    """Kills its worker every time it decodes the magenta image (as an image that crashes a decoder)."""

    def __init__(self, weights: Path, attempts: Path) -> None:
        super().__init__(weights, TINY_ARCH)
        self.attempts = attempts

    def preprocess_images(self, images):
        if any(im.getpixel((192, 256)) == (255, 0, 255) for im in images):
            with open(self.attempts, "a") as f:
                f.write("attempt\n")
            os._exit(1)
        return super().preprocess_images(images)


class PoisonedEncoder(GarmentEncoder):
    """Raises on any batch holding the magenta image (a model error that no retry cures)."""

    def encode_pixels(self, pixels):
        px = np.asarray(pixels)
        if ((px[:, 0].mean(axis=(1, 2)) > 1.5) & (px[:, 1].mean(axis=(1, 2)) < -1.5)).any():
            raise ValueError("poisoned batch")
        return super().encode_pixels(pixels)


def _garment(rng: np.random.Generator, size=(48, 64)) -> Image.Image:
    """A small distinct image: a colour, a few bands of another (fitted to 384x512 by the build)."""
    w, h = size
    pixels = np.empty((h, w, 3), np.uint8)
    pixels[:] = rng.integers(0, 256, 3)
    for _ in range(int(rng.integers(1, 4))):
        y = int(rng.integers(0, h - 4))
        pixels[y : y + int(rng.integers(2, 12))] = rng.integers(0, 256, 3)
    return Image.fromarray(pixels)


def _write_catalog(root: Path) -> Path:
    """300 garments, plus entries every build must skip or share: the same list for both engines."""
    rng = np.random.default_rng(11)
    rows = []
    for cat in CATEGORIES:
        (root / cat).mkdir(parents=True)
        for i in range(PER_CATEGORY):
            item = f"{cat[:3]}{i:03d}"
            _garment(rng).save(root / cat / f"{item}.png")
            rows.append({"id": item, "image": f"{cat}/{item}.png", "category": cat,
                         "caption": f"{QUERIES[i % len(QUERIES)]} {cat.replace('_', ' ')} {i}"})
    (root / "dresses" / "broken.png").write_bytes(b"not an image at all")
    good = (root / "dresses" / "dre000.png").read_bytes()
    (root / "dresses" / "cut.png").write_bytes(good[: len(good) // 2])
    shutil.copy(root / "upper_body" / "upp007.png", root / "upper_body" / "twin.png")  # same content
    rows += [{"id": "broken", "image": "dresses/broken.png", "category": "dresses"},
             {"id": "cut", "image": "dresses/cut.png", "category": "dresses"},
             {"id": "ghost", "image": "dresses/ghost.png", "category": "dresses"},
             {"id": "twin", "image": "upper_body/twin.png", "category": "upper_body", "caption": "twin"}]
    _write_rows(root, rows)
    return root


def _write_rows(root: Path, rows: list[dict]) -> None:
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _rows(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]


def _snapshot(folder: Path) -> dict[str, bytes]:
    """The index's files (not its lock file: that records the last build that held it)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".build.lock"}


def _same_index(a: Path, b: Path, encoder: GarmentEncoder) -> None:
    """Same items, categories, captions, hashes, embeddings (1e-6), vector parts and top-10s."""
    ia, ib = load_index(a, encoder), load_index(b, encoder)
    for key in ("ids", "paths", "categories", "captions", "sha256"):
        assert getattr(ia.manifest.items, key) == getattr(ib.manifest.items, key), key
    np.testing.assert_allclose(np.asarray(ia.embeddings), np.asarray(ib.embeddings), atol=1e-6, rtol=0)
    parts = [[dataclasses.replace(part, tuned_recall_at_10=None) for part in i.manifest.vector_index.parts]
             for i in (ia, ib)]
    assert parts[0] == parts[1]
    for text in QUERIES:
        for category in ("any", *CATEGORIES):
            top = [[g.id for g in search(i, text, 10, mode="image", category=category)] for i in (ia, ib)]
            assert top[0] == top[1] and len(top[0]) == 10, (text, category)


@pytest.fixture(scope="module")
def cluster(local_ray):
    # This module's encoders travel to the workers by value (the workers cannot import a test module).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return local_ray


@pytest.fixture(scope="module")
def built(tmp_path_factory, cluster, tiny_weights):
    """The catalog, built once locally and once on Ray (300 new images: decoding tasks feeding
    an encoder actor pool), where a decoding task's worker and an actor's die once each (in
    root/marks): one build for the tests of both."""
    root = tmp_path_factory.mktemp("built")
    catalog = _write_catalog(root / "catalog")
    encoder = GarmentEncoder(tiny_weights, TINY_ARCH)
    local = build_index(scan_catalog(catalog), root / "local", encoder, index_type="auto", ivf_threshold=50)
    (root / "marks").mkdir()
    on_ray = build_index(scan_catalog(catalog), root / "ray", DiesOnceEncoder(tiny_weights, root / "marks"),
                         index_type="auto", ivf_threshold=50, engine=RayEngine())
    return root, catalog, local, on_ray


def test_ray_build_is_the_local_build(built, tiny_weights):
    root, catalog, local, on_ray = built
    assert on_ray.written and on_ray.index_type == "ivf"  # 100 per category, threshold 50: IVF parts
    assert (on_ray.items, on_ray.encoded, on_ray.reused) == (local.items, local.encoded, local.reused) == (
        301, 300, 0)  # the twin has upp007's content: 300 contents encoded, for 301 items
    skips = [sorted((s.id, s.reason, s.row) for s in r.skipped) for r in (local, on_ray)]
    assert skips[0] == skips[1] == [("broken", "not an image", 301), ("cut", "unreadable", 302),
                                    ("ghost", "missing", 303)]
    assert [s.detail for s in sorted(on_ray.skipped, key=lambda s: s.id)] == [
        s.detail for s in sorted(local.skipped, key=lambda s: s.id)]
    _same_index(root / "local", root / "ray", GarmentEncoder(tiny_weights, TINY_ARCH))
    assert not [p for p in (root / "ray").iterdir() if p.name.startswith(".tmp-")]  # shards cleaned up


def test_incremental_ray_build_encodes_only_new_images(built, tiny_weights, tmp_path):
    root, source, _, _ = built
    catalog = Path(shutil.copytree(source, tmp_path / "catalog"))
    out = Path(shutil.copytree(root / "ray", tmp_path / "ray"))
    rows = _rows(catalog)
    removed = [r["id"] for r in rows[10:15]]
    rows = rows[:10] + rows[15:]
    rng = np.random.default_rng(99)
    for i in range(5):
        _garment(rng).save(catalog / "lower_body" / f"new{i}.png")
        rows.append({"id": f"new{i}", "image": f"lower_body/new{i}.png", "category": "lower_body"})
    _write_rows(catalog, rows)

    log = tmp_path / "encoded.log"
    counting = CountingEncoder(tiny_weights, log, tmp_path)
    shards = tmp_path / "shards"  # (--ray-shards: a folder or URI of the user's, not the index's)
    report = build_index(scan_catalog(catalog), out, counting, ivf_threshold=50,
                         engine=RayEngine(shards=str(shards)))
    assert (report.encoded, report.removed, report.reused, report.items) == (5, 5, 296, 301)
    assert shards.is_dir() and not list(shards.rglob("*"))  # the build's shards, deleted once read
    assert sum(int(n) for n in log.read_text().split()) == 5  # what the workers ran through the model
    assert (tmp_path / "died-encoding").exists()  # a small build's task, its worker killed: retried
    index = load_index(out)
    assert not set(removed) & set(index.ids) and {f"new{i}" for i in range(5)} <= set(index.ids)
    # Exactly the index a local build of the changed catalog gives.
    _same_as_local_rebuild(root, catalog, out, tiny_weights, tmp_path)



def _same_as_local_rebuild(root: Path, catalog: Path, out: Path, tiny_weights: Path, tmp_path: Path) -> None:
    """`out` is exactly the index an incremental local build of `catalog` gives."""
    local = Path(shutil.copytree(root / "local", tmp_path / "local"))
    build_index(scan_catalog(catalog), local, GarmentEncoder(tiny_weights, TINY_ARCH), ivf_threshold=50)
    _same_index(local, out, GarmentEncoder(tiny_weights, TINY_ARCH))


def test_workers_killed_mid_build_are_retried(built):
    """The module's Ray build (the `built` fixture), where a decoding task's worker and an encoder
    actor were killed once each: retried, and test_ray_build_is_the_local_build finds the index the
    local build gives."""
    root, _, local, on_ray = built
    assert sorted(p.name for p in (root / "marks").iterdir()) == ["actor-died", "task-died"]  # both died
    assert on_ray.written and (on_ray.encoded, on_ray.items) == (local.encoded, local.items) == (300, 301)


def _ray_index_and_a_new_image(built, tmp_path: Path) -> tuple[Path, Path, dict]:
    """A copy of the Ray-built index, its catalog with one new image ("magenta"), and the
    index's bytes before any rebuild."""
    root, source, _, _ = built
    catalog = Path(shutil.copytree(source, tmp_path / "catalog"))
    out = Path(shutil.copytree(root / "ray", tmp_path / "indexes" / "ray"))
    before = _snapshot(out)
    Image.new("RGB", (384, 512), (255, 0, 255)).save(catalog / "dresses" / "magenta.png")
    _write_rows(catalog, _rows(catalog) + [{"id": "magenta", "image": "dresses/magenta.png",
                                            "category": "dresses"}])
    return catalog, out, before


def test_failing_batch_fails_the_build_cleanly_naming_its_items(built, tiny_weights, tmp_path):
    catalog, out, before = _ray_index_and_a_new_image(built, tmp_path)
    with pytest.raises(BuildFailedError, match="previous index is unchanged") as err:
        build_index(scan_catalog(catalog), out, PoisonedEncoder(tiny_weights, TINY_ARCH), ivf_threshold=50,
                    engine=RayEngine())
    assert err.value.failed == ["magenta"]  # the one new image: its batch failed
    assert "poisoned batch" in str(err.value)
    assert _snapshot(out) == before  # the previous index, byte for byte, and nothing left behind
    assert sorted(p.name for p in out.parent.iterdir()) == ["ray"]


@pytest.mark.parametrize("small_build", [None, 0], ids=["tasks", "actor-pool"])
def test_worker_dying_on_every_try_fails_the_build_cleanly(built, tiny_weights, tmp_path, small_build,
                                                          monkeypatch):
    """Ray Data alone would retry a dying batch forever; the build gives up after RETRIES retries
    (3: docs/index-on-ray.md's figure, written out), on both paths: a small build's plain tasks and
    a large build's decoding tasks before the actor pool (small_build=0 sends these 3 images there).
    The builds run with RETRIES set to 1: two worker deaths, not four, and a cap distinct from Ray's
    own default for tasks (3 retries), so a call that leaves max_retries out fails too.
    Mutations caught: RETRIES = 2 in build/engines.py (failed: yes); max_retries=5 (not RETRIES)
    on the actor pool's decoding tasks only (failed: the actor-pool case); max_retries left out
    of the plain tasks (failed: the tasks case)."""
    assert engines.RETRIES == 3  # the documented figure
    monkeypatch.setattr(engines, "RETRIES", 1)  # read by the driver when it submits the work
    catalog, out, before = _ray_index_and_a_new_image(built, tmp_path)
    attempts = tmp_path / "attempts"
    with pytest.raises(BuildFailedError, match="previous index is unchanged") as err:
        build_index(scan_catalog(catalog), out, CrashesOnMagentaEncoder(tiny_weights, attempts),
                    ivf_threshold=50, engine=RayEngine(small_build=small_build))
    # Named: the images not encoded, i.e. the failing block's (the two unreadable images have no
    # embedding, so every build reads them again; they share the new image's block).
    assert err.value.failed == ["broken", "cut", "magenta"] and "magenta" in str(err.value)
    assert len(attempts.read_text().split()) == 1 + 1  # the first try and the one retry
    assert _snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["ray"]


def test_cli_engine_ray(built, tiny_weights, tmp_path, capsys, monkeypatch):
    root, catalog, _, _ = built
    out = Path(shutil.copytree(root / "ray", tmp_path / "idx"))
    args = ["index", "build", "--catalog", str(catalog), "--out", str(out), "--encoder", TINY_ARCH,
            "--weights", str(tiny_weights), "--ivf-threshold", "50"]
    assert cli_main([*args, "--engine", "ray", "--ray-actors", "1"]) == 0  # on this module's cluster
    err = capsys.readouterr().err
    assert "unchanged" in err and "301 garments indexed (0 encoded, 301 reused, 0 removed), 3 skipped" in err
    assert "skipped: 'cut' (metadata.jsonl line 302): unreadable" in err  # by id, line and reason
    # Ray options without --engine ray, and a missing Ray: one line each, exit code 2, nothing built.
    args[5] = str(tmp_path / "b")
    assert cli_main([*args, "--ray-address", "auto"]) == 2
    assert "--ray-address only applies to --engine ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as where it is not installed
    assert cli_main([*args, "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "fashion-rag[ray]"' in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_local_build_never_imports_ray(built, tiny_weights, tmp_path):
    root, catalog, _, _ = built
    out = shutil.copytree(root / "local", tmp_path / "i")  # (nothing to encode: a quick build)
    code = ("import sys; from fashion_rag.cli import main;"
            f"code = main(['index', 'build', '--catalog', {str(catalog)!r}, '--out', {str(out)!r},"
            f" '--encoder', {TINY_ARCH!r}, '--weights', {str(tiny_weights)!r}, '--ivf-threshold', '50']);"
            "print(code, 'ray' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.stdout.split() == ["0", "False"], r.stderr[-2000:]
