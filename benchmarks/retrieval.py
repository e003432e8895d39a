"""Retrieval benchmark: the library's vector search on synthetic 768-d garment embeddings.

    python benchmarks/retrieval.py                 # 50k and 1M (several minutes, ~8 GB RAM at 1M)
    python benchmarks/retrieval.py --sizes 50000   # quick

For each catalog size it builds the index the library builds (`index_type="auto"`: IVF with
8-bit scalar quantisation above the threshold, nprobe tuned at build time) and measures:
build time (train + add + nprobe tuning), the FAISS index's memory, single-query latency for
k=10 through the library's ranking path (`GarmentIndex.search`, what search() ranks by: one-thread IVF probe
plus exact re-ranking of the candidates with the float32 embeddings), and recall@10 against
exact brute force. The exact flat index is measured beside it as the baseline. Text encoding
is not included (it is the same for every index type).

The embeddings imitate CLIP image embeddings: a shared mean direction (CLIP embeddings are
anisotropic: two random garments have cosine ~0.3), 300 garment types, fine clusters of ~50
near-duplicates (one garment in several colours), and isotropic noise. Queries imitate text
embeddings: a different mean direction (the modality gap), a type, a weak fine-cluster pull and
strong noise, so their best matches sit at cosine ~0.4 and spread over several clusters.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fashion_rag.retrieval.ann import VectorStore, exact_top_k, recall_at_k  # noqa: E402
from fashion_rag.retrieval.index import GarmentIndex  # noqa: E402
from tools.synthetic_index import in_memory_index  # noqa: E402

DIM = 768
K = 10


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class Synthetic:
    """The synthetic catalog of the module docstring, generated a chunk at a time."""

    CHUNK = 100_000  # rows: 1M x 768 noise at once would double memory

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n = n
        self.rng = rng = np.random.default_rng(seed)
        self.n_fine = max(n // 50, 1)
        self.image_mean, self.text_mean = _unit(rng.standard_normal((2, DIM))).astype(np.float32)
        self.types = _unit(rng.standard_normal((300, DIM))).astype(np.float32)
        self.fine = _unit(rng.standard_normal((self.n_fine, DIM))).astype(np.float32)
        self.fine_type = rng.integers(0, 300, self.n_fine)
        self.type_category = rng.integers(0, 3, 300)  # each garment type belongs to one category

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(embeddings [m, 768], category per item [m]) for rows 0..n-1, in order; call once."""
        for start in range(0, self.n, self.CHUNK):
            m = min(self.CHUNK, self.n - start)
            f = self.rng.integers(0, self.n_fine, m)
            noise = self.rng.standard_normal((m, DIM), dtype=np.float32) / np.sqrt(DIM)
            kind = self.fine_type[f]
            mix = 0.55 * self.image_mean + 0.6 * self.types[kind] + 0.45 * self.fine[f] + 0.35 * noise
            yield _unit(mix), self.type_category[kind]

    def queries(self, n_queries: int) -> np.ndarray:
        """Text-like queries (after chunks(), as the results in RESULTS.md were drawn)."""
        f = self.rng.integers(0, self.n_fine, n_queries)
        noise = self.rng.standard_normal((n_queries, DIM), dtype=np.float32) / np.sqrt(DIM)
        mix = 0.3 * self.text_mean + 0.6 * self.types[self.fine_type[f]] + 0.15 * self.fine[f] + 0.9 * noise
        return _unit(mix).astype(np.float32)


def synthetic(n: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings [n, 768], queries [q, 768], category per item [n]) — see the module docstring."""
    gen = Synthetic(n, seed)
    x = np.empty((n, DIM), np.float32)
    cats = np.empty(n, np.int64)
    start = 0
    for chunk, chunk_cats in gen.chunks():
        x[start : start + len(chunk)] = chunk
        cats[start : start + len(chunk)] = chunk_cats
        start += len(chunk)
    return x, gen.queries(n_queries), cats


def index_bytes(store: VectorStore) -> int:
    """Bytes the FAISS parts and their position maps hold: a flat part's n x d float32 (serialising
    it would copy gigabytes to say so), an IVF part's serialised size (what it holds)."""
    import faiss

    total = 0
    for part in store.parts:
        index = part.vectors.index
        total += part.positions.nbytes + (int(index.ntotal) * int(index.d) * 4 if part.vectors.kind == "flat"
                                          else int(faiss.serialize_index(index).nbytes))
    return total


