"""The FAISS indexes over an index's embeddings, one per category group; why they are shaped so:
docs/method.md, "Vector search". Embeddings are read a block of rows at a time (Rows), so a
memory-mapped 30 GB file works; ondisk.py reads and writes the files.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..logs import LogFn, log
from .ondisk import (
    VECTORS,
    Manifest,
    PartRecord,
    StoredVersion,
    VectorIndexRecord,
    damaged,
    read_faiss,
    write_faiss,
)

BLOCK_ROWS = 65_536  # 192 MiB of 768-d float32: large enough for BLAS, small beside the data


@dataclass
class Rows:
    """Rows `positions` (sorted; all when None) of an [N, d] float32 array, e.g. a memory map;
    reads copy only the rows asked for."""

    base: np.ndarray
    positions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.base) if self.positions is None else len(self.positions)

    def take(self, local: np.ndarray | slice) -> np.ndarray:
        rows = local if self.positions is None else self.positions[local]
        return np.ascontiguousarray(self.base[rows], dtype=np.float32)

    def blocks(self) -> Iterator[np.ndarray]:
        """Every row in order, BLOCK_ROWS at a time."""
        for start in range(0, len(self), BLOCK_ROWS):
            yield self.take(slice(start, start + BLOCK_ROWS))


def as_rows(x: np.ndarray | Rows) -> Rows:
    return x if isinstance(x, Rows) else Rows(x)


def mean_row(x: np.ndarray | Rows) -> np.ndarray:
    """The mean of all rows ([d] float32), summed block by block in float64."""
    rows = as_rows(x)
    total = sum(block.sum(axis=0, dtype=np.float64) for block in rows.blocks())
    return (total / len(rows)).astype(np.float32)


def exact_top_k(x: np.ndarray | Rows, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k positions by inner product, best first ([Q, k]; -1 where x has fewer than k),
    a block of x at a time (no N x Q score matrix)."""
    import faiss
    from faiss.contrib.exhaustive_search import knn_ground_truth

    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    return knn_ground_truth(q, as_rows(x).blocks(), int(k), metric_type=faiss.METRIC_INNER_PRODUCT, ngpu=0)[1]


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact top-k found (faiss.contrib.evaluation's intersection measure)."""
    from faiss.contrib.evaluation import knn_intersection_measure

    return float(knn_intersection_measure(np.asarray(found)[:, : exact.shape[1]], np.asarray(exact)))


IVF_THRESHOLD = 10_000  # below it a flat scan is already fast (~30 MB per query at 768-d)
TUNE_RECALL = 0.97  # recall@10 nprobe is tuned to
MIN_NPROBE = 8  # a few extra lists cost well under a millisecond
MAX_PARTS = 16  # vector indexes per garment index
INDEX_TYPES = ("auto", "flat", "ivf")


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
    """IVF lists for n vectors: 4·sqrt(n), at most one per 39 vectors."""
    return max(1, min(round(4 * math.sqrt(n)), n // 39))


@dataclass
class VectorIndex:
    """A FAISS inner-product index (exact flat, or IVF with 8-bit scalar quantisation)."""

    index: Any
    kind: str
    factory: str
    nprobe: int | None = None  # IVF lists probed (None: flat); every IVF search passes it to FAISS
    # Under a category filter the query may resemble no garment of this part: neighbours spread wider.
    nprobe_filtered: int | None = None
    tuned_recall: dict[str, float] | None = None

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores [Q, k], positions [Q, k]; -1: fewer than k found) among the `allowed`
        positions ([N] bool, None: all), probing `nprobe` IVF lists (None: self.nprobe)."""
        import faiss

        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(int(k), self.ntotal))
        sel = None
        if allowed is not None:  # (faiss's IDSelectorBitmap keeps a reference to the bits)
            sel = faiss.IDSelectorBitmap(np.packbits(np.asarray(allowed, dtype=bool), bitorder="little"))
        if self.kind == "ivf":
            params = faiss.SearchParametersIVF(sel=sel, nprobe=int(nprobe or self.nprobe))
        else:
            params = faiss.SearchParameters(sel=sel)
        with _faiss_threads(1 if len(queries) == 1 else faiss.omp_get_max_threads()):
            return self.index.search(queries, k, params=params)


def part_kind(index_type: str, n: int, ivf_threshold: int) -> str:
    if n < 2:
        return "flat"  # nothing to cluster
    if index_type == "auto":
        return "ivf" if n >= ivf_threshold else "flat"
    return index_type


def create_vector_index(embeddings: np.ndarray | Rows, index_type: str = "auto",
                        ivf_threshold: int = IVF_THRESHOLD, log_fn: LogFn = log.debug,
                        filtered_probes: np.ndarray | None = None) -> VectorIndex:
    """The vector index of these unit embeddings ("auto": IVF from `ivf_threshold` items), nprobe
    tuned on probes from these garments, nprobe_filtered on `filtered_probes` (default: around the
    mean). An IVF build holds its training sample, one block and the index, never all the vectors."""
    import faiss

    if index_type not in INDEX_TYPES:
        raise ValueError(f"index type must be one of {INDEX_TYPES}, not {index_type!r}")
    x = as_rows(embeddings)
    n, d = len(x), int(x.base.shape[1])
    kind, nlist = part_kind(index_type, n, ivf_threshold), ivf_nlist(n)
    factory = "Flat" if kind == "flat" else f"IVF{nlist},SQ8"
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    if kind == "ivf":
        # 32 points per list place lists well enough (nprobe is tuned on the result) 8x faster than
        # FAISS's 256; the sample is drawn here, not by FAISS, so that only it is read into memory.
        faiss.extract_index_ivf(index).cp.max_points_per_centroid = 32
        n_train = min(n, 32 * nlist)
        log_fn(f"training {factory} on {n_train} of {n} vectors")
        index.train(x.take(np.sort(np.random.default_rng(2).choice(n, size=n_train, replace=False))))
        log_fn(f"adding {n} vectors to {factory}")
    for block in x.blocks():
        index.add(block)
    if kind == "flat":
        return VectorIndex(index, kind, factory)
    log_fn("tuning nprobe on probe queries")
    vec = VectorIndex(index, "ivf", factory)
    rng = np.random.default_rng(0)
    probes = probe_queries(x, 100, rng)
    if filtered_probes is None:
        filtered_probes = probe_queries(x, 100, rng, around_mean=True)
    # One pass over the embeddings for both probe sets' exact neighbours (10M rows: 30 GB read).
    exact = exact_top_k(x, np.concatenate([probes, filtered_probes]), min(10, n))
    vec.nprobe, garment_recall = tune_nprobe(vec, x, probes, exact[: len(probes)], MIN_NPROBE)
    vec.nprobe_filtered, other_recall = tune_nprobe(vec, x, filtered_probes, exact[len(probes) :], vec.nprobe)
    vec.tuned_recall = {"garment_queries": garment_recall, "other_queries": other_recall}
    log_fn(f"nprobe {vec.nprobe} (filtered {vec.nprobe_filtered}) of {nlist} lists: recall@10 "
           f"{garment_recall:.3f} / {other_recall:.3f} on probe queries")
    return vec


def probe_queries(x: Rows, m: int, rng: np.random.Generator, around_mean: bool = False) -> np.ndarray:
    """[m, d] unit queries for tuning nprobe: between two random garments (around_mean: at the
    data's mean direction, resembling no garment) plus noise as large, so that their neighbours
    spread over lists as a text query's do (text and image embeddings meet at low cosines)."""
    if around_mean:
        anchors = np.repeat(mean_row(x)[None, :], m, axis=0)
    else:
        anchors = x.take(rng.choice(len(x), size=m)) + x.take(rng.choice(len(x), size=m))
    anchors /= np.maximum(np.linalg.norm(anchors, axis=1, keepdims=True), 1e-12)
    noise = rng.standard_normal(anchors.shape).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    q = anchors + noise
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def tune_nprobe(vec: VectorIndex, rows: Rows, queries: np.ndarray, exact: np.ndarray,
                start: int) -> tuple[int, float]:
    """The smallest power-of-two multiple of `start` (at least MIN_NPROBE) reaching TUNE_RECALL
    recall@k of `exact` on `queries`, and that recall, measured as VectorStore searches."""
    import faiss

    k = exact.shape[1]
    nlist = int(faiss.extract_index_ivf(vec.index).nlist)
    nprobe = min(max(start, MIN_NPROBE), nlist)
    while True:
        # Candidates in position order, so that the stable sort breaks exact ties as search() does.
        cand = np.sort(vec.search(queries, min(len(rows), 4 * k + 10), nprobe=nprobe)[1], axis=1)
        scores = (rows.take(np.maximum(cand, 0)) @ queries[:, :, None])[:, :, 0]
        scores[cand < 0] = -np.inf  # "fewer found": last, and -1 in `found`
        found = np.take_along_axis(cand, np.argsort(-scores, axis=1, kind="stable")[:, :k], axis=1)
        recall = recall_at_k(found, exact)
        if recall >= TUNE_RECALL or nprobe >= nlist:
            return nprobe, recall
        nprobe = min(nprobe * 2, nlist)


def partition_categories(categories: Sequence[str]) -> list[tuple[str, ...]]:
    """Category groups that get a vector index each: one per category, or with more than
    MAX_PARTS the MAX_PARTS - 1 most common alone and the rest shared."""
    counts = Counter(categories)
    ordered = sorted(counts, key=lambda c: (-counts[c], c))
    if len(ordered) <= MAX_PARTS:
        return [(c,) for c in sorted(ordered)]
    return [(c,) for c in sorted(ordered[: MAX_PARTS - 1])] + [tuple(sorted(ordered[MAX_PARTS - 1 :]))]


def overall_type(kinds: Iterable[str]) -> str:
    """The index type of a garment index whose parts are of these kinds: theirs, or "mixed"."""
    distinct = set(kinds)
    return distinct.pop() if len(distinct) == 1 else "mixed"


@dataclass
class VectorPart:
    categories: tuple[str, ...]
    positions: np.ndarray  # int64, sorted: the part's local id i is the garment at positions[i]
    vectors: VectorIndex

    def __len__(self) -> int:
        return len(self.positions)

    def record(self, file: str | None = None) -> PartRecord:
        """The part as the manifest lists it (an IVF part's `file` is given when written)."""
        vec = self.vectors
        return PartRecord(list(self.categories), len(self), vec.kind, vec.factory, file, vec.nprobe,
                          vec.nprobe_filtered, vec.tuned_recall)


class VectorStore:
    """Vector search over an index's embeddings, one FAISS index per category group (`parts`);
    candidates (from 8-bit codes for IVF) are re-ranked with the float32 embeddings."""

    def __init__(self, embeddings: np.ndarray, categories: Sequence[str]) -> None:
        self.embeddings = embeddings
        self.parts: list[VectorPart] = []
        # Category codes, so 10M garments cost 40 MB of int32 here, not 10M strings, and a
        # category filter costs no Python loop.
        self.names: dict[str, int] = {}
        self.codes = np.fromiter((self.names.setdefault(str(c), len(self.names)) for c in categories),
                                 np.int32, len(categories))

    @property
    def kind(self) -> str:
        return overall_type(p.vectors.kind for p in self.parts)

    @property
    def factory(self) -> str:
        return ", ".join(sorted({p.vectors.factory for p in self.parts}))

    def record(self) -> VectorIndexRecord:
        return VectorIndexRecord(self.kind, [p.record() for p in self.parts])

    def category_mask(self, categories: Collection[str]) -> np.ndarray:
        """[N] bool: which garments have one of these categories."""
        return np.isin(self.codes, [self.names[c] for c in categories if c in self.names])

    def search(self, query: np.ndarray, k: int, categories: Collection[str] | None = None,
               exclude: Sequence[int] | np.ndarray = ()) -> tuple[np.ndarray, np.ndarray]:
        """The k best garments (positions, exact cosines), as GarmentIndex.search."""
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        excluded = np.unique(np.asarray(exclude, dtype=np.int64))
        found = [np.zeros(0, dtype=np.int64)]  # (no part wanted: no garments)
        for part in self.parts:
            wanted = [c for c in part.categories if categories is None or c in categories]
            if not wanted:
                continue
            mask = np.ones(len(part), dtype=bool)
            if len(wanted) < len(part.categories):  # a shared part, filtered
                mask = np.isin(self.codes[part.positions], [self.names[c] for c in wanted])
            hit = np.minimum(np.searchsorted(part.positions, excluded), len(part) - 1)
            mask[hit[part.positions[hit] == excluded]] = False
            if not mask.any():
                continue
            # IVF scores are approximations: fetch a few times more for the exact re-ranking.
            fetch = min(len(part), k if part.vectors.kind == "flat" else 4 * k + 10)
            nprobe = part.vectors.nprobe_filtered if categories is not None else None
            _, labels = part.vectors.search(query, fetch, None if mask.all() else mask, nprobe)
            local = labels[0][labels[0] >= 0]
            if len(local) < min(k, int(mask.sum())):
                # An IVF probe can come back short under a narrow mask: take all the allowed.
                local = np.flatnonzero(mask)
            found.append(part.positions[local])
        cand = np.unique(np.concatenate(found))
        exact = np.asarray(self.embeddings[cand], dtype=np.float32) @ query
        order = np.argsort(-exact, kind="stable")[:k]
        return cand[order], exact[order]


def write_vector_parts(embeddings: np.ndarray, categories: Sequence[str], folder: Path,
                       index_type: str = "auto", ivf_threshold: int = IVF_THRESHOLD,
                       log_fn: LogFn = log.debug) -> VectorIndexRecord:
    """The manifest's vector_index record of the per-category parts, each IVF part written to
    `folder` and freed before the next is built (10M garments in 3 categories: 2.6 GB, not 7.7 GB)."""
    records = []
    built = build_parts(VectorStore(embeddings, categories), categories, index_type, ivf_threshold, log_fn)
    for i, part in enumerate(built):
        file = VECTORS.format(i) if part.vectors.kind == "ivf" else None
        if file:
            write_faiss(part.vectors.index, folder / file)
        records.append(part.record(file))
        del part  # before the next part is built
    return VectorIndexRecord(overall_type(r.type for r in records), records)


def build_parts(store: VectorStore, categories: Sequence[str], index_type: str, ivf_threshold: int,
                log_fn: LogFn) -> Iterator[VectorPart]:
    """The vector index of each category group, one at a time (write_vector_parts writes each)."""
    groups = partition_categories(categories)
    rng = np.random.default_rng(1)
    for group in groups:
        inside = store.category_mask(group)
        positions = np.flatnonzero(inside)
        filtered_probes = None
        if part_kind(index_type, len(positions), ivf_threshold) == "ivf" and len(groups) > 1:
            # A filtered query is most often about another category's garments.
            others = np.flatnonzero(~inside)
            sample = np.sort(rng.choice(others, size=min(len(others), 1000), replace=False))
            filtered_probes = probe_queries(Rows(store.embeddings, sample), 100, rng)
            log_fn(f"vector index for {', '.join(group) or 'uncategorised'} ({len(positions)} garments)")
        del inside
        vec = create_vector_index(Rows(store.embeddings, positions), index_type, ivf_threshold, log_fn,
                                  filtered_probes)
        yield VectorPart(group, positions, vec)
        del vec  # (write_vector_parts has written it: the next part is built without it in memory)


def load_vector_store(stored: StoredVersion) -> VectorStore:
    """The parts the (validated) manifest lists; a .faiss file that does not match is refused."""
    manifest, index_dir = stored.manifest, stored.ver.index_dir
    store = VectorStore(stored.embeddings, manifest.items.categories)
    for i, rec in enumerate(manifest.vector_index.parts):
        positions = np.flatnonzero(store.category_mask(rec.categories))
        if len(positions) != rec.count:
            raise damaged(index_dir, f"vector part {i} lists {rec.count} garments, the items "
                          f"{len(positions)}", manifest)
        if rec.type == "flat":
            vec = create_vector_index(Rows(stored.embeddings, positions), "flat")
        else:
            index = read_faiss(stored.ver.data_dir, rec.file, index_dir, manifest)
            vec = _checked_ivf(index, rec, len(positions), stored.embeddings.shape[1], index_dir, manifest)
        store.parts.append(VectorPart(tuple(rec.categories), positions, vec))
    return store


def _checked_ivf(index: Any, rec: PartRecord, count: int, dim: int, index_dir: Path,
                 manifest: Manifest) -> VectorIndex:
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    problem = None
    if ivf is None:
        problem = "is not an IVF index"
    elif index.metric_type != faiss.METRIC_INNER_PRODUCT:
        problem = "does not use inner product"
    elif index.ntotal != count or index.d != dim:
        problem = f"holds {index.ntotal} vectors of dimension {index.d}, the manifest {count} of {dim}"
    elif not 1 <= rec.nprobe <= ivf.nlist:
        problem = f"has {ivf.nlist} lists, fewer than the manifest's nprobe {rec.nprobe}"
    if problem:
        raise damaged(index_dir, f"{rec.file} {problem}", manifest)
    filtered = rec.nprobe if rec.nprobe_filtered is None else rec.nprobe_filtered
    nprobe_filtered = min(filtered, int(ivf.nlist))
    return VectorIndex(index, "ivf", rec.factory, rec.nprobe, nprobe_filtered, rec.tuned_recall_at_10)
