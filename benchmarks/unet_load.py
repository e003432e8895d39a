"""Load time of the Fashion-RAG UNet: the reference's `.pth` vs its `convert-unet` fp16 safetensors.

    python benchmarks/unet_load.py            # full size (866M parameters; ~7 GB RAM at peak)
    python benchmarks/unet_load.py --smoke    # a tiny UNet: checks the script

Uses the random full-size `.pth` of benchmarks/memory_models.py (diffusers keys, fp32, 3.5 GB),
converts it once with `python -m fashion_rag convert-unet` (timed: the one-time cost), then loads
each file with the pack's loader (FashionRAGUNetLoader's load_unet) in a fresh ComfyUI process per
row (--smoke: every row in one process), as fp32 (the CPU's dtype) and as fp16 (a GPU's default),
the file read once before so it is in the page cache (the cold read from disk scales with the
file's size: half for the fp16 file).
Prints seconds, and the process's peak and kept memory over what it held before the load.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from memory_common import GiB  # noqa: E402
from memory_models import FULL_SIZES, SMOKE_SIZES, files_for, generate  # noqa: E402

from tools.harness import comfy_path  # noqa: E402

# argv: repo, base, then (file, dtype) pairs: one JSON line per pair, each load from a clean slate
# (the previous model released, VmHWM reset).
_LOAD = r"""
import gc, json, sys, time
from pathlib import Path
repo = Path(sys.argv[1])
sys.path[:0] = [str(repo), str(repo / "tests"), str(repo / "benchmarks")]
from comfy_harness import InProcessComfy
from memory_common import proc_memory
InProcessComfy.get(Path(sys.argv[2]))
loader = [m for n, m in sys.modules.items() if n.endswith("nodes.unet_loader")][0]
rows = sys.argv[3:]
for path, dtype in zip(rows[::2], rows[1::2]):
    with open(path, "rb") as f:  # into the page cache: the row times the load, not the disk
        while f.read(1 << 24):
            pass
    loader._UNETS.clear()
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
    before = proc_memory()
    start = time.perf_counter()
    patcher = loader.load_unet(path, dtype)
    seconds = time.perf_counter() - start
    gc.collect()
    after = proc_memory()
    print(json.dumps({"seconds": seconds, "peak": after["VmHWM"] - before["VmRSS"],
                      "kept": after["VmRSS"] - before["VmRSS"]}), flush=True)
    del patcher
"""


def load_rows(rows: list[tuple[Path, str]], base: Path) -> list[dict]:
    """The figures of each (file, dtype) load, all in one fresh ComfyUI process."""
    args = [str(v) for row in rows for v in row]
    out = subprocess.run([sys.executable, "-c", _LOAD, str(HERE.parent), str(base), *args],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return [json.loads(line) for line in out.stdout.strip().splitlines()[-len(rows):]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--base", type=Path, default=None, help="ComfyUI base folder (default: a temp one)")
    a = p.parse_args(argv)
    import tempfile

    sys.path.insert(0, str(comfy_path()))
    files = generate(SMOKE_SIZES if a.smoke else FULL_SIZES,
                     files_for(SMOKE_SIZES if a.smoke else FULL_SIZES, a.cache))
    converted = files.root / "convert_timing" / files.unet_fp16.name
    converted.parent.mkdir(exist_ok=True)
    converted.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fashion_rag", "convert-unet", str(files.unet), str(converted)],
                   check=True, cwd=HERE.parent, capture_output=True)
    convert_s = time.perf_counter() - start
    base = a.base or Path(tempfile.mkdtemp(prefix="fashion_rag_unet_load_"))
    rows = ["| file | size | weights as | load (s) | peak over before | kept |", "|---|---|---|---|---|---|"]
    loads = [(path, dtype) for path in (files.unet, converted)
             for dtype in (("fp32",) if a.smoke else ("fp32", "fp16"))]
    # A fresh process per row at full size (nothing an earlier load left behind in its figures);
    # --smoke checks the script with every row in one process (a ComfyUI start per row costs more).
    figures = load_rows(loads, base) if a.smoke else [load_rows([row], base)[0] for row in loads]
    for (path, dtype), r in zip(loads, figures, strict=True):
        rows.append(f"| {path.name} | {path.stat().st_size / GiB:.2f} GiB | {dtype} | {r['seconds']:.1f} "
                    f"| {r['peak'] / GiB:.2f} GiB | {r['kept'] / GiB:.2f} GiB |")
    print(f"convert-unet (once): {convert_s:.1f} s")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
