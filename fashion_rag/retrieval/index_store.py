"""The garment index on disk: embeddings, a JSON manifest and FAISS indexes, built atomically.

Layout of an index folder:
  manifest.json            format version, encoder (name, weights sha256, dimension,
                           preprocessing), catalog root, per-item ids / paths (relative to the
                           catalog root) / categories / captions / image sha256, build date,
                           vector index parts (one per category group) and their parameters
  embeddings.safetensors   "embeddings": [N, dim] float32, unit norm, manifest item order
  vectors-<i>.faiss        the trained IVF index of part i (IVF parts only: an exact part is
                           rebuilt from the embeddings at load, which costs less than reading it)

Vector search: exact (flat inner product) for parts below IVF_THRESHOLD garments, IVF with
8-bit scalar quantisation above, nprobe tuned at build time; candidates are re-ranked with
the float32 embeddings, so reported scores are exact cosines.

Builds are incremental (only images whose content hash is new get encoded; removed ones are
dropped) and atomic (everything is written into a temp folder beside the target and swapped
in by rename, so a failure or crash mid-build leaves the previous index as it was).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from ..images import ImageLoadError, decode_image, fit_garment
from .catalog import Catalog, CatalogItem

log = logging.getLogger("fashion_rag")

FORMAT = "fashion-rag-garment-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.safetensors"
VECTORS = "vectors-{}.faiss"  # one per IVF part (see partition_categories)
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

ProgressFn = Callable[[int, int], None]
LogFn = Callable[[str], None]


class IndexFormatError(ValueError):
    """The folder holds no readable index of this format."""


class EncoderMismatchError(ValueError):
    """The index was built with a different encoder (architecture, weights or dimension)."""


class Encoder(Protocol):
    """What building and querying an index needs of an encoder (encoders.GarmentEncoder)."""

    name: str
    weights_path: Path

    @property
    def weights_hash(self) -> str: ...
    @property
    def dim(self) -> int: ...
    @property
    def preprocess_id(self) -> str: ...
    @property
    def is_random_demo(self) -> bool: ...
    def encode_images(self, images: Sequence[Image.Image], batch_size: int = ...,
                      progress: ProgressFn | None = ...) -> np.ndarray: ...
    def encode_texts(self, texts: Sequence[str], batch_size: int = ...) -> np.ndarray: ...


# --------------------------------------------------------------------------------------------
# Vector index (FAISS)
# --------------------------------------------------------------------------------------------

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
    embeddings: np.ndarray,
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
    """
    import faiss

    if index_type not in INDEX_TYPES:
        raise ValueError(f"index type must be one of {INDEX_TYPES}, not {index_type!r}")
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, d = x.shape
    if _part_kind(index_type, n, ivf_threshold) == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(x)
        return VectorIndex(index, "flat", "Flat")
    nlist = ivf_nlist(n)
    # SQ8 keeps 1 byte per dimension (a quarter of float32: 1M x 768 in ~0.8 GB) and, on unit
    # vectors, loses far less recall than PQ at the same speed.
    factory = f"IVF{nlist},SQ8"
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    # k-means on 32 points per list places lists well enough for search (nprobe is tuned on
    # the result anyway) and trains 8x faster than FAISS's default of 256.
    ivf.cp.max_points_per_centroid = 32
    if log_fn:
        log_fn(f"training {factory} on {min(n, 32 * nlist)} of {n} vectors")
    index.train(x)
    index.add(x)
    vec = VectorIndex(index, "ivf", factory, nprobe=nprobe or 1)
    if nprobe is not None:
        return vec
    rng = np.random.default_rng(0)
    nprobe, garment_recall = tune_nprobe(vec, x, probe_queries(x, 100, rng), TUNE_RECALL)
    if filtered_probes is None:
        filtered_probes = probe_queries(x, 100, rng, around_mean=True)
    vec.nprobe_filtered, other_recall = tune_nprobe(vec, x, filtered_probes, TUNE_RECALL, start=nprobe)
    vec.nprobe = nprobe
    vec.tuned_recall = {"garment_queries": garment_recall, "other_queries": other_recall}
    if log_fn:
        log_fn(f"nprobe {vec.nprobe} (filtered {vec.nprobe_filtered}) of {nlist} lists: recall@10 "
               f"{garment_recall:.3f} / {other_recall:.3f} on probe queries")
    return vec


