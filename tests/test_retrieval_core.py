"""Mutation pass over the garment index's core (index.py, search.py, ann.py, ondisk.py): each test
names the planted mistake it was written to catch, and its expected values are worked out here by
hand or by numpy / FAISS / hashlib directly, never by the pack's own constants or functions."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from fashion_rag.openclip_encoder import GarmentEncoder
from fashion_rag.retrieval.ann import create_vector_index
from fashion_rag.retrieval.build import build_index
from fashion_rag.retrieval.catalog import scan_catalog
from fashion_rag.retrieval.index import load_index
from fashion_rag.retrieval.ondisk import (
    IndexFormatError,
    build_lock,
    read_manifest,
    temp_folder,
    write_version,
)
from fashion_rag.retrieval.search import search
from tools.demo.encoder import TINY_ARCH
from tools.synthetic_index import in_memory_index, unit_rows


class _TextOnly:
    """A text encoder that returns one fixed query embedding (what the fusion tests need)."""

    def __init__(self, query) -> None:
        self.query = np.asarray(query, dtype=np.float32)

    def encode_texts(self, texts):
        return self.query[None, :]


def test_a_fused_tie_goes_to_the_garment_with_an_image_rank_over_one_beyond_the_image_depth():
    """150 garments, more than the 100 the image ranking is read to: garment 0 (the query's
    farthest) is in the caption ranking only, at caption rank 1; garment 1 (the query itself) is in
    the image ranking only, at image rank 1. Both fuse to 1/61; the garment with an image rank
    wins the tie although it comes later in the catalog (docs/method.md, "Retrieval").
    Mutation caught: a garment missing from the image ranking counted as image rank 0 in the tie
    break (`image_rank.get(p, 0)` for `image_rank.get(p, len(index))` in search.py)."""
    x = unit_rows(150, 8, seed=5)
    q = x[1].copy()
    x[0] = -q  # the farthest garment: last of 150 in the image ranking
    index = in_memory_index(x)
    index.captions = ["alpha"] + [""] * 149
    index.encoder = _TextOnly(q)
    order = np.argsort(-(x.astype(np.float64) @ q), kind="stable")
    assert order[0] == 1 and order[-1] == 0
    hits = search(index, "alpha", 3, mode="fusion")
    assert [h.id for h in hits] == ["1", "0", str(order[1])]
    assert [h.score for h in hits] == pytest.approx([1 / 61, 1 / 61, 1 / 62], rel=1e-9)


def test_whitespace_captions_are_no_captions():
    """Captions of blanks only give BM25 nothing to rank: the index has no captions, so the default
    mode ranks by cosine (scores are the cosines, not 1/(60 + rank)) and mode 'caption' is refused.
    Mutation caught: has_captions as `any(self.captions)` (a caption of one space counted) in
    index.py."""
    x = unit_rows(5, 4, seed=2)
    index = in_memory_index(x)
    index.captions = [" ", "\t", "\n", "  ", " "]
    index.encoder = _TextOnly(x[2])
    assert not index.has_captions
    hits = search(index, "red top", 3)
    expected = np.argsort(-(x.astype(np.float64) @ x[2]), kind="stable")[:3]
    assert [h.id for h in hits] == [str(i) for i in expected]
    assert [h.score for h in hits] == pytest.approx([float(x[i] @ x[2]) for i in expected], rel=1e-5)
    with pytest.raises(ValueError, match="has no captions"):
        search(index, "red top", 3, mode="caption")


def test_a_pinned_garment_keeps_its_caption_score():
    """In mode 'caption' a pinned garment comes first with its own BM25 score, the one it gets
    unpinned (here it is the best match either way). Mutation caught: pins scored only among the
    filled garments (`for p in fill` for `for p in pin_pos + fill` in search.py: a pin scored 0)."""
    x = unit_rows(4, 4, seed=3)
    index = in_memory_index(x)
    index.captions = ["red striped top", "blue skirt", "red dress", "green coat"]
    plain = search(index, "red striped", 2, mode="caption")
    assert [h.id for h in plain] == ["0", "2"] and plain[0].score > plain[1].score > 0
    pinned = search(index, "red striped", 2, mode="caption", pin_ids="0")
    assert [h.id for h in pinned] == ["0", "2"]
    assert [h.score for h in pinned] == [plain[0].score, plain[1].score]


def test_uncategorised_garments_are_counted_by_that_name():
    """Garments without a category are counted as 'uncategorised' (what `index info` and the
    no-garment-of-that-category error show). Mutation caught: per_category counting the empty
    string (`Counter(c for c in ...)` in index.py)."""
    index = in_memory_index(unit_rows(3, 4, seed=4), categories=["", "", "dresses"])
    assert index.per_category() == {"uncategorised": 2, "dresses": 1}
    index.encoder = _TextOnly(np.ones(4))
    with pytest.raises(ValueError, match=r"no garments of category 'upper_body' \(it has "
                                         r"\{'uncategorised': 2, 'dresses': 1\}\)"):
        search(index, "a top", 2, mode="image", category="upper_body")


def test_ivf_candidates_are_re_ranked_exactly_beyond_what_8_bit_codes_tell_apart():
    """20 near-copies of the query (cosines 1 - 2e-8 ... 1 - 8e-6, ids 30..49, the best last) look
    alike in 8-bit codes; the IVF part fetches more than k candidates and re-ranks them with the
    float32 embeddings, so the answer is numpy's exact top 3 (49, 48, 47).
    Mutation caught: IVF parts fetching only k candidates (`fetch = min(len(part), k)` in ann.py)."""
    rng = np.random.default_rng(7)
    far = unit_rows(30, 8, seed=7)
    q = np.zeros(8, dtype=np.float32)
    q[0] = 1.0
    eps = 0.0002 * (20 - np.arange(20))  # id 30 the least alike, id 49 the most
    near = np.zeros((20, 8), dtype=np.float32)
    near[:, 0], near[:, 1] = 1.0, eps
    near += rng.standard_normal((20, 8)).astype(np.float32) * 1e-5
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    x = np.concatenate([far, near])
    index = in_memory_index(x, index_type="ivf")
    assert index.vectors.kind == "ivf"
    expected = np.argsort(-(x.astype(np.float64) @ q), kind="stable")[:3]
    got, scores = index.search(q, 3)
    assert got.tolist() == expected.tolist() == [49, 48, 47]
    np.testing.assert_allclose(scores, x[expected] @ q, rtol=1e-6)


def test_ivf_lists_are_trained_on_a_sample_of_all_the_garments():
    """2,000 garments in 20 tight clusters, stored cluster by cluster: the 51 IVF lists are trained
    on 1,632 of them, a random sample, so every cluster (the last ones too) has a list centroid
    within cosine 0.9 of its centre (read from the FAISS quantizer directly).
    Mutation caught: IVF trained on the first n_train rows (`x.take(np.arange(n_train))` in ann.py):
    the clusters stored last got no list near them."""
    centres = unit_rows(20, 16, seed=8)
    rng = np.random.default_rng(8)
    x = np.repeat(centres, 100, axis=0) + rng.standard_normal((2000, 16)).astype(np.float32) * 0.05
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    vec = create_vector_index(x, "ivf")
    ivf = faiss.extract_index_ivf(vec.index)
    assert ivf.nlist == 51  # min(4 * sqrt(2000), 2000 // 39)
    lists = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    lists /= np.linalg.norm(lists, axis=1, keepdims=True)
    nearest = (centres @ lists.T).max(axis=1)
    assert nearest.min() > 0.9, np.round(nearest, 2)


# --- The on-disk format: one built IVF index (3 parts of 12 garments, 1 list each), copied and
# edited by hand per test ---

REBUILD = "python -m fashion_rag index build"


@pytest.fixture(scope="module")
def ivf_built(tmp_path_factory, tiny_weights, demo_source):
    encoder = GarmentEncoder(tiny_weights, TINY_ARCH)
    out = tmp_path_factory.mktemp("core") / "idx"
    build_index(scan_catalog(demo_source), out, encoder, index_type="ivf")
    return out, encoder


def _copy(ivf_built, tmp_path):
    out, encoder = ivf_built
    copy = Path(shutil.copytree(out, tmp_path / "idx"))
    data_dir = copy / json.loads((copy / "index.json").read_text())["current"]
    return copy, data_dir, encoder


def _edit(data_dir, change) -> None:
    manifest = json.loads((data_dir / "manifest.json").read_text())
    change(manifest)
    (data_dir / "manifest.json").write_text(json.dumps(manifest))


def _refused(copy, encoder, *fragments: str) -> str:
    with pytest.raises(IndexFormatError) as info:
        load_index(copy, encoder)
    message = str(info.value)
    assert str(copy) in message and REBUILD in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_the_copy_of_the_built_index_loads(ivf_built, tmp_path):
    """(The edits below start from a loadable index: each refusal is the edit's.)"""
    copy, data_dir, encoder = _copy(ivf_built, tmp_path)
    index = load_index(copy, encoder)
    assert [p.count for p in index.manifest.vector_index.parts] == [12, 12, 12]
    assert len(index.search(np.asarray(index.embeddings[0]), 3)[0]) == 3


def test_a_manifest_whose_count_disagrees_with_its_items_is_refused(ivf_built, tmp_path):
    """count 35 beside 36 listed garments. Mutation caught: the count check dropped from
    manifest_problems (`if False:` for `if m.count != n:` in ondisk.py): the index loaded."""
    copy, data_dir, encoder = _copy(ivf_built, tmp_path)
    _edit(data_dir, lambda m: m.update(count=35))
    _refused(copy, encoder, "count says 35 garments, items.ids lists 36")


def test_a_category_in_two_vector_parts_is_refused(ivf_built, tmp_path):
    """'shoes' (no garment has it, so every count still matches) listed in parts 1 and 2.
    Mutation caught: the repeated-category check dropped (`if False:` for
    `if seen & set(rec.categories):` in ondisk.py): the index loaded."""
    copy, data_dir, encoder = _copy(ivf_built, tmp_path)

    def change(m):
        m["vector_index"]["parts"][1]["categories"].append("shoes")
        m["vector_index"]["parts"][2]["categories"].append("shoes")

    _edit(data_dir, change)
    _refused(copy, encoder, "vector_index.parts[2].categories repeats a category of another part")


@pytest.mark.parametrize("key, value", [("nprobe_filtered", -1), ("nprobe_filtered", 0), ("nprobe", 0)])
def test_a_filtered_nprobe_below_1_is_refused(ivf_built, tmp_path, key, value):
    """nprobe_filtered -1 or 0, nprobe 0, in part 0. Mutations caught: only nprobe checked for
    being at least 1 (`for key in ("nprobe",):` in ondisk.py): the index loaded; 0 read as absent
    (`(getattr(rec, key) or 1) < 1`, the code before 2026-12-04): nprobe_filtered 0 loaded with
    the part's nprobe in its place."""
    copy, data_dir, encoder = _copy(ivf_built, tmp_path)
    _edit(data_dir, lambda m: m["vector_index"]["parts"][0].update({key: value}))
    _refused(copy, encoder, f"vector_index.parts[0].{key} {value} is below 1")


def test_an_nprobe_above_the_lists_of_its_faiss_file_is_refused(ivf_built, tmp_path):
    """Each part of the demo index has 1 list (12 garments); nprobe 2 in part 0. Mutation caught:
    the upper bound dropped (`not 1 <= rec.nprobe` in ann._checked_ivf): the index loaded."""
    copy, data_dir, encoder = _copy(ivf_built, tmp_path)
    _edit(data_dir, lambda m: m["vector_index"]["parts"][0].update(nprobe=2))
    _refused(copy, encoder, "vectors-0.faiss has 1 lists, fewer than the manifest's nprobe 2")


def test_a_flat_part_whose_count_disagrees_with_its_categories_is_refused(ivf_built, tmp_path):
    """The parts made flat, counting 11, 13 and 12 (36 in all, as the items): dresses are 12.
    Mutation caught: load_vector_store without its per-part count check (`if False:` for
    `if len(positions) != rec.count:` in ann.py): the index loaded."""
    copy, data_dir, encoder = _copy(ivf_built, tmp_path)

    def change(m):
        m["vector_index"]["type"] = "flat"
        for part, count in zip(m["vector_index"]["parts"], (11, 13, 12), strict=True):
            part.update(type="flat", count=count, file=None, nprobe=None, nprobe_filtered=None)

    _edit(data_dir, change)
    _refused(copy, encoder, "vector part 0 lists 11 garments, the items 12")


def test_a_faiss_file_of_the_l2_metric_is_refused_even_with_its_checksum(ivf_built, tmp_path):
    """vectors-0.faiss replaced by an IVF1,SQ8 index of the same 12 dresses made by FAISS with
    METRIC_L2, its sha256 (hashlib) and size put in the manifest. Mutation caught: the metric check
    dropped from ann._checked_ivf (`elif False:`): the index loaded."""
    copy, data_dir, encoder = _copy(ivf_built, tmp_path)
    _replace_dresses_part(data_dir, "IVF1,SQ8", faiss.METRIC_L2)
    _refused(copy, encoder, "vectors-0.faiss does not use inner product")


def _replace_dresses_part(data_dir: Path, spec: str, metric: int, **part) -> None:
    """vectors-0.faiss (the 12 dresses) replaced by a FAISS `spec` index of them made by FAISS
    directly; its sha256 (hashlib) and size, and `part`'s fields, put in the manifest."""
    emb = np.load(data_dir / "embeddings.npy")
    cats = json.loads((data_dir / "manifest.json").read_text())["items"]["categories"]
    dresses = emb[[i for i, c in enumerate(cats) if c == "dresses"]]
    assert len(dresses) == 12
    index = faiss.index_factory(emb.shape[1], spec, metric)
    index.train(dresses)
    index.add(dresses)
    faiss.write_index(index, str(data_dir / "vectors-0.faiss"))
    raw = (data_dir / "vectors-0.faiss").read_bytes()

    def change(m):
        m["files"]["sha256"]["vectors-0.faiss"] = hashlib.sha256(raw).hexdigest()
        m["files"]["bytes"]["vectors-0.faiss"] = len(raw)
        m["vector_index"]["parts"][0].update(part)

    _edit(data_dir, change)


def test_a_parts_filtered_nprobe_is_read_from_its_manifest(ivf_built, tmp_path):
    """vectors-0.faiss replaced by an inner-product IVF4,SQ8 index of the same 12 dresses made by
    FAISS directly (its sha256 and size put in the manifest), nprobe 1 and nprobe_filtered 3: the
    loaded part probes 3 lists under a category filter, 1 without.
    Mutation caught: load ignoring nprobe_filtered (`nprobe_filtered = rec.nprobe` in ann._checked_ivf)."""
    copy, data_dir, encoder = _copy(ivf_built, tmp_path)
    _replace_dresses_part(data_dir, "IVF4,SQ8", faiss.METRIC_INNER_PRODUCT, factory="IVF4,SQ8", nprobe=1,
                          nprobe_filtered=3)
    part = load_index(copy, encoder).vectors.parts[0]
    assert part.categories == ("dresses",)
    assert (part.vectors.nprobe, part.vectors.nprobe_filtered) == (1, 3)


def test_a_stored_image_at_a_negative_offset_is_refused(ivf_built, tmp_path):
    """Item 0's stored image at offset -5 (its end still inside the shard). Mutation caught: the
    `offset < 0` bound dropped from manifest_problems in ondisk.py: the index loaded."""
    copy, data_dir, encoder = _copy(ivf_built, tmp_path)
    _edit(data_dir, lambda m: m["items"]["image_offsets"].__setitem__(0, -5))
    _refused(copy, encoder, "the stored image of item 0 does not lie inside garments.bin")


def test_a_checksum_failure_names_the_damaged_file(ivf_built, tmp_path):
    """One byte of embeddings.npy flipped (size unchanged): the refusal names that file.
    Mutation caught: the checksum message without the file's name (`a file does not match` in
    ondisk.verify_files)."""
    copy, data_dir, encoder = _copy(ivf_built, tmp_path)
    raw = bytearray((data_dir / "embeddings.npy").read_bytes())
    raw[-1] ^= 0xFF
    (data_dir / "embeddings.npy").write_bytes(bytes(raw))
    _refused(copy, encoder, "embeddings.npy does not match the checksum in its manifest")


def test_a_version_that_cannot_be_put_in_place_never_becomes_current(ivf_built, tmp_path):
    """A build's new version whose folder name is already taken (a non-empty folder there): its
    rename fails, and the pointer still names the old version, which still loads.
    Mutation caught: the pointer swapped before the version folder is renamed into place
    (write_version with os.rename moved after atomic_write in ondisk.py): the pointer named a
    version that never arrived."""
    copy, data_dir, encoder = _copy(ivf_built, tmp_path)
    pointer = (copy / "index.json").read_bytes()
    with build_lock(copy) as lock, temp_folder(lock, version=True) as tmp:
        version = json.loads((tmp / ".build.json").read_text())["names"][1]
        (copy / version).mkdir()
        (copy / version / "user-file.txt").write_text("not the build's")
        with pytest.raises(OSError):
            write_version(lock, tmp, read_manifest(copy))
    assert (copy / "index.json").read_bytes() == pointer
    assert load_index(copy, encoder).version == data_dir.name


def test_sixteen_categories_get_a_vector_index_each_in_name_order():
    """16 categories (the most that get a part each, docs/method.md "Vector search"), c00 the
    least common: 16 parts of one category each, in name order (as for 3 categories in
    test_index_store); a 17th category makes the two least common share the last part.
    Mutation caught: `len(ordered) < MAX_PARTS` for `<=` in ann.partition_categories (16
    categories took the shared branch: its "group" of one, c00, came last). Search results are the
    same either way (parts' hits are merged by position): only the parts' order tells."""
    cats = ["c00"] * 2 + [f"c{i:02d}" for i in range(1, 16) for _ in range(3)]
    index = in_memory_index(unit_rows(47, 4, seed=9), categories=cats)
    assert [p.categories for p in index.vectors.parts] == [(f"c{i:02d}",) for i in range(16)]
    cats17 = cats + ["c16"]
    index17 = in_memory_index(unit_rows(48, 4, seed=9), categories=cats17)
    groups = [p.categories for p in index17.vectors.parts]
    assert groups == [(f"c{i:02d}",) for i in range(1, 15)] + [("c15",), ("c00", "c16")]


def test_a_filtered_search_never_probes_fewer_lists_than_an_unfiltered_one():
    """3,000 random garments need 32 of 76 lists for recall@10 of garment queries; the filtered
    probes given (one query repeated) reach it with fewer, yet nprobe_filtered is at least nprobe
    (a filtered query's neighbours spread wider: ann.VectorIndex). Mutation caught: the filtered
    tuning started at 8 lists, not at nprobe (`MIN_NPROBE` for `vec.nprobe` in ann.py)."""
    x = unit_rows(3000, 16, seed=10)
    one = np.zeros((100, 16), dtype=np.float32)
    one[:, 0] = 1.0
    vec = create_vector_index(x, "ivf", filtered_probes=one)
    assert vec.nprobe > 8 and vec.nprobe_filtered >= vec.nprobe


def test_a_version_replaced_twice_during_a_load_is_read_again_from_the_newest(ivf_built, tmp_path):
    """A reader resolves the current version, then two builds finish before it reads the manifest:
    builds keep the current and the previous version, so the one it resolved is gone. The load is
    tried again on the version the pointer names now, and succeeds.
    Mutation caught: the retry in ondisk._retrying disabled (the reader failed with "incomplete")."""
    from fashion_rag.retrieval.ondisk import _retrying, clean_stale, read_version_manifest, resolve_version

    copy, data_dir, _ = _copy(ivf_built, tmp_path)
    first = data_dir.name
    seen: list[str] = []

    def rebuild() -> None:
        current = resolve_version(copy).data_dir
        with build_lock(copy) as lock, temp_folder(lock, version=True) as tmp:
            for f in current.iterdir():
                if f.name not in ("manifest.json", ".build.json"):
                    shutil.copyfile(f, tmp / f.name)
            write_version(lock, tmp, read_manifest(copy))
            clean_stale(lock)  # as a build does: versions older than the previous one go

    def load(ver):
        seen.append(ver.version)
        if len(seen) == 1:  # two builds finish while this reader is between resolving and reading
            rebuild()
            rebuild()
            assert not (copy / first).exists()
        return read_version_manifest(ver)

    manifest = _retrying(copy, load)
    newest = resolve_version(copy).version
    assert seen == [first, newest] and newest != first
    assert manifest.count == read_manifest(copy).count
