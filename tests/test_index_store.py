"""Index building and loading: incremental, atomic, checked against the encoder, IVF recall."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from fashion_rag.openclip_encoder import GarmentEncoder
from fashion_rag.retrieval.ann import create_vector_index, exact_top_k, ivf_nlist, recall_at_k
from fashion_rag.retrieval.build import build_index
from fashion_rag.retrieval.build.engines import LocalEngine, NewEmbeddings, read_fitted_garment
from fashion_rag.retrieval.catalog import scan_catalog
from fashion_rag.retrieval.index import load_index
from fashion_rag.retrieval.ondisk import (
    MANIFEST,
    POINTER,
    EncoderMismatchError,
    IndexFormatError,
    read_manifest,
)
from tools.demo.catalog import COLOURS, SHAPES, draw_garment
from tools.demo.encoder import TINY_ARCH, write_tiny_encoder_weights
from tools.synthetic_index import in_memory_index


class CountingEncoder(GarmentEncoder):
    """The real tiny encoder, counting the images it encodes; optionally failing mid-build."""

    def __init__(self, weights: Path, fail_after_calls: int | None = None) -> None:
        super().__init__(weights, TINY_ARCH)
        self.images_encoded = 0
        self.calls = 0
        self.fail_after_calls = fail_after_calls

    def encode_images(self, images, batch_size=16, progress=None):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise RuntimeError("simulated failure in the middle of a build")
        self.calls += 1
        self.images_encoded += len(images)
        return super().encode_images(images, batch_size, progress)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """The index's files (not its lock file: that records the last build that held it)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".build.lock"}


def test_build_load_roundtrip(catalog_dir, tiny_weights, tmp_path):
    enc = GarmentEncoder(tiny_weights, TINY_ARCH)
    report = build_index(scan_catalog(catalog_dir), tmp_path / "idx", enc)
    assert (report.items, report.encoded, report.reused, report.written) == (36, 36, 0, True)
    assert report.index_type == "flat"
    index = load_index(tmp_path / "idx", enc)
    manifest = read_manifest(tmp_path / "idx")
    on_disk = json.loads((index.index_dir / index.version / MANIFEST).read_text())
    assert manifest.to_json() == on_disk  # parsed and written back: the same JSON
    assert manifest.encoder.name == TINY_ARCH and manifest.encoder.dim == 32
    assert manifest.encoder.weights_sha256 == enc.weights_hash
    assert manifest.encoder.random_demo is True
    assert "catalog_root" not in on_disk  # the garments are in the index: no folder outside it is named
    assert all(not p.startswith("/") for p in manifest.items.paths)  # relative to the catalog
    assert index.per_category() == {"upper_body": 12, "lower_body": 12, "dresses": 12}
    # The stored garment is the catalog image fitted by PIL's own pad (docs/method.md), losslessly.
    source = Image.open(catalog_dir / manifest.items.paths[0]).convert("RGB")
    fitted = ImageOps.pad(source, (384, 512), Image.Resampling.BICUBIC, color=(255, 255, 255))
    first = index.image(index.ids[0])
    assert first.size == (384, 512) and np.array_equal(np.asarray(first), np.asarray(fitted))
    # Stored embeddings are the encoder's, unit norm, in manifest order.
    np.testing.assert_allclose(index.embeddings[0], enc.encode_images([first])[0], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(index.embeddings, axis=1), 1.0, atol=1e-5)