def _part_kind(index_type: str, n: int, ivf_threshold: int) -> str:
    if n < 2:
        return "flat"  # nothing to cluster
    if index_type == "auto":
        return "ivf" if n >= ivf_threshold else "flat"
    return index_type


def exact_top_k(x: np.ndarray, queries: np.ndarray, k: int, chunk: int = 65536) -> np.ndarray:
    """Exact top-k positions by inner product (brute force), best first.

    In chunks, so 1M x 768 needs no 1M x Q score matrix.
    """
    queries = np.atleast_2d(queries).astype(np.float32)
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(x), chunk):
        s = queries @ np.asarray(x[start : start + chunk], dtype=np.float32).T
        i = np.broadcast_to(np.arange(start, start + s.shape[1]), s.shape)
        if s.shape[1] > k:  # keep only each chunk's k best before the exact sort
            part = np.argpartition(-s, k - 1, axis=1)[:, :k]
            s, i = np.take_along_axis(s, part, 1), np.take_along_axis(i, part, 1)
        s, i = np.concatenate([best_s, s], 1), np.concatenate([best_i, i], 1)
        top = np.lexsort((i, -s), axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return best_i


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    hits = sum(len(set(f[:k].tolist()) & set(e.tolist())) for f, e in zip(found, exact, strict=True))
    return hits / exact.size


def probe_queries(x: np.ndarray, m: int, rng: np.random.Generator, around_mean: bool = False) -> np.ndarray:
    """Synthetic queries for tuning nprobe, [m, d] unit vectors.

    Each sits between two random garments (or, around_mean, at the data's mean direction: a
    query that resembles no garment in particular) plus noise as large as that anchor, so its
    neighbours spread over several lists as a text query's do: text and image embeddings meet
    at cosines far below 1.
    """
    n, d = x.shape
    if around_mean:
        anchors = np.repeat(np.asarray(x, dtype=np.float32).mean(axis=0, keepdims=True), m, axis=0)
    else:
        anchors = np.asarray(x[rng.choice(n, size=m)], dtype=np.float32) + x[rng.choice(n, size=m)]
    anchors /= np.maximum(np.linalg.norm(anchors, axis=1, keepdims=True), 1e-12)
    noise = rng.standard_normal((m, d)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    q = anchors + noise
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def tune_nprobe(vec: VectorIndex, x: np.ndarray, queries: np.ndarray, target: float, k: int = 10,
                start: int = MIN_NPROBE) -> tuple[int, float]:
    """Smallest power-of-two nprobe >= start reaching `target` recall@k on `queries`.

    Recall is measured as the library searches: 4k+10 candidates re-ranked exactly.
    """
    n = len(x)
    k = min(k, n)
    exact = exact_top_k(x, queries, k)
    nlist = faiss_nlist(vec)
    nprobe, recall = min(max(start, MIN_NPROBE), nlist), 0.0
    while True:
        vec.nprobe = nprobe
        _, cand = vec.search(queries, min(n, 4 * k + 10))
        found = np.stack([_rerank(x, row[row >= 0], q, k) for row, q in zip(cand, queries, strict=True)])
        recall = recall_at_k(found, exact)
        if recall >= target or nprobe >= nlist:
            return nprobe, recall
        nprobe = min(nprobe * 2, nlist)


def _rerank(x: np.ndarray, cand: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    cand = np.sort(cand)
    top = cand[np.argsort(-(x[cand] @ query), kind="stable")[:k]]
    return np.pad(top, (0, k - len(top)), constant_values=-1)


def faiss_nlist(vec: VectorIndex) -> int:
    import faiss

    return int(faiss.extract_index_ivf(vec.index).nlist)


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
        rec: dict[str, Any] = {"categories": list(self.categories), "count": len(self),
                               "type": self.vectors.kind, "factory": self.vectors.factory}
        if self.vectors.kind == "ivf":
            rec.update(nprobe=self.vectors.nprobe, nprobe_filtered=self.vectors.nprobe_filtered,
                       tuned_recall_at_10=self.vectors.tuned_recall)
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
    groups = partition_categories([str(c) for c in cats])
    rng = np.random.default_rng(1)
    parts = []
    for group in groups:
        inside = np.isin(cats, group)
        positions = np.flatnonzero(inside).astype(np.int64)
        filtered_probes = None
        if _part_kind(index_type, len(positions), ivf_threshold) == "ivf" and len(groups) > 1:
            # A filtered query is most often about another category's garments.
            others = np.flatnonzero(~inside)
            sample = np.sort(rng.choice(others, size=min(len(others), 1000), replace=False))
            filtered_probes = probe_queries(np.asarray(embeddings[sample]), 100, rng)
            if log_fn:
                log_fn(f"vector index for {', '.join(group) or 'uncategorised'} ({len(positions)} garments)")
        vec = create_vector_index(np.asarray(embeddings[positions]), index_type, ivf_threshold, log_fn=log_fn,
                                  filtered_probes=filtered_probes)
        parts.append(VectorPart(group, positions, cats[positions], vec))
    return VectorStore(embeddings, parts)


def _load_vector_store(index_dir: Path, manifest: dict[str, Any], emb: np.ndarray) -> VectorStore:
    import faiss

    cats = np.asarray(manifest["items"]["categories"], dtype=object).astype(str)
    records = manifest.get("vector_index", {}).get("parts")
    if not records:
        raise IndexFormatError(f"Index {index_dir} lists no vector index parts (written by a development "
                               "version?); rebuild it with `python -m fashion_rag index build`.")
    parts = []
    for i, rec in enumerate(records):
        group = tuple(rec["categories"])
        positions = np.flatnonzero(np.isin(cats, group)).astype(np.int64)
        if len(positions) != rec["count"]:
            raise IndexFormatError(f"Index {index_dir} is inconsistent (vector part {i}); rebuild it.")
        if rec["type"] == "flat":
            vec = create_vector_index(np.asarray(emb[positions]), "flat")
        else:
            index = faiss.read_index(str(index_dir / rec["file"]))
            if index.ntotal != len(positions) or index.d != emb.shape[1]:
                raise IndexFormatError(
                    f"Index {index_dir}: {rec['file']} does not match the manifest; rebuild it.")
            vec = VectorIndex(index, "ivf", rec["factory"], nprobe=rec["nprobe"],
                              nprobe_filtered=rec.get("nprobe_filtered"),
                              tuned_recall=rec.get("tuned_recall_at_10"))
        parts.append(VectorPart(group, positions, cats[positions], vec))
    return VectorStore(emb, parts)


# --------------------------------------------------------------------------------------------
# The index: manifest + embeddings + vector index
# --------------------------------------------------------------------------------------------

@dataclass
class BuildReport:
    index_dir: Path
    items: int  # garments in the index now
    encoded: int  # images run through the encoder in this build
    reused: int  # embeddings kept from the previous build (same image content)
    removed: int  # previous items no longer in the catalog
    index_type: str
    written: bool  # False when nothing changed and the index was left untouched
    problems: list[str] = field(default_factory=list)  # skipped catalog entries / images


def encoder_record(encoder: Encoder) -> dict[str, Any]:
    return {
        "name": encoder.name,
        "weights_sha256": encoder.weights_hash,
        "dim": int(encoder.dim),
        "preprocess": encoder.preprocess_id,
        "weights_file": Path(encoder.weights_path).name,
        "weights_path": str(encoder.weights_path),
        "random_demo": bool(encoder.is_random_demo),
    }


def _same_embedding_space(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("name", "weights_sha256", "dim", "preprocess")
    return all(a.get(key) == b.get(key) for key in keys)


def describe_encoder(rec: dict[str, Any]) -> str:
    return (f"{rec.get('name')} (weights {rec.get('weights_file')}, sha256 "
            f"{str(rec.get('weights_sha256'))[:12]}, {rec.get('dim')}-d)")


def check_encoder(manifest: dict[str, Any], encoder: Encoder, index_dir: Path | str = "") -> None:
    """Refuse an encoder that does not produce the index's embedding space, naming both."""
    built = manifest["encoder"]
    # Name and dimension first: they need no hashing and no model.
    given = {"name": encoder.name, "dim": int(encoder.dim), "weights_file": Path(encoder.weights_path).name}
    mismatch = built["name"] != given["name"] or int(built["dim"]) != given["dim"]
    if not mismatch:
        given["weights_sha256"] = encoder.weights_hash
        given["preprocess"] = encoder.preprocess_id
        mismatch = not _same_embedding_space(built, given)
    if mismatch:
        given.setdefault("weights_sha256", encoder.weights_hash)
        raise EncoderMismatchError(
            f"The index {index_dir} was built with encoder {describe_encoder(built)}, but the "
            f"encoder given is {describe_encoder(given)}. Text and image embeddings of different "
            f"encoders are not comparable: load the weights the index was built with "
            f"({built.get('weights_path')}), or rebuild the index with these weights "
            f"(python -m fashion_rag index build --catalog <catalog> --out {index_dir} "
            f"--encoder {encoder.name} --weights {encoder.weights_path})."
        )


def read_manifest(index_dir: str | Path) -> dict[str, Any]:
    index_dir = Path(index_dir)
    path = index_dir / MANIFEST
    if not path.is_file():
        _recover(index_dir.resolve())
    if not path.is_file():
        raise IndexFormatError(
            f"No garment index at {index_dir} ({MANIFEST} missing). Build one with "
            f"`python -m fashion_rag index build --catalog <images folder> --out {index_dir}`."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{path} is not a readable index manifest ({exc}); rebuild the index."
                               ) from exc
    if manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{path} is not a Fashion-RAG garment index manifest.")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(
            f"{path} has index format version {manifest.get('format_version')}, this version of "
            f"Fashion-RAG reads version {FORMAT_VERSION}: rebuild the index "
            "(python -m fashion_rag index build)."
        )
    return manifest


class GarmentIndex:
    """A loaded index: garment metadata, embeddings, the vector index, optionally the encoder."""

    def __init__(self, index_dir: Path, manifest: dict[str, Any], embeddings: np.ndarray,
                 vectors: VectorStore, encoder: Encoder | None = None) -> None:
        self.index_dir = index_dir
        self.manifest = manifest
        self.embeddings = embeddings
        self.vectors = vectors
        self.encoder = encoder
        items = manifest["items"]
        self.ids: list[str] = list(items["ids"])
        self.rel_paths: list[str] = list(items["paths"])
        self.categories: list[str] = list(items["categories"])
        self.captions: list[str] = list(items["captions"])
        self.content_hashes: list[str] = list(items["sha256"])
        self._positions = {item_id: i for i, item_id in enumerate(self.ids)}
        # Category codes once, so a filtered query on a million garments costs no Python loop.
        names, codes = np.unique(np.asarray(self.categories, dtype=object).astype(str), return_inverse=True)
        self._category_names = {str(name): code for code, name in enumerate(names)}
        self._category_codes = codes.reshape(-1)
        self.catalog_root = _resolve_catalog_root(index_dir, manifest)
        self._captions_index = None

    @classmethod
    def in_memory(cls, embeddings: np.ndarray, categories: Sequence[str] | None = None,
                  captions: Sequence[str] | None = None, index_type: str = "auto",
                  ivf_threshold: int = IVF_THRESHOLD, name: str = "in-memory") -> GarmentIndex:
        """An index over given embeddings with no files (benchmarks, experiments); ids are '0'..'N-1'."""
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        n = len(emb)
        cats = list(categories) if categories is not None else [""] * n
        vectors = create_vector_store(emb, cats, index_type, ivf_threshold)
        manifest: dict[str, Any] = {
            "encoder": {"name": "none", "dim": int(emb.shape[1]), "weights_file": None, "weights_sha256": ""},
            "catalog_root": "", "built": "", "vector_index": vectors.record(),
            "items": {"ids": [str(i) for i in range(n)], "paths": [""] * n, "categories": cats,
                      "captions": list(captions) if captions is not None else [""] * n, "sha256": [""] * n},
        }
        return cls(Path(name), manifest, emb, vectors)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def name(self) -> str:
        return self.index_dir.name

    @property
    def dim(self) -> int:
        return int(self.manifest["encoder"]["dim"])

    @property
    def encoder_info(self) -> dict[str, Any]:
        return dict(self.manifest["encoder"])

    @property
    def built(self) -> str:
        return str(self.manifest.get("built", ""))

    @property
    def has_captions(self) -> bool:
        return any(c.strip() for c in self.captions)

    def position(self, item_id: str) -> int:
        return self._positions[item_id]

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._positions

    def image_path(self, pos: int) -> Path:
        return self.catalog_root / self.rel_paths[pos]

    def category_mask(self, category: str) -> np.ndarray:
        """[N] bool: which garments have exactly this category."""
        code = self._category_names.get(category)
        if code is None:
            return np.zeros(len(self), dtype=bool)
        return self._category_codes == code

    def per_category(self) -> dict[str, int]:
        return dict(Counter(c or "uncategorised" for c in self.categories))

    @property
    def caption_index(self):  # -> lexical.CaptionIndex (built on first use: see lexical.py)
        if self._captions_index is None:
            from .lexical import CaptionIndex

            self._captions_index = CaptionIndex(self.captions)
        return self._captions_index

    def info(self) -> dict[str, Any]:
        """A summary for people: what `index info` prints and the loader node shows."""
        return {
            "name": self.name,
            "path": str(self.index_dir),
            "items": len(self),
            "per_category": self.per_category(),
            "encoder": describe_encoder(self.manifest["encoder"]),
            "random_demo_encoder": bool(self.manifest["encoder"].get("random_demo")),
            "built": self.built,
            "catalog_root": str(self.catalog_root),
            "vector_index": {"type": self.vectors.kind, "factory": self.vectors.factory,
                             "parts": len(self.vectors.parts)},
            "captions": sum(1 for c in self.captions if c.strip()),
        }


def _resolve_catalog_root(index_dir: Path, manifest: dict[str, Any]) -> Path:
    # The absolute root is what was built; the relative one keeps an index usable when the
    # models folder (index and catalog together) is moved or mounted elsewhere.
    absolute = Path(manifest["catalog_root"])
    if absolute.is_dir():
        return absolute
    relative = manifest.get("catalog_root_relative")
    if relative:
        candidate = (index_dir / relative).resolve()
        if candidate.is_dir():
            return candidate
    return absolute


def map_embeddings(path: Path) -> np.ndarray:
    """The [N, dim] float32 "embeddings" tensor of a safetensors file, memory-mapped read-only.

    Mapped rather than read so a 1M-garment index (3 GB of float32) costs page cache, not
    process memory, when the IVF index answers queries and only a few rows are ever read.
    """
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    meta = header["embeddings"]
    if meta["dtype"] != "F32" or len(meta["shape"]) != 2:
        raise IndexFormatError(f"{path}: embeddings must be a 2-D float32 tensor, found {meta}")
    start, end = meta["data_offsets"]
    shape = tuple(int(v) for v in meta["shape"])
    if shape[0] == 0 or end == start:
        return np.zeros(shape, dtype=np.float32)
    return np.memmap(path, dtype=np.float32, mode="r", offset=8 + header_len + start, shape=shape)


def load_index(index_dir: str | Path, encoder: Encoder | None = None) -> GarmentIndex:
    """Load an index; with an encoder, first check that it is the one the index was built with."""
    index_dir = Path(index_dir).expanduser().resolve()
    manifest = read_manifest(index_dir)
    if encoder is not None:
        check_encoder(manifest, encoder, index_dir)
    try:
        emb = map_embeddings(index_dir / manifest["files"]["embeddings"])
    except Exception as exc:
        raise IndexFormatError(f"Cannot read the embeddings of index {index_dir} ({exc}); rebuild it."
                               ) from exc
    n, dim = len(manifest["items"]["ids"]), int(manifest["encoder"]["dim"])
    if emb.shape != (n, dim):
        raise IndexFormatError(
            f"Index {index_dir} is inconsistent: embeddings {tuple(emb.shape)} but the manifest lists "
            f"{n} items of dimension {dim}. Rebuild it."
        )
    vectors = _load_vector_store(index_dir, manifest, emb)
    return GarmentIndex(index_dir, manifest, emb, vectors, encoder)


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------

def _previous_embeddings(out_dir: Path, enc: dict[str, Any], say: LogFn) -> tuple[dict[str, Any] | None,
                                                                                  dict[str, np.ndarray]]:
    """The previous manifest and its embeddings by image hash, when they are in the same space."""
    if not (out_dir / MANIFEST).is_file():
        return None, {}
    try:
        old = read_manifest(out_dir)
    except IndexFormatError as exc:
        say(f"previous index not reusable ({exc}); building from scratch")
        return None, {}
    if not _same_embedding_space(old["encoder"], enc):
        say(f"previous index used encoder {describe_encoder(old['encoder'])}; re-encoding everything")
        return old, {}
    try:
        emb = map_embeddings(out_dir / old["files"]["embeddings"])
    except Exception as exc:  # unreadable: rebuilding is always correct, just slower
        say(f"previous embeddings unreadable ({exc}); re-encoding everything")
        return old, {}
    return old, {h: emb[i] for i, h in enumerate(old["items"]["sha256"]) if i < len(emb)}


def build_index(
    catalog: Catalog,
    out_dir: str | Path,
    encoder: Encoder,
    *,
    index_type: str = "auto",
    ivf_threshold: int = IVF_THRESHOLD,
    batch_size: int = 16,
    log_fn: LogFn | None = None,
    progress: ProgressFn | None = None,
) -> BuildReport:
    """Build or update the index of `catalog` in `out_dir` (see the module docstring).

    Only images whose content is not in the previous index are encoded; when nothing changed
    at all the folder is not touched (so its mtime, which ComfyUI watches, stays). On any
    error the previous index stays as it was.
    """
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index type must be one of {INDEX_TYPES}, not {index_type!r}")
    say = log_fn or log.info
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _recover(out_dir)
    enc = encoder_record(encoder)
    old_manifest, old_emb = _previous_embeddings(out_dir, enc, say)
    problems = list(catalog.problems)

    # Pass 1: hash every image (cheap, streaming) to find what must be encoded.
    hashed: list[tuple[CatalogItem, str]] = []
    for item in catalog.items:
        try:
            hashed.append((item, _sha256_file(catalog.image_path(item))))
        except OSError as exc:
            problems.append(f"{item.id}: cannot read {catalog.image_path(item)} ({exc}), skipped")
    todo = [(item, h) for item, h in hashed if h not in old_emb]
    unique_todo: list[tuple[CatalogItem, str]] = []
    queued: set[str] = set()
    for item, h in todo:  # identical files (same hash) are encoded once
        if h not in queued:
            queued.add(h)
            unique_todo.append((item, h))
    say(f"{len(hashed)} images: {len(hashed) - len(todo)} unchanged, {len(unique_todo)} to encode")

    # Pass 2: decode and encode the new images, batch by batch (memory stays one batch).
    new_emb: dict[str, np.ndarray] = {}
    bad: set[str] = set()
    done = 0
    for start in range(0, len(unique_todo), batch_size):
        images, hashes = [], []
        for item, h in unique_todo[start : start + batch_size]:
            path = catalog.image_path(item)
            try:
                data = path.read_bytes()
                img = fit_garment(decode_image(data, str(path)))
            except (OSError, ImageLoadError) as exc:
                problems.append(f"{item.id}: {exc}, skipped")
                bad.add(h)
                continue
            if hashlib.sha256(data).hexdigest() != h:
                problems.append(f"{item.id}: {path} changed during the build, skipped (run the build again)")
                bad.add(h)
                continue
            images.append(img)
            hashes.append(h)
        if images:
            vecs = np.asarray(encoder.encode_images(images, batch_size=batch_size), dtype=np.float32)
            new_emb.update(zip(hashes, vecs, strict=True))
        done += len(unique_todo[start : start + batch_size])
        if progress:
            progress(done, len(unique_todo))

    kept = [(item, h) for item, h in hashed if h not in bad]
    if not kept:
        raise ValueError(
            f"No usable garment images in catalog {catalog.root}"
            + (f"; problems: {'; '.join(problems[:5])}" if problems else "")
            + ". Point --catalog at a folder of garment images (or a metadata file listing them)."
        )
    emb = np.stack([old_emb[h] if h in old_emb else new_emb[h] for _, h in kept]).astype(np.float32)
    groups = partition_categories([item.category for item, _ in kept])
    plan = [(list(g), sum(item.category in g for item, _ in kept)) for g in groups]
    plan_kinds = [_part_kind(index_type, n, ivf_threshold) for _, n in plan]
    kind = plan_kinds[0] if len(set(plan_kinds)) == 1 else "mixed"
    items = {
        "ids": [item.id for item, _ in kept],
        "paths": [item.path for item, _ in kept],
        "categories": [item.category for item, _ in kept],
        "captions": [item.caption for item, _ in kept],
        "sha256": [h for _, h in kept],
    }
    old_ids = set(old_manifest["items"]["ids"]) if old_manifest else set()
    removed = len(old_ids - set(items["ids"]))
    report = BuildReport(out_dir, len(kept), len(new_emb), len(kept) - sum(h in new_emb for _, h in kept),
                         removed, kind, written=False, problems=problems)
    if (
        old_manifest is not None
        and old_emb
        and old_manifest["items"] == items
        and old_manifest["encoder"] == enc
        and [(p["categories"], p["type"]) for p in old_manifest["vector_index"].get("parts", [])]
        == [(g, k) for (g, _), k in zip(plan, plan_kinds, strict=True)]
        and old_manifest["catalog_root"] == str(catalog.root)
    ):
        say(f"index {out_dir} is up to date ({len(kept)} garments)")
        return report

    vectors = create_vector_store(emb, items["categories"], index_type, ivf_threshold, log_fn=say)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "encoder": enc,
        "catalog_root": str(catalog.root),
        "catalog_root_relative": os.path.relpath(catalog.root, out_dir),
        "count": len(kept),
        "vector_index": vectors.record(),
        "files": {"embeddings": EMBEDDINGS},
        "items": items,
    }
    for i, (part, rec) in enumerate(zip(vectors.parts, manifest["vector_index"]["parts"], strict=True)):
        if part.vectors.kind == "ivf":
            rec["file"] = VECTORS.format(i)
    _write_atomically(out_dir, manifest, emb, vectors)
    report.written = True
    say(f"index written to {out_dir}: {len(kept)} garments ({report.encoded} encoded, "
        f"{report.reused} reused, {removed} removed, {len(problems)} skipped), {vectors.factory}")
    return report


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _write_atomically(out_dir: Path, manifest: dict[str, Any], emb: np.ndarray, vectors: VectorStore) -> None:
    import faiss
    from safetensors.numpy import save_file

    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        save_file({"embeddings": np.ascontiguousarray(emb)}, str(tmp / EMBEDDINGS))
        for part, rec in zip(vectors.parts, manifest["vector_index"]["parts"], strict=True):
            if "file" in rec:
                faiss.write_index(part.vectors.index, str(tmp / rec["file"]))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
        _match_umask(tmp)
        _swap_in(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful swap


def _match_umask(folder: Path) -> None:
    """Give mkdtemp's private (0700) folder and the files in it the modes a plain write would.

    Python's own write of the manifest followed the umask; copy that so a ComfyUI running as
    another user can read the index.
    """
    file_mode = (folder / MANIFEST).stat().st_mode & 0o666
    for path in folder.iterdir():
        os.chmod(path, file_mode)
    os.chmod(folder, file_mode | ((file_mode & 0o444) >> 2))  # x wherever r


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace out_dir by tmp with renames (atomic on one file system).

    POSIX cannot rename a folder over a non-empty one, so the old index steps aside first; a
    crash between the two renames leaves it under `.NAME.old-*`, which _recover puts back.
    """
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    backup = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(out_dir, backup)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(backup, out_dir)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _recover(out_dir: Path) -> None:
    """Put back an index that a crash left set aside by _swap_in (see there)."""
    if out_dir.exists() or not out_dir.parent.is_dir():
        return
    backups = sorted(out_dir.parent.glob(f".{out_dir.name}.old-*"), key=lambda p: p.stat().st_mtime)
    for backup in reversed(backups):
        if (backup / MANIFEST).is_file():
            os.rename(backup, out_dir)
            log.warning("restored index %s from %s (an earlier build was interrupted)", out_dir, backup.name)
            return
