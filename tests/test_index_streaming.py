"""The build streams: embeddings written and read a block at a time, the same index as in memory.

A 10M-garment catalog has 30 GB of float32 embeddings; these tests shrink the block size
so that a few thousand rows span many blocks, and check that block by block gives exactly
what all at once gives, without ever copying all the rows.
"""

from __future__ import annotations

import dataclasses
import tracemalloc

import faiss
import numpy as np
import pytest

from fashion_rag.retrieval import ann as vector_rows
from fashion_rag.retrieval.ann import (
    Rows,
    create_vector_index,
    exact_top_k,
    mean_row,
    write_vector_parts,
)
from fashion_rag.retrieval.ondisk import map_embeddings, write_embeddings_file
from tools.synthetic_index import vector_store


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, d)).astype(np.float32)
    x = centres[rng.integers(0, 40, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("n", [0, 1, 1000])
def test_embeddings_file_is_numpy_own_bytes(tmp_path, n):
    x = _unit(n, 24, seed=n) if n else np.zeros((0, 24), np.float32)
    np.save(tmp_path / "ref.npy", x)
    blocks = [x[i : i + 300] for i in range(0, n, 300)]
    sha = write_embeddings_file(tmp_path / "ours.npy", n, 24, blocks)
    ours = (tmp_path / "ours.npy").read_bytes()
    assert ours == (tmp_path / "ref.npy").read_bytes()
    import hashlib

    assert sha == hashlib.sha256(ours).hexdigest()
    assert np.array_equal(np.load(tmp_path / "ours.npy", allow_pickle=False), x)


def test_embeddings_file_refuses_wrong_row_counts(tmp_path):
    x = _unit(10, 8, seed=0)
    with pytest.raises(ValueError, match="9 embedding rows written where 10"):
        write_embeddings_file(tmp_path / "e.npy", 10, 8, [x[:9]])
    with pytest.raises(ValueError, match="does not fit"):
        write_embeddings_file(tmp_path / "e.npy", 10, 8, [x, x[:1]])


def test_blockwise_exact_top_k_and_mean_equal_one_pass(monkeypatch):
    x = _unit(5000, 32, seed=1)
    q = _unit(50, 32, seed=2)
    _, whole = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    monkeypatch.setattr(vector_rows, "BLOCK_ROWS", 333)  # 16 blocks, the last one short
    assert np.array_equal(exact_top_k(x, q, 10), whole)
    np.testing.assert_allclose(mean_row(x), x.mean(axis=0), atol=1e-6)
    rows = np.sort(np.random.default_rng(0).choice(5000, 1200, replace=False))
    _, sub = faiss.knn(q, x[rows], 10, metric=faiss.METRIC_INNER_PRODUCT)
    assert np.array_equal(exact_top_k(Rows(x, rows), q, 10), sub)
    assert np.array_equal(exact_top_k(x[:7], q, 10)[:, 7:], np.full((50, 3), -1))  # fewer than k


def _mapped(tmp_path, x: np.ndarray) -> np.ndarray:
    path = tmp_path / "emb.npy"
    write_embeddings_file(path, len(x), x.shape[1], [x])
    return map_embeddings(path, len(x), x.shape[1])


def test_ivf_from_a_memory_map_in_blocks_is_the_in_memory_index(tmp_path, monkeypatch):
    x = _unit(60_000, 32, seed=3)
    cats = np.array(["dresses", "upper_body", "lower_body"])[np.random.default_rng(4).integers(0, 3, len(x))]
    whole = vector_store(x, list(cats), ivf_threshold=5000)  # blocks of 65536: one block per part
    mapped = _mapped(tmp_path, x)
    del x
    monkeypatch.setattr(vector_rows, "BLOCK_ROWS", 4096)
    record = write_vector_parts(mapped, list(cats), tmp_path, ivf_threshold=5000)
    assert record.type == whole.record().type
    for i, (part, rec) in enumerate(zip(whole.parts, record.parts, strict=True)):
        assert rec.file == f"vectors-{i}.faiss" and rec.type == "ivf"
        assert dataclasses.replace(rec, file=None) == part.record()  # nprobe tuned alike
        written = faiss.read_index(str(tmp_path / rec.file))
        ref = faiss.serialize_index(part.vectors.index)
        assert np.array_equal(faiss.serialize_index(written), ref)  # the same index, byte for byte


def test_ivf_build_never_copies_all_rows(tmp_path, monkeypatch):
    """Peak numpy memory of an IVF build from a memory map stays well below the rows' size.

    (The old build copied the embeddings whole: 100 % of them, plus FAISS's own copy.)
    """
    x = _unit(80_000, 48, seed=5)  # 15 MB of float32
    mapped = _mapped(tmp_path, x)
    size = x.nbytes
    del x
    monkeypatch.setattr(vector_rows, "BLOCK_ROWS", 2048)
    tracemalloc.start()
    try:
        vec = create_vector_index(mapped, "ivf")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert vec.ntotal == 80_000
    # The training sample (32 per list: 32,768 of 80,000 rows) is the largest thing held.
    assert peak < 0.6 * size, f"peak {peak / 2**20:.1f} MiB of {size / 2**20:.1f} MiB"
