"""FAISS vector indexes: exact (flat inner product) or IVF with 8-bit scalar quantisation.

Exact search below IVF_THRESHOLD garments; above it IVF(nlist),SQ8 with nprobe tuned at build
time to reach TUNE_RECALL recall@10 against exact search on probe queries. Callers re-rank the
candidates with the float32 embeddings (vector_store.py), so reported scores are exact cosines.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .vector_rows import Rows, as_rows, exact_top_k, mean_row, recall_at_k

# Below this many garments an exact search is already fast (a flat scan of 10k x 768 floats
# is ~30 MB per query); above it the IVF index keeps single queries in milliseconds.
IVF_THRESHOLD = 10_000
# The IVF index's nprobe is tuned at build time to reach this recall@10 against exact search
# on held-out perturbed queries; the margin over the 0.95 the project promises absorbs the
# difference between those probe queries and real ones.
TUNE_RECALL = 0.97
# Never probe fewer lists than this: a handful of extra lists costs well under a millisecond
# and guards against real queries being harder than the probe queries.
MIN_NPROBE = 8
MAX_PARTS = 16  # vector indexes per garment index (see partition_categories)
INDEX_TYPES = ("auto", "flat", "ivf")

LogFn = Callable[[str], None]


@contextlib.contextmanager
def _faiss_threads(n: int) -> Iterator[None]:
    """One OpenMP thread for single queries: thread start-up costs more than the scan itself."""
    import faiss

    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)


def ivf_nlist(n: int) -> int:
    """Number of IVF lists: the power of two nearest 4*sqrt(n), with >= 39 training points each.

    (FAISS's guideline is 4-16*sqrt(n); the low end keeps k-means training affordable on a
    CPU: 2048 lists for a 333k-garment category.)
    """
    nlist = 2 ** round(math.log2(max(4.0 * math.sqrt(max(n, 1)), 1.0)))
    while nlist > 1 and n < 39 * nlist:
        nlist //= 2
    return max(nlist, 1)


class VectorIndex:
    """A FAISS inner-product index (exact flat, or IVF with 8-bit scalar quantisation)."""

    def __init__(self, index: Any, kind: str, factory: str, nprobe: int | None = None,
                 nprobe_filtered: int | None = None, tuned_recall: dict[str, float] | None = None) -> None:
        self.index = index
        self.kind = kind
        self.factory = factory
        self.tuned_recall = tuned_recall or {}
        self._nprobe = 0
        if nprobe is not None:
            self.nprobe = nprobe
        # Probes used under a category filter: the query may then resemble no garment of this
        # part (a dress described while filtering tops), and its neighbours spread over more lists.
        self.nprobe_filtered = nprobe_filtered or self._nprobe

    @property
    def nprobe(self) -> int | None:
        return self._nprobe if self.kind == "ivf" else None

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        import faiss

        self._nprobe = int(value)
        faiss.extract_index_ivf(self.index).nprobe = self._nprobe

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def memory_bytes(self) -> int:
        """Bytes the index holds in memory (its serialised size, which is what it holds)."""
        import faiss

        if self.kind == "flat":  # n x d float32; serialising would copy gigabytes to say so
            return int(self.index.ntotal) * int(self.index.d) * 4
        return int(faiss.serialize_index(self.index).nbytes)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores [Q, k], positions [Q, k]); positions of -1 mean 'fewer than k found'.

        allowed: optional [N] bool mask; only those positions can be returned.
        nprobe: IVF lists to probe for this search (default: self.nprobe).
        """
        import faiss

        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(int(k), self.ntotal))
        params = None
        keep = None
        sel = None
        if allowed is not None:
            keep = np.packbits(np.asarray(allowed, dtype=bool), bitorder="little")
            sel = faiss.IDSelectorBitmap(keep)
        if self.kind == "ivf" and (sel is not None or nprobe is not None):
            params = faiss.SearchParametersIVF(sel=sel, nprobe=int(nprobe or self._nprobe))
        elif sel is not None:
            params = faiss.SearchParameters(sel=sel)
        with _faiss_threads(1 if len(queries) == 1 else faiss.omp_get_max_threads()):
            scores, labels = self.index.search(queries, k, params=params)
        del keep  # the bitmap must outlive the search: FAISS holds only a pointer to it
        return scores, labels


