"""Approximate nearest neighbours: the FAISS indexes over an index's embeddings, one per category
group, and why they are shaped so (docs/method.md, "Vector search"). Embeddings are read a block
of rows at a time (Rows: a memory-mapped 30 GB file works); ondisk.py reads and writes the files.
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

from ..logs import LogFn
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


# The choices behind these numbers: docs/method.md, "Vector search".
IVF_THRESHOLD = 10_000  # below it a flat scan is already fast (~30 MB per query at 768-d)
TUNE_RECALL = 0.97  # recall@10 nprobe is tuned to; the margin over the promised 0.95 is for real queries
MIN_NPROBE = 8  # a few extra lists cost well under a millisecond
MAX_PARTS = 16  # vector indexes per garment index (see partition_categories)
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
    """IVF lists for n vectors: 4·sqrt(n), at most one per 39 vectors (docs/method.md, "Vector search")."""
    return max(1, min(round(4 * math.sqrt(n)), n // 39))


class VectorIndex:
    """A FAISS inner-product index (exact flat, or IVF with 8-bit scalar quantisation)."""

    def __init__(self, index: Any, kind: str, factory: str, nprobe: int | None = None,
                 nprobe_filtered: int | None = None, tuned_recall: dict[str, float] | None = None) -> None:
        self.index = index
        self.kind = kind
        self.factory = factory
        self.tuned_recall = tuned_recall or {}
        self.nprobe = nprobe  # IVF lists probed (None: flat); every IVF search passes it to FAISS
        # Probes used under a category filter: the query may then resemble no garment of this
        # part (a dress described while filtering tops), and its neighbours spread over more lists.
        self.nprobe_filtered = nprobe_filtered or nprobe

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

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
        if self.kind == "ivf":
            params = faiss.SearchParametersIVF(sel=sel, nprobe=int(nprobe or self.nprobe))
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
    """The vector index of these embeddings ([N, d] float32, unit norm): "auto" is exact flat
    below `ivf_threshold` items, IVF(nlist),SQ8 above. nprobe is tuned (unless given) on probe
    queries made from these garments, nprobe_filtered on `filtered_probes` (made from other
    garments) or, without them, on probes around the data's mean. An IVF build holds its
    training sample, one block and the index, never all the float32 vectors."""
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
    nprobe, garment_recall = tune_nprobe(vec, x, garment_probes, TUNE_RECALL, MIN_NPROBE,
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
    """[m, d] unit queries for tuning nprobe: between two random garments (around_mean: at the
    data's mean direction, resembling no garment) plus noise as large, so that their neighbours
    spread over lists as a text query's do (text and image embeddings meet at low cosines)."""
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


def tune_nprobe(vec: VectorIndex, rows: Rows, queries: np.ndarray, target: float, start: int,
                exact: np.ndarray) -> tuple[int, float]:
    """Smallest power-of-two nprobe >= start reaching `target` recall@k on `queries`, whose exact
    top-k is `exact` (its width is k). Recall is measured as the library searches: 4k+10
    candidates re-ranked exactly."""
    import faiss

    n, k = len(rows), exact.shape[1]
    nlist = int(faiss.extract_index_ivf(vec.index).nlist)
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


def partition_categories(categories: Sequence[str]) -> list[tuple[str, ...]]:
    """Category groups that get a vector index each: one per category, or with more than
    MAX_PARTS the MAX_PARTS - 1 most common alone and the rest shared (docs/method.md)."""
    counts = Counter(categories)
    ordered = sorted(counts, key=lambda c: (-counts[c], c))
    if len(ordered) <= MAX_PARTS:
        return [(c,) for c in sorted(ordered)]
    return [(c,) for c in sorted(ordered[: MAX_PARTS - 1])] + [tuple(sorted(ordered[MAX_PARTS - 1 :]))]


@dataclass
class VectorPart:
    categories: tuple[str, ...]
    positions: np.ndarray  # int64, sorted: the part's local id i is the garment at positions[i]
    local_categories: np.ndarray  # str per local id (only consulted for shared parts)
    vectors: VectorIndex

    def __len__(self) -> int:
        return len(self.positions)

    def record(self) -> PartRecord:
        return part_record(self.categories, len(self), self.vectors)


def part_record(categories: Sequence[str], count: int, vec: VectorIndex, file: str | None = None
                ) -> PartRecord:
    """A part as the manifest lists it (an IVF part's `file` is given when written)."""
    if vec.kind != "ivf":
        return PartRecord(list(categories), count, vec.kind, vec.factory)
    return PartRecord(list(categories), count, vec.kind, vec.factory, file, vec.nprobe, vec.nprobe_filtered,
                      vec.tuned_recall)


def overall_type(kinds: Iterable[str]) -> str:
    """The index type of a garment index whose parts are of these kinds: theirs, or "mixed"."""
    distinct = set(kinds)
    return distinct.pop() if len(distinct) == 1 else "mixed"


def _index_record(parts: list[PartRecord]) -> VectorIndexRecord:
    return VectorIndexRecord(overall_type(p.type for p in parts), parts)


class VectorStore:
    """Vector search over an index's embeddings: one FAISS index per category group.

    search() returns exact cosine scores: candidates from the FAISS indexes (8-bit codes for
    IVF) are re-ranked with the float32 embeddings.
    """

    def __init__(self, embeddings: np.ndarray, parts: list[VectorPart]) -> None:
        self.embeddings = embeddings
        self.parts = parts

    @property
    def kind(self) -> str:
        return overall_type(p.vectors.kind for p in self.parts)

    @property
    def factory(self) -> str:
        return ", ".join(sorted({p.vectors.factory for p in self.parts}))

    def record(self) -> VectorIndexRecord:
        return _index_record([p.record() for p in self.parts])

    def search(self, query: np.ndarray, k: int, categories: Collection[str] | None = None,
               exclude: Sequence[int] | np.ndarray = ()) -> tuple[np.ndarray, np.ndarray]:
        """The k best garments (positions, exact cosines), best first.

        categories: only garments of these; exclude: positions never returned.
        """
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        excluded = np.unique(np.asarray(exclude, dtype=np.int64))
        found = []
        for part in self.parts:
            wanted = [c for c in part.categories if categories is None or c in categories]
            if not wanted:
                continue
            mask = None
            if len(wanted) < len(part.categories):
                mask = np.isin(part.local_categories, wanted)
            hit = np.searchsorted(part.positions, excluded)
            inside = (hit < len(part)) & (part.positions[np.minimum(hit, len(part) - 1)] == excluded)
            local_excluded = hit[inside]
            if len(local_excluded):
                mask = np.ones(len(part), dtype=bool) if mask is None else mask
                mask[local_excluded] = False
            available = len(part) if mask is None else int(mask.sum())
            if available == 0:
                continue
            # IVF scores are approximations: fetch a few times more for the exact re-ranking.
            fetch = k if part.vectors.kind == "flat" else 4 * k + 10
            nprobe = part.vectors.nprobe_filtered if categories is not None else None
            _, labels = part.vectors.search(query, min(fetch, len(part)), mask, nprobe)
            local = labels[0][labels[0] >= 0]
            if len(local) < min(k, available):
                # An IVF probe can come back short under a narrow mask: take all the allowed.
                local = np.flatnonzero(mask) if mask is not None else np.arange(len(part))
            found.append(part.positions[local])
        if not found:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        cand = np.unique(np.concatenate(found))
        exact = np.asarray(self.embeddings[cand], dtype=np.float32) @ query
        order = np.argsort(-exact, kind="stable")[:k]
        return cand[order], exact[order]


def create_vector_store(embeddings: np.ndarray, categories: Sequence[str], index_type: str = "auto",
                        ivf_threshold: int = IVF_THRESHOLD, log_fn: LogFn | None = None) -> VectorStore:
    """Build the per-category vector indexes of an index (the threshold applies per part)."""
    cats = np.asarray(categories, dtype=object).astype(str)
    built = _build_parts(embeddings, categories, index_type, ivf_threshold, log_fn)
    parts = [VectorPart(group, positions, cats[positions], vec) for group, positions, vec in built]
    return VectorStore(embeddings, parts)


def write_vector_parts(embeddings: np.ndarray, categories: Sequence[str], folder: Path,
                       index_type: str = "auto", ivf_threshold: int = IVF_THRESHOLD,
                       log_fn: LogFn | None = None) -> VectorIndexRecord:
    """Build the parts create_vector_store builds, one at a time, writing each IVF part to
    `folder` (VECTORS) and freeing it before the next: the build's way, with memory bounded by
    the largest part (10M garments in 3 categories: one 2.6 GB IVF index, not 7.7 GB).

    Returns the manifest's vector_index record.
    """
    records = []
    for i, (group, positions, vec) in enumerate(_build_parts(embeddings, categories, index_type,
                                                             ivf_threshold, log_fn)):
        file = VECTORS.format(i) if vec.kind == "ivf" else None
        if file:
            write_faiss(vec.index, folder / file)
        records.append(part_record(group, len(positions), vec, file))
        del vec  # before the next part is built
    return _index_record(records)


def _build_parts(embeddings: np.ndarray, categories: Sequence[str], index_type: str, ivf_threshold: int,
                 log_fn: LogFn | None) -> Iterator[tuple[tuple[str, ...], np.ndarray, VectorIndex]]:
    """(categories, positions, vector index) of each part in turn; embeddings are read in blocks."""
    groups = partition_categories(categories)
    # Category codes, so a 10M-garment catalog costs 40 MB of int32 here, not 10M strings.
    names: dict[str, int] = {}
    codes = np.fromiter((names.setdefault(str(c), len(names)) for c in categories), np.int32, len(categories))
    rng = np.random.default_rng(1)
    for group in groups:
        inside = np.isin(codes, [names[c] for c in group])
        positions = np.flatnonzero(inside).astype(np.int64)
        filtered_probes = None
        if part_kind(index_type, len(positions), ivf_threshold) == "ivf" and len(groups) > 1:
            # A filtered query is most often about another category's garments.
            others = np.flatnonzero(~inside)
            sample = np.sort(rng.choice(others, size=min(len(others), 1000), replace=False))
            filtered_probes = probe_queries(Rows(embeddings, sample), 100, rng)
            if log_fn:
                log_fn(f"vector index for {', '.join(group) or 'uncategorised'} ({len(positions)} garments)")
        del inside
        vec = create_vector_index(Rows(embeddings, positions), index_type, ivf_threshold, log_fn=log_fn,
                                  filtered_probes=filtered_probes)
        yield group, positions, vec
        del vec  # (write_vector_parts has written it: the next part is built without it in memory)


def load_vector_store(stored: StoredVersion) -> VectorStore:
    """The parts the (validated) manifest lists; a .faiss file that does not match is refused."""
    data_dir, index_dir = stored.ver.data_dir, stored.ver.index_dir
    manifest, emb = stored.manifest, stored.embeddings
    cats = np.asarray(manifest.items.categories, dtype=object).astype(str)
    parts = []
    for i, rec in enumerate(manifest.vector_index.parts):
        group = tuple(rec.categories)
        positions = np.flatnonzero(np.isin(cats, group)).astype(np.int64)
        if len(positions) != rec.count:
            raise damaged(index_dir, f"vector part {i} lists {rec.count} garments, the items "
                          f"{len(positions)}", manifest)
        if rec.type == "flat":
            vec = create_vector_index(np.asarray(emb[positions]), "flat")
        else:
            index = read_faiss(data_dir, rec.file, index_dir, manifest)
            vec = _checked_ivf(index, rec, len(positions), emb.shape[1], index_dir, manifest)
        parts.append(VectorPart(group, positions, cats[positions], vec))
    return VectorStore(emb, parts)


def _checked_ivf(index: Any, rec: PartRecord, count: int, dim: int, index_dir: Path,
                 manifest: Manifest) -> VectorIndex:
    import faiss

    problem = None
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
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
    nprobe_filtered = min(rec.nprobe_filtered or rec.nprobe, int(ivf.nlist))
    return VectorIndex(index, "ivf", rec.factory, nprobe=rec.nprobe, nprobe_filtered=nprobe_filtered,
                       tuned_recall=rec.tuned_recall_at_10)