def measure(index: GarmentIndex, queries: np.ndarray, exact: np.ndarray,
            categories: set[str] | None = None, warmup: int = 5) -> tuple[float, float, float]:
    """p50 ms, p99 ms, recall@10 of single queries through the library's ranking path."""
    for q in queries[:warmup]:
        index.search(q, K, categories)
    times, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        hits = index.search(q, K, categories)[0].tolist()
        times.append(time.perf_counter() - t0)
        found.append(hits)
    ms = np.array(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), recall_at_k(np.array(found), exact)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=500, help="single queries timed per index")
    parser.add_argument("--flat-queries", type=int, default=100, help="queries for the (slow) flat baseline")
    parser.add_argument("--no-flat", action="store_true", help="skip the exact flat baseline")
    args = parser.parse_args()

    rows = []
    for n in args.sizes:
        t0 = time.perf_counter()
        x, queries, cats = synthetic(n, args.queries)
        print(f"[bench] {n:,} embeddings generated in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        exact = exact_top_k(x, queries, K)
        first_cat = cats == 0
        exact_cat = np.where(first_cat)[0][exact_top_k(x[first_cat], queries, K)]

        t0 = time.perf_counter()
        index = in_memory_index(x, categories=[str(c) for c in cats], index_type="auto")
        build_s = time.perf_counter() - t0
        vec = index.vectors
        mem = index_bytes(vec)
        nprobes = "/".join(sorted({str(p.vectors.nprobe) for p in vec.parts}))
        filtered = "/".join(sorted({str(p.vectors.nprobe_filtered) for p in vec.parts}))
        label = (f"{len(vec.parts)} x {vec.factory} (one per category), nprobe {nprobes}"
                 if vec.kind == "ivf" else "Flat (exact)")
        p50, p99, rec = measure(index, queries, exact)
        rows.append((f"{n:,}", f"library: {label}", f"{build_s:.1f}", f"{mem / 2**20:,.0f} MiB",
                     f"{p50:.2f}", f"{p99:.2f}", f"{rec:.3f}"))
        print(f"[bench] {rows[-1]}", file=sys.stderr)
        p50, p99, rec = measure(index, queries, exact_cat, categories={"0"})
        rows.append((f"{n:,}", f"same, category filter (1 of 3), nprobe {filtered}", "", "",
                     f"{p50:.2f}", f"{p99:.2f}", f"{rec:.3f}"))
        print(f"[bench] {rows[-1]}", file=sys.stderr)
        del index, vec

        if not args.no_flat:
            t0 = time.perf_counter()
            flat = in_memory_index(x, index_type="flat")
            build_s = time.perf_counter() - t0
            nq = min(args.flat_queries, len(queries))
            p50, p99, rec = measure(flat, queries[:nq], exact[:nq], warmup=2)
            mib = index_bytes(flat.vectors) / 2**20
            rows.append((f"{n:,}", "baseline: Flat (exact)", f"{build_s:.1f}", f"{mib:,.0f} MiB",
                         f"{p50:.2f}", f"{p99:.2f}", f"{rec:.3f}"))
            print(f"[bench] {rows[-1]}", file=sys.stderr)
            del flat
        del x

    import faiss

    header = ("catalog", "index", "build s", "index memory", "p50 ms", "p99 ms", "recall@10")
    print(f"Date {dt.date.today().isoformat()}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPU cores; faiss {faiss.__version__}; {args.queries} single queries, k={K}; "
          f"768-d synthetic clustered embeddings.\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