def create_vector_index(
    embeddings: np.ndarray | Rows,
    index_type: str = "auto",
    ivf_threshold: int = IVF_THRESHOLD,
    nprobe: int | None = None,
    log_fn: LogFn | None = None,
    filtered_probes: np.ndarray | None = None,
) -> VectorIndex:
    """Build the vector index the library uses for these embeddings ([N, d] float32, unit norm).

    "auto" gives an exact flat index below `ivf_threshold` items and IVF(nlist),SQ8 above.
    The IVF nprobe is tuned (unless given) on probe queries made from these garments;
    nprobe_filtered on `filtered_probes` (queries made from *other* garments, see
    create_vector_store), or on probes around the data's mean when there are none.
    The embeddings are read a block at a time (vector_rows.Rows: a memory-mapped file works),
    so an IVF build holds its sample, one block and the index, never all the float32 vectors.
    """
    import faiss

    if index_type not in INDEX_TYPES:
        raise ValueError(f"index type must be one of {INDEX_TYPES}, not {index_type!r}")
    x = as_rows(embeddings)
    n, d = x.shape
    if part_kind(index_type, n, ivf_threshold) == "flat":
        index = faiss.IndexFlatIP(d)
        for _, block in x.blocks():
            index.add(block)
        return VectorIndex(index, "flat", "Flat")
    nlist = ivf_nlist(n)
    # SQ8 keeps 1 byte per dimension (a quarter of float32: 1M x 768 in ~0.8 GB) and, on unit
    # vectors, loses far less recall than PQ at the same speed.
    factory = f"IVF{nlist},SQ8"
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    # k-means on 32 points per list places lists well enough for search (nprobe is tuned on
    # the result anyway) and trains 8x faster than FAISS's default of 256. The sample is drawn
    # here, not by FAISS, so that only the sample is ever read into memory.
    ivf.cp.max_points_per_centroid = 32
    n_train = min(n, 32 * nlist)
    if log_fn:
        log_fn(f"training {factory} on {n_train} of {n} vectors")
    sample = np.arange(n) if n_train == n else np.sort(
        np.random.default_rng(2).choice(n, size=n_train, replace=False))
    index.train(x.take(sample))
    del sample
    if log_fn:
        log_fn(f"adding {n} vectors to {factory}")
    for _, block in x.blocks():
        index.add(block)
    vec = VectorIndex(index, "ivf", factory, nprobe=nprobe or 1)
    if nprobe is not None:
        return vec
    if log_fn:
        log_fn("tuning nprobe on probe queries")
    rng = np.random.default_rng(0)
    garment_probes = probe_queries(x, 100, rng)
    if filtered_probes is None:
        filtered_probes = probe_queries(x, 100, rng, around_mean=True)
    # One pass over the embeddings for both probe sets' exact neighbours (10M rows: 30 GB read).
    exact = exact_top_k(x, np.concatenate([garment_probes, filtered_probes]), min(10, n))
    nprobe, garment_recall = tune_nprobe(vec, x, garment_probes, TUNE_RECALL,
                                         exact=exact[: len(garment_probes)])
    vec.nprobe_filtered, other_recall = tune_nprobe(vec, x, filtered_probes, TUNE_RECALL, start=nprobe,
                                                    exact=exact[len(garment_probes):])
    vec.nprobe = nprobe
    vec.tuned_recall = {"garment_queries": garment_recall, "other_queries": other_recall}
    if log_fn:
        log_fn(f"nprobe {vec.nprobe} (filtered {vec.nprobe_filtered}) of {nlist} lists: recall@10 "
               f"{garment_recall:.3f} / {other_recall:.3f} on probe queries")
    return vec


def part_kind(index_type: str, n: int, ivf_threshold: int) -> str:
    if n < 2:
        return "flat"  # nothing to cluster
    if index_type == "auto":
        return "ivf" if n >= ivf_threshold else "flat"
    return index_type


def probe_queries(x: np.ndarray | Rows, m: int, rng: np.random.Generator,
                  around_mean: bool = False) -> np.ndarray:
    """Synthetic queries for tuning nprobe, [m, d] unit vectors.

    Each sits between two random garments (or, around_mean, at the data's mean direction: a
    query that resembles no garment in particular) plus noise as large as that anchor, so its
    neighbours spread over several lists as a text query's do: text and image embeddings meet
    at cosines far below 1.
    """
    rows = as_rows(x)
    n, d = rows.shape
    if around_mean:
        anchors = np.repeat(mean_row(rows)[None, :], m, axis=0)
    else:
        anchors = rows.take(rng.choice(n, size=m)) + rows.take(rng.choice(n, size=m))
    anchors /= np.maximum(np.linalg.norm(anchors, axis=1, keepdims=True), 1e-12)
    noise = rng.standard_normal((m, d)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    q = anchors + noise
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def tune_nprobe(vec: VectorIndex, x: np.ndarray | Rows, queries: np.ndarray, target: float, k: int = 10,
                start: int = MIN_NPROBE, exact: np.ndarray | None = None) -> tuple[int, float]:
    """Smallest power-of-two nprobe >= start reaching `target` recall@k on `queries`.

    Recall is measured as the library searches: 4k+10 candidates re-ranked exactly. `exact`:
    the queries' exact top-k, when the caller has it (computing it reads all of x).
    """
    rows = as_rows(x)
    n = len(rows)
    k = min(k, n)
    if exact is None:
        exact = exact_top_k(rows, queries, k)
    nlist = faiss_nlist(vec)
    nprobe, recall = min(max(start, MIN_NPROBE), nlist), 0.0
    while True:
        vec.nprobe = nprobe
        _, cand = vec.search(queries, min(n, 4 * k + 10))
        found = np.stack([_rerank(rows, row[row >= 0], q, k) for row, q in zip(cand, queries, strict=True)])
        recall = recall_at_k(found, exact)
        if recall >= target or nprobe >= nlist:
            return nprobe, recall
        nprobe = min(nprobe * 2, nlist)


def _rerank(rows: Rows, cand: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    cand = np.sort(cand)
    top = cand[np.argsort(-(rows.take(cand) @ query), kind="stable")[:k]]
    return np.pad(top, (0, k - len(top)), constant_values=-1)


def faiss_nlist(vec: VectorIndex) -> int:
    import faiss

    return int(faiss.extract_index_ivf(vec.index).nlist)
