"""Vector search over an index's embeddings: one FAISS index per category group.

Fashion-RAG retrieves within the target garment's category, so most queries carry a category
filter; one index per category keeps them as accurate as unfiltered ones (see
partition_categories). Exact parts are rebuilt from the embeddings at load (cheaper than
reading them); IVF parts are read from their .faiss files, checked against the manifest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .ondisk import VECTORS, IndexFormatError, StoredVersion, read_faiss, rebuild_hint, write_faiss
from .vector_rows import Rows
from .vectors import (
    IVF_THRESHOLD,
    MAX_PARTS,
    LogFn,
    VectorIndex,
    create_vector_index,
    part_kind,
    probe_queries,
)


def partition_categories(categories: Sequence[str]) -> list[tuple[str, ...]]:
    """Category groups that get a vector index each.

    Fashion-RAG retrieves within the target garment's category, so most queries carry a
    category filter. One IVF index per category keeps those queries as accurate as unfiltered
    ones: in a single shared index, the lists nearest a query are mostly other categories'
    and a filtered probe finds too few good candidates (recall@10 fell to 0.78 in the
    benchmark). The MAX_PARTS - 1 most common categories get their own index, the rest (a
    catalog with many free-text categories) share one.
    """
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

    def record(self) -> dict[str, Any]:
        return part_record(self.categories, len(self), self.vectors)


def part_record(categories: Sequence[str], count: int, vec: VectorIndex) -> dict[str, Any]:
    """A part as the manifest lists it (IVF parts get their "file" when written)."""
    rec: dict[str, Any] = {"categories": list(categories), "count": count, "type": vec.kind,
                           "factory": vec.factory}
    if vec.kind == "ivf":
        rec.update(nprobe=vec.nprobe, nprobe_filtered=vec.nprobe_filtered,
                   tuned_recall_at_10=vec.tuned_recall)
    return rec


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
        kinds = {p.vectors.kind for p in self.parts}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    @property
    def factory(self) -> str:
        return ", ".join(sorted({p.vectors.factory for p in self.parts}))

    def memory_bytes(self) -> int:
        return sum(p.vectors.memory_bytes() + p.positions.nbytes for p in self.parts)

    def record(self) -> dict[str, Any]:
        return {"type": self.kind, "parts": [p.record() for p in self.parts]}

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
                       log_fn: LogFn | None = None) -> dict[str, Any]:
    """Build the parts create_vector_store builds, one at a time, writing each IVF part to
    `folder` (VECTORS) and freeing it before the next: the build's way, with memory bounded by
    the largest part (10M garments in 3 categories: one 2.6 GB IVF index, not 7.7 GB).

    Returns the manifest's vector_index record (with the "file" of every IVF part).
    """
    records = []
    for i, (group, positions, vec) in enumerate(_build_parts(embeddings, categories, index_type,
                                                             ivf_threshold, log_fn)):
        rec = part_record(group, len(positions), vec)
        if vec.kind == "ivf":
            rec["file"] = VECTORS.format(i)
            write_faiss(vec.index, folder / rec["file"])
        records.append(rec)
        del vec  # before the next part is built
    kinds = {r["type"] for r in records}
    return {"type": kinds.pop() if len(kinds) == 1 else "mixed", "parts": records}




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
    cats = np.asarray(manifest["items"]["categories"], dtype=object).astype(str)
    parts = []
    for i, rec in enumerate(manifest["vector_index"]["parts"]):
        group = tuple(rec["categories"])
        positions = np.flatnonzero(np.isin(cats, group)).astype(np.int64)
        if len(positions) != rec["count"]:
            raise IndexFormatError(f"Index {index_dir} is inconsistent (vector part {i} lists "
                                   f"{rec['count']} garments, the items {len(positions)}); "
                                   f"{rebuild_hint(index_dir, manifest)}")
        if rec["type"] == "flat":
            vec = create_vector_index(np.asarray(emb[positions]), "flat")
        else:
            index = read_faiss(data_dir, rec["file"], index_dir, manifest)
            vec = _checked_ivf(index, rec, len(positions), emb.shape[1], index_dir, manifest)
        parts.append(VectorPart(group, positions, cats[positions], vec))
    return VectorStore(emb, parts)




def _checked_ivf(index: Any, rec: dict[str, Any], count: int, dim: int, index_dir: Path,
                 manifest: dict[str, Any]) -> VectorIndex:
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
    elif not 1 <= rec["nprobe"] <= ivf.nlist:
        problem = f"has {ivf.nlist} lists, fewer than the manifest's nprobe {rec['nprobe']}"
    if problem:
        raise IndexFormatError(f"Index {index_dir}: {rec['file']} {problem}; "
                               f"{rebuild_hint(index_dir, manifest)}")
    nprobe_filtered = min(int(rec.get("nprobe_filtered") or rec["nprobe"]), int(ivf.nlist))
    return VectorIndex(index, "ivf", rec["factory"], nprobe=rec["nprobe"], nprobe_filtered=nprobe_filtered,
                       tuned_recall=rec.get("tuned_recall_at_10"))
