"""Garment indexes over given embeddings, without files, captions or an encoder: what tests and
benchmarks of vector search use (a real index is built from a catalog by fashion_rag.retrieval.build).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fashion_rag.logs import log
from fashion_rag.retrieval.ann import IVF_THRESHOLD, VectorStore, build_parts
from fashion_rag.retrieval.index import GarmentIndex
from fashion_rag.retrieval.ondisk import EncoderRecord, Files, Items, Manifest


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    """[n, d] float32 rows drawn from a standard normal and scaled to unit length (seeded)."""
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def vector_store(embeddings: np.ndarray, categories: Sequence[str], index_type: str = "auto",
                 ivf_threshold: int = IVF_THRESHOLD) -> VectorStore:
    """The per-category vector indexes a build writes, in memory (the threshold applies per part)."""
    store = VectorStore(embeddings, categories)
    store.parts = list(build_parts(store, categories, index_type, ivf_threshold, log.debug))
    return store


def in_memory_index(embeddings: np.ndarray, categories: Sequence[str] | None = None, index_type: str = "auto",
                    ivf_threshold: int = IVF_THRESHOLD) -> GarmentIndex:
    """An index over `embeddings`, ids '0'..'N-1'."""
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = len(emb)
    cats = list(categories) if categories is not None else [""] * n
    vectors = vector_store(emb, cats, index_type, ivf_threshold)
    items = Items([str(i) for i in range(n)], [""] * n, cats, [""] * n, [""] * n, [], [])
    manifest = Manifest(EncoderRecord("none", "", int(emb.shape[1]), "", None, ""), n, vectors.record(),
                        Files("", "", {}, {}), items)
    return GarmentIndex(Path("in-memory"), manifest, emb, vectors)
