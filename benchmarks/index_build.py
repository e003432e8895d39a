"""Index build benchmark: the vector-index part of a build, 1M to 10M synthetic 768-d embeddings.

    flock /tmp/fr-bigmem.lock python benchmarks/index_build.py --sizes 1000000 10000000 --dir /big/disk

Each size runs in a child process of its own (its peak memory is its own) and does what the
build's last step does (fashion_rag/retrieval/build/__init__.py, write_index), on benchmarks/retrieval.py's
synthetic CLIP-like embeddings in 3 categories:
1. write embeddings.npy with the build's streaming writer (hashed while written; the
   time to generate the synthetic rows is measured apart and left out): n x 768 float32, 30.7 GB
   at 10M, never held in memory;
2. memory-map it and build the per-category vector indexes (ann.write_vector_parts: one
   part at a time, IVF trained on a sample of 32 vectors per list, vectors added in blocks, nprobe
   tuned with one exact pass over the part), writing each .faiss file;
3. sha256 of the .faiss files, as publishing does.
Peak memory is sampled from /proc/self/status: RssAnon is the memory the build needs; VmRSS adds
the file pages of the memory-mapped embeddings, which the kernel drops whenever memory is short.
Needs n x 3.8 kB of free disk under --dir (38 GB at 10M); everything is deleted afterwards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from retrieval import DIM, Synthetic  # noqa: E402

from fashion_rag.files import sha256_file  # noqa: E402
from fashion_rag.retrieval.ann import write_vector_parts  # noqa: E402
from fashion_rag.retrieval.ondisk import (
    map_embeddings,  # noqa: E402
    write_embeddings_file,  # noqa: E402
)

GIB = 2**30


class PeakMemory:
    """Peak RssAnon / VmRSS of this process since the last reset (sampled every 50 ms)."""

    def __init__(self) -> None:
        self.peak = {"RssAnon": 0, "VmRSS": 0}
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.sample()

    def sample(self) -> None:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], int(value.split()[0]) * 1024)

    def reset(self) -> dict[str, int]:
        self.sample()
        peak, self.peak = self.peak, {"RssAnon": 0, "VmRSS": 0}
        return peak


def one_size(n: int, folder: Path) -> dict:
    mem = PeakMemory()
    baseline = mem.reset()["RssAnon"]  # this process before any data: Python, numpy, torch, faiss
    chunks = Synthetic(n, seed=0).chunks()
    cats: list[str] = []
    names = ["0", "1", "2"]
    generating = [0.0]

    def blocks():
        while True:
            t0 = time.perf_counter()
            chunk = next(chunks, None)
            generating[0] += time.perf_counter() - t0
            if chunk is None:
                return
            cats.extend(names[c] for c in chunk[1])
            yield chunk[0]

    t0 = time.perf_counter()
    write_embeddings_file(folder / "embeddings.npy", n, DIM, blocks())
    write_s = time.perf_counter() - t0 - generating[0]  # (the exhausted generator freed its centres)
    mem.reset()

    marks: list[tuple[float, str]] = []
    emb = map_embeddings(folder / "embeddings.npy", n, DIM)
    t0 = time.perf_counter()
    record = write_vector_parts(emb, cats, folder, log_fn=lambda m: marks.append((time.perf_counter(), m)))
    vectors_s = time.perf_counter() - t0
    peak = mem.reset()
    steps = {"training": 0.0, "adding": 0.0, "tuning": 0.0}
    for (t, msg), (t_next, _) in zip(marks, marks[1:] + [(t0 + vectors_s, "")], strict=True):
        for step in steps:
            if msg.startswith(step):
                steps[step] += t_next - t
    t0 = time.perf_counter()
    files = [folder / p.file for p in record.parts if p.file]
    for f in files:
        sha256_file(f)
    return {
        "n": n, "generate_s": generating[0], "write_embeddings_s": write_s, "vectors_s": vectors_s,
        "train_s": steps["training"], "add_s": steps["adding"], "tune_s": steps["tuning"],
        "hash_faiss_s": time.perf_counter() - t0, "peak_anon": peak["RssAnon"], "peak_rss": peak["VmRSS"],
        "baseline_anon": baseline, "load_avg_1m": os.getloadavg()[0],
        "embeddings_bytes": (folder / "embeddings.npy").stat().st_size,
        "faiss_bytes": sum(f.stat().st_size for f in files),
        "parts": [f"{p.factory} x{p.count:,} nprobe {p.nprobe}/{p.nprobe_filtered} "
                  f"recall {(p.tuned_recall_at_10 or {}).get('garment_queries', 0):.3f}"
                  for p in record.parts],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 2_000_000, 5_000_000, 10_000_000])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where to write the embeddings and indexes (needs n x 3.8 kB free)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process of one size
    args = parser.parse_args()
    if args.one:
        folder = Path(tempfile.mkdtemp(prefix="fr-index-bench-", dir=args.dir))
        try:
            print(json.dumps(one_size(args.one, folder)), flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return 0

    rows = []
    for n in args.sizes:
        need = n * DIM * 5 * 1.05  # float32 embeddings + SQ8 codes, and a margin
        free = shutil.disk_usage(args.dir).free
        if free < need:
            print(f"[bench] {n:,}: skipped, needs {need / 1e9:.0f} GB free in {args.dir}, "
                  f"has {free / 1e9:.0f}", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, __file__, "--one", str(n), "--dir", str(args.dir)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"[bench] {n:,} failed:\n{r.stderr[-3000:]}", file=sys.stderr)
            continue
        res = json.loads(r.stdout.splitlines()[-1])
        print(f"[bench] {n:,} done in {time.perf_counter() - t0:.0f} s: {json.dumps(res)}", file=sys.stderr,
              flush=True)
        rows.append(res)

    import faiss

    print(f"Date {dt.date.today().isoformat()}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPU cores; faiss {faiss.__version__}; 768-d synthetic embeddings, "
          f"3 categories.\n")
    header = ("garments", "vector parts", "write embeddings s", "vector indexes s (train / add / tune)",
              "hash .faiss s", "peak RssAnon (baseline)", "peak VmRSS", "files", "load avg")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print(f"| {r['n']:,} | {'<br>'.join(r['parts'])} | {r['write_embeddings_s']:.0f} | "
              f"{r['vectors_s']:.0f} ({r['train_s']:.0f} / {r['add_s']:.0f} / {r['tune_s']:.0f}) | "
              f"{r['hash_faiss_s']:.0f} | {r['peak_anon'] / GIB:.2f} GiB ({r['baseline_anon'] / GIB:.2f}) | "
              f"{r['peak_rss'] / GIB:.2f} GiB | {r['embeddings_bytes'] / 1e9:.1f} GB + "
              f"{r['faiss_bytes'] / 1e9:.1f} GB | {r['load_avg_1m']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
