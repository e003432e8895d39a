"""Embeddings read a block at a time, so that building vector indexes needs bounded memory.

A 10M-garment index holds 30 GB of float32 embeddings (10M x 768): the build writes them to
its embeddings file and builds every vector index from that file, memory-mapped, reading
one block of rows at a time (training samples, batches to add, exact top-k for tuning).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

BLOCK_ROWS = 65_536  # 192 MiB of 768-d float32: large enough for BLAS, small beside the data


class Rows:
    """Rows `positions` (all rows when None) of an [N, d] float32 array, e.g. a memory map.

    Reads copy only the rows asked for; nothing here holds the whole array in memory.
    """

    def __init__(self, base: np.ndarray, positions: np.ndarray | None = None) -> None:
        self.base = base
        self.positions = None if positions is None else np.asarray(positions, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.base) if self.positions is None else len(self.positions)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), int(self.base.shape[1])

    def take(self, local: np.ndarray) -> np.ndarray:
        """Rows at these local positions, as float32 in memory."""
        rows = np.asarray(local, dtype=np.int64)
        if self.positions is not None:
            rows = self.positions[rows]
        return np.ascontiguousarray(self.base[rows], dtype=np.float32)

    def block(self, start: int, stop: int) -> np.ndarray:
        """Local rows start..stop-1 as float32 in memory (a slice of the file when contiguous)."""
        if self.positions is None:
            return np.ascontiguousarray(self.base[start:stop], dtype=np.float32)
        pos = self.positions[start:stop]
        if len(pos) and pos[-1] - pos[0] == len(pos) - 1:  # one run of rows: a plain slice
            return np.ascontiguousarray(self.base[pos[0] : pos[-1] + 1], dtype=np.float32)
        return np.ascontiguousarray(self.base[pos], dtype=np.float32)

    def blocks(self, size: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(first local row, rows) blocks covering every row in order."""
        size = size or BLOCK_ROWS
        for start in range(0, len(self), size):
            yield start, self.block(start, min(start + size, len(self)))


def as_rows(x: np.ndarray | Rows) -> Rows:
    return x if isinstance(x, Rows) else Rows(x)


def mean_row(x: np.ndarray | Rows) -> np.ndarray:
    """The mean of all rows ([d] float32), summed block by block in float64."""
    rows = as_rows(x)
    if len(rows) <= BLOCK_ROWS:
        return rows.block(0, len(rows)).mean(axis=0)
    total = np.zeros(rows.shape[1], dtype=np.float64)
    for _, block in rows.blocks():
        total += block.sum(axis=0, dtype=np.float64)
    return (total / len(rows)).astype(np.float32)


def exact_top_k(x: np.ndarray | Rows, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k positions by inner product, best first ([Q, k]; -1 where x has fewer than k).

    faiss.contrib's knn_ground_truth, fed one block of x at a time (no N x Q score matrix, and
    a memory-mapped file is read block by block).
    """
    import faiss
    from faiss.contrib.exhaustive_search import knn_ground_truth

    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    blocks = (block for _, block in as_rows(x).blocks())
    _, positions = knn_ground_truth(q, blocks, int(k), metric_type=faiss.METRIC_INNER_PRODUCT, ngpu=0)
    return positions.astype(np.int64)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact top-k found (faiss.contrib.evaluation's intersection measure)."""
    from faiss.contrib.evaluation import knn_intersection_measure

    return float(knn_intersection_measure(np.asarray(found)[:, : exact.shape[1]], np.asarray(exact)))