def test_incremental_rebuild_encodes_only_changes(catalog_dir, tiny_weights, tmp_path):
    out = tmp_path / "idx"
    enc = CountingEncoder(tiny_weights)
    build_index(scan_catalog(catalog_dir), out, enc)
    assert enc.images_encoded == 36
    before = load_index(out)
    old_emb = {i: np.array(before.embeddings[p]) for p, i in enumerate(before.ids)}
    old_png = {i: before.stored_png(p) for p, i in enumerate(before.ids)}
    mtime = (out / POINTER).stat().st_mtime_ns

    enc2 = CountingEncoder(tiny_weights)
    report = build_index(scan_catalog(catalog_dir), out, enc2)
    assert (enc2.images_encoded, report.written, report.reused) == (0, False, 36)
    assert (out / POINTER).stat().st_mtime_ns == mtime  # untouched: ComfyUI sees no change

    # Change one image, add one, remove one (the metadata lists what exists).
    rows = [json.loads(line) for line in (catalog_dir / "metadata.jsonl").read_text().splitlines()]
    changed, removed = rows[0], rows[13]
    new_look = draw_garment(SHAPES["upper_body"]["long-sleeve top"], COLOURS["green"], "dots")
    new_look.save(catalog_dir / changed["image"])
    (catalog_dir / removed["image"]).unlink()
    rows.remove(removed)
    added = draw_garment(SHAPES["dresses"]["mini dress"], COLOURS["navy"], "checks")
    added.save(catalog_dir / "dresses" / "new.png")
    rows.append({"id": "new01", "image": "dresses/new.png", "category": "dresses",
                 "caption": "navy checked mini dress"})
    (catalog_dir / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    enc3 = CountingEncoder(tiny_weights)
    report = build_index(scan_catalog(catalog_dir), out, enc3)
    assert enc3.images_encoded == 2
    assert (report.items, report.encoded, report.reused, report.removed) == (36, 2, 34, 1)
    after = load_index(out, enc3)
    assert removed["id"] not in after and "new01" in after
    for p, item_id in enumerate(after.ids):
        if item_id not in (changed["id"], "new01"):
            assert np.array_equal(after.embeddings[p], old_emb[item_id])  # reused bit for bit
            assert after.stored_png(p) == old_png[item_id]  # its stored image too
    pos = after.position(changed["id"])
    assert not np.allclose(after.embeddings[pos], old_emb[changed["id"]])
    fresh = enc3.encode_images([Image.open(catalog_dir / changed["image"]).convert("RGB")])[0]
    np.testing.assert_allclose(after.embeddings[pos], fresh, atol=1e-5)
    assert np.array_equal(np.asarray(after.image(changed["id"])), np.asarray(new_look.convert("RGB")))


def test_corrupt_images_are_skipped_and_reported(catalog_dir, tiny_weights, tmp_path):
    (catalog_dir / "metadata.jsonl").unlink()  # folder mode: every image file is an item
    (catalog_dir / "dresses" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    good = (catalog_dir / "dresses" / "dress00.png").read_bytes()
    (catalog_dir / "upper_body" / "cut.png").write_bytes(good[: len(good) // 2])
    report = build_index(scan_catalog(catalog_dir), tmp_path / "idx", GarmentEncoder(tiny_weights, TINY_ARCH))
    assert report.items == 36
    assert sorted((s.id, s.reason) for s in report.skipped) == [("broken", "not an image"),
                                                                ("cut", "unreadable")]
    assert report.summary().startswith("36 garments indexed (36 encoded, 0 reused, 0 removed), 2 skipped "
                                       "(1 not an image, 1 unreadable)")
    index = load_index(tmp_path / "idx")
    assert "broken" not in index and "cut" not in index and "dress00" in index


def test_failed_build_leaves_previous_index_intact(catalog_dir, tiny_weights, tmp_path):
    out = tmp_path / "indexes" / "idx"
    build_index(scan_catalog(catalog_dir), out, GarmentEncoder(tiny_weights, TINY_ARCH))
    before = _snapshot(out)
    # New images force encoding; the encoder dies on its second batch.
    for i in range(40):
        draw_garment(SHAPES["lower_body"]["skirt"], (i * 6, 100, 200 - i * 4), "solid").save(
            catalog_dir / "lower_body" / f"extra{i}.png")
    (catalog_dir / "metadata.jsonl").unlink()
    with pytest.raises(RuntimeError, match="simulated failure"):
        build_index(scan_catalog(catalog_dir), out, CountingEncoder(tiny_weights, fail_after_calls=1),
                    batch_size=8)
    assert _snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["idx"]  # no temp folder left behind
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert len(load_index(out, GarmentEncoder(tiny_weights, TINY_ARCH))) == 36


def test_the_local_engine_encodes_on_its_device(catalog_dir, tiny_weights, tmp_path):
    """LocalEngine(device) moves the encoder's model there before the first image (`--device`; a
    GPU is proven by benchmarks/build_device.py). On `meta` a tensor holds no data, so a build
    encoding there fails and publishes nothing. Mutation caught: the engine ignoring its device."""
    encoder = GarmentEncoder(tiny_weights, TINY_ARCH)
    out = tmp_path / "idx"
    with pytest.raises(NotImplementedError, match="meta tensor"):
        build_index(scan_catalog(catalog_dir), out, encoder, engine=LocalEngine("meta"))
    assert next(encoder.module.parameters()).device.type == "meta"
    assert not out.exists()  # a first build that failed leaves no folder
    report = build_index(scan_catalog(catalog_dir), out, GarmentEncoder(tiny_weights, TINY_ARCH),
                         engine=LocalEngine("cpu"))
    assert report.encoded == 36 and report.written


def test_other_encoder_is_refused_naming_both(catalog_dir, tiny_weights, tmp_path):
    build_index(scan_catalog(catalog_dir), tmp_path / "idx", GarmentEncoder(tiny_weights, TINY_ARCH))
    other = write_tiny_encoder_weights(tmp_path / "other.safetensors", seed=1)
    with pytest.raises(EncoderMismatchError) as err:
        load_index(tmp_path / "idx", GarmentEncoder(other, TINY_ARCH))
    msg = str(err.value)
    assert "tiny.safetensors" in msg and "other.safetensors" in msg
    assert GarmentEncoder(tiny_weights).weights_hash[:12] in msg
    assert GarmentEncoder(other).weights_hash[:12] in msg
    assert "rebuild" in msg
    # Another architecture (and dimension) is refused before any model is built.
    with pytest.raises(EncoderMismatchError, match=r"fashion-rag-tiny.*32-d.*ViT-B-32.*512-d"):
        load_index(tmp_path / "idx", GarmentEncoder(tiny_weights, "ViT-B-32"))


def test_missing_or_foreign_folder_gives_clear_error(tmp_path):
    with pytest.raises(IndexFormatError, match="index build"):
        load_index(tmp_path)
    (tmp_path / MANIFEST).write_text('{"format": "something-else"}')
    with pytest.raises(IndexFormatError, match="not a Fashion-RAG garment index"):
        load_index(tmp_path)


def _clustered(n: int, d: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around random centres (spread like image embeddings), plus held-out queries."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(m: int, spread: float) -> np.ndarray:
        x = centres[rng.integers(0, clusters, m)] + spread * rng.standard_normal((m, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return draw(n, 0.12), draw(200, 0.2)


def test_ivf_recall_at_10_against_exact():
    x, queries = _clustered(6000, 48, clusters=60, seed=0)
    vec = create_vector_index(x, "auto", ivf_threshold=5000)
    assert vec.kind == "ivf" and vec.factory.endswith(",SQ8")
    nlist = int(vec.factory[3:].split(",")[0])
    assert 1 < vec.nprobe < nlist  # genuinely approximate, not an exhaustive scan
    exact = exact_top_k(x, queries, 10)
    _, found = vec.search(queries, 10)
    assert recall_at_k(found, exact) >= 0.95
    # The exact index agrees with brute force to the last position.
    flat = create_vector_index(x, "auto", ivf_threshold=10_000)
    assert flat.kind == "flat"
    assert np.array_equal(flat.search(queries, 10)[1], exact)


def test_filtered_ivf_search_keeps_recall_for_off_category_queries():
    x, queries = _clustered(9000, 48, clusters=90, seed=1)
    # Categories split the space (by one coordinate), so a query is often about garments of
    # another category than the one filtered: the hard case for a filtered IVF probe.
    cats = np.where(x[:, 0] > 0.1, "dresses", np.where(x[:, 0] < -0.1, "upper_body", "lower_body"))
    index = in_memory_index(x, categories=list(cats), ivf_threshold=1000)
    assert index.vectors.kind == "ivf" and len(index.vectors.parts) == 3
    for wanted in ("dresses", "upper_body"):
        rows = np.flatnonzero(cats == wanted)
        exact = rows[exact_top_k(x[rows], queries, 10)]
        found = np.stack([index.search(q, 10, {wanted})[0] for q in queries])
        assert recall_at_k(found, exact) >= 0.95, wanted


def test_ivf_index_saves_and_loads_one_part_per_category(catalog_dir, tiny_weights, tmp_path):
    enc = GarmentEncoder(tiny_weights, TINY_ARCH)
    report = build_index(scan_catalog(catalog_dir), tmp_path / "idx", enc, index_type="ivf")
    assert report.index_type == "ivf"
    index = load_index(tmp_path / "idx", enc)
    parts = index.manifest.vector_index.parts
    assert [p.categories for p in parts] == [["dresses"], ["lower_body"], ["upper_body"]]
    assert [p.count for p in parts] == [12, 12, 12]
    files = sorted(f.name for f in (tmp_path / "idx" / index.version).glob("*.faiss"))
    assert files == [f"vectors-{i}.faiss" for i in range(3)]
    assert index.vectors.kind == "ivf"
    assert [p.vectors.nprobe for p in index.vectors.parts] == [p.nprobe for p in parts]
    assert [p.vectors.nprobe_filtered for p in index.vectors.parts] == [p.nprobe_filtered for p in parts]
    q = enc.encode_texts(["a top"])
    exact = exact_top_k(np.asarray(index.embeddings), q, 5)
    assert recall_at_k(index.search(q[0], 5)[0][None], exact) == 1.0  # 12 per part: all probed


def test_ivf_nlist_follows_the_rule_in_method_md():
    """docs/method.md, "Vector search": nlist = min(4·sqrt(n), n / 39), at least 1.
    Mutation caught: the 39-points-per-list cap dropped (10,000 garments got 400 lists)."""
    assert [ivf_nlist(n) for n in (1, 12, 10_000, 250_000, 1_000_000)] == [1, 1, 256, 2000, 4000]


def test_search_of_no_allowed_garment_is_empty():
    """A category the index lacks, or all its garments excluded: no positions and no error.
    Mutation caught: VectorStore.search without its empty start (concatenating nothing) (failed: yes)."""
    x = np.eye(4, dtype=np.float32)
    index = in_memory_index(x, categories=["a", "a", "b", "b"])
    for categories, exclude, expected in (({"shoes"}, [], []), ({"a"}, [0, 1], []), ({"a"}, [0], [1])):
        got, scores = index.search(x[0], 3, categories, exclude)
        assert got.tolist() == expected and scores.tolist() == [0.0] * len(expected)


def test_many_free_text_categories_share_a_part():
    cats = [f"style{i % 40}" for i in range(400)] + ["dresses"] * 100
    x = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    from fashion_rag.retrieval.ann import MAX_PARTS

    index = in_memory_index(x, categories=cats)
    groups = [p.categories for p in index.vectors.parts]
    assert len(groups) == MAX_PARTS and groups[0] == ("dresses",)
    assert sorted(c for g in groups for c in g) == sorted(set(cats))
    q = x[7] + 0.1
    for wanted in ({"style7"}, {"style39", "dresses"}, None):
        allowed = np.array([wanted is None or c in wanted for c in cats])
        got, scores = index.search(q, 8, wanted, exclude=[7])
        allowed[7] = False
        exact = np.flatnonzero(allowed)[np.argsort(-(x[allowed] @ q), kind="stable")[:8]]
        assert got.tolist() == exact.tolist()
        np.testing.assert_allclose(scores, x[exact] @ q, rtol=1e-5)


def test_every_rebuild_message_spells_the_build_command_the_same_way(tmp_path):
    """Issue 19: the rebuild text was written in 4 places and they had drifted apart (one
    without --weights, one with <catalog>): each now names every argument a build needs."""
    with pytest.raises(IndexFormatError) as missing:
        load_index(tmp_path / "none")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "index.json").write_text('{"format": "someone else"}')
    with pytest.raises(IndexFormatError) as not_ours:
        load_index(foreign)
    command = "python -m fashion_rag index build --catalog <images folder> --out "
    assert f"{command}{tmp_path / 'none'} --weights <encoder weights>" in str(missing.value)
    assert f"{command}<new index folder> --weights <encoder weights>" in str(not_ours.value)


def _small_catalog(folder: Path, names: list[str]) -> Path:
    """A folder catalog of a few distinct drawn dresses (folder mode: every image is an item)."""
    looks = [("navy", "checks"), ("green", "dots"), ("red", "solid"), ("yellow", "stripes")]
    (folder / "dresses").mkdir(parents=True, exist_ok=True)
    for name, (colour, pattern) in zip(names, looks, strict=False):
        image = draw_garment(SHAPES["dresses"]["mini dress"], COLOURS[colour], pattern)
        image.save(folder / "dresses" / f"{name}.png")
    return folder


def test_rebuild_counts_removed_garments_and_rewrites_for_another_index_type(tiny_weights, tmp_path):
    """Two of four garments removed: removed == 2 (no garment was added, so the count cannot be
    the added ones); then the same catalog as an IVF index is written, not kept as "up to date".
    Mutations caught: removed counted as set(new) - set(old); the up-to-date check ignoring the
    vector index's parts (index type)."""
    enc = GarmentEncoder(tiny_weights, TINY_ARCH)
    cat, out = _small_catalog(tmp_path / "cat", ["a", "b", "c", "d"]), tmp_path / "idx"
    assert build_index(scan_catalog(cat), out, enc).items == 4
    (cat / "dresses" / "a.png").unlink()
    (cat / "dresses" / "c.png").unlink()
    report = build_index(scan_catalog(cat), out, enc)
    assert (report.items, report.encoded, report.reused, report.removed, report.written) == (2, 0, 2, 2, True)
    assert sorted(load_index(out).ids) == ["b", "d"]
    same = build_index(scan_catalog(cat), out, enc, index_type="flat")
    assert (same.written, same.index_type) == (False, "flat")
    ivf = build_index(scan_catalog(cat), out, enc, index_type="ivf")
    assert (ivf.written, ivf.removed) == (True, 0)
    assert [p.type for p in read_manifest(out).vector_index.parts] == ["ivf"]


def test_an_image_changed_after_hashing_is_skipped_not_encoded(tmp_path):
    """An image whose bytes no longer hash to what the plan saw is skipped as "changed" (its
    embedding would not match the content hash stored for it). Mutation caught: the hash
    check of read_fitted_garment dropped."""
    cat = scan_catalog(_small_catalog(tmp_path / "cat", ["a"]))
    item = cat.items[0]
    data = (tmp_path / "cat" / "dresses" / "a.png").read_bytes()
    assert isinstance(read_fitted_garment(cat, item, hashlib.sha256(data).hexdigest()), Image.Image)
    skip = read_fitted_garment(cat, item, hashlib.sha256(data + b"x").hexdigest())
    assert (skip.id, skip.reason) == ("a", "changed")
    assert "a.png changed during the build (build again)" in skip.detail


def test_new_embeddings_refuse_non_finite_vectors(tmp_path):
    """A broken model's NaN or inf is never stored as an embedding. Mutation caught: the
    isfinite check of NewEmbeddings.put dropped (only the shape checked)."""
    store = NewEmbeddings(tmp_path, 2, 3)
    try:
        for bad in (np.nan, np.inf):
            with pytest.raises(ValueError, match="non-finite values; check the encoder weights"):
                store.put(np.array([0, 1]), np.array([[1.0, 0, 0], [0, bad, 0]]), [b"p", b"q"])
        assert not store.filled.any()
        store.put(np.array([1]), np.array([[0.0, 1.0, 0.0]]), [b"png"])
        assert store.filled.tolist() == [False, True] and store.image(1) == b"png"
    finally:
        store.close()


def test_build_progress_counts_and_byte_equal_refused_files(tiny_weights, tmp_path):
    """Progress after each batch of 2 of the 4 contents to encode (a, b, c, the broken one):
    (2, 4) then (4, 4). Two byte-equal broken files (one content, decoded once) are both skipped,
    each under its own id.
    Mutations caught: progress reporting the batch's start (0, 4); the copy of a refused file
    chosen by `is` instead of `is not` (the first reported twice, the copy indexed or lost)."""
    cat = _small_catalog(tmp_path / "cat", ["a", "b", "c"])
    broken = b"\x89PNG\r\n\x1a\nnot a png at all"
    (cat / "dresses" / "x1.png").write_bytes(broken)
    (cat / "dresses" / "x2.png").write_bytes(broken)
    calls = []
    report = build_index(scan_catalog(cat), tmp_path / "idx", GarmentEncoder(tiny_weights, TINY_ARCH),
                         batch_size=2, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 4), (4, 4)]  # 4 contents to encode: a, b, c and the broken one
    assert (report.items, report.encoded) == (3, 3)
    skipped = sorted((s.id, s.reason) for s in report.skipped)
    assert skipped == [("x1", "not an image"), ("x2", "not an image")]
    assert sorted(load_index(tmp_path / "idx").ids) == ["a", "b", "c"]
