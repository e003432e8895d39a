"""Batch on Ray, scaling: rows per minute with 1 and 2 CPU workers, the driver's overhead per row,
and the memory of each worker, on the demo weights (this machine: CPU only).

    python benchmarks/batch_scale.py --rows 24

A local Ray cluster (2 CPUs) is started in this process; `python -m fashion_rag batch --engine ray
--ray-address ...` runs as a child process (as a user runs it) against it, once per worker count,
and once as the local engine (one ComfyUI started by the batch) for comparison. Every run gets a
fresh output folder: no row is resumed.

- rows/min: steady state, from the time each "[i/N]" progress line arrives (first to last row,
  so the workers' ComfyUI start-up is left out; it is reported on its own);
- driver overhead per row: the row's seconds as the driver records them (prompt built and image
  checked, task sent, result back, images written into OUT/<id>/) minus the seconds ComfyUI
  itself reports for the prompt ("Prompt executed in" in the worker's log): transport, upload,
  fetching and the driver's bookkeeping;
- worker memory: the largest RSS seen (sampled every 0.25 s) of each Ray worker process and of
  the ComfyUI it started.

The workflow is the batch tests' (index retrieval + garment mask, two SaveImage outputs; no
diffusion), so a row takes about a second: the engine's own costs show, not the UNet's.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import ray  # noqa: E402
from PIL import Image  # noqa: E402
from test_batch import batch_workflow  # noqa: E402

from fashion_rag.cli.batch_report import read_summary  # noqa: E402
from tools.demo.person import draw_person, install_demo_person  # noqa: E402
from tools.demo.weights import install_demo_models  # noqa: E402
from tools.harness import comfy_path, make_base_dir  # noqa: E402

ROW_LINE = re.compile(r"^\[(\d+)/(\d+)\] ")
FP32 = "--comfyui-args=--fp32-text-enc --fp32-vae --fp32-unet"


def _rss_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


class MemorySampler(threading.Thread):
    """Largest RSS of every Ray batch worker and every ComfyUI (main.py) child of one."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak: dict[tuple[str, int], int] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.25):
            procs = {}
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    try:
                        raw = Path(entry.path, "cmdline").read_bytes()
                        cmd = raw.replace(b"\0", b" ").decode(errors="replace")
                        ppid = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
                    except (OSError, ValueError, IndexError):
                        continue
                    procs[int(entry.name)] = (ppid, cmd)
            workers = {pid for pid, (_, cmd) in procs.items() if cmd.startswith("ray::BatchWorker")}
            for pid, (ppid, cmd) in procs.items():
                comfyui = ppid in workers and "main.py" in cmd
                kind = "worker" if pid in workers else "comfyui" if comfyui else None
                if kind:
                    self.peak[(kind, pid)] = max(self.peak.get((kind, pid), 0), _rss_of(pid))


def run_batch(argv: list[str], rows: int) -> dict:
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "fashion_rag", "batch", *argv], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stamps, lines = [], []
    for line in proc.stderr:
        lines.append(line)
        if ROW_LINE.match(line):
            stamps.append(time.monotonic())
    rc = proc.wait()
    total = time.monotonic() - t0
    if rc != 0 or len(stamps) != rows:
        raise SystemExit(f"batch failed ({rc}, {len(stamps)} rows):\n{''.join(lines)[-3000:]}")
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) * 60
    return {"total": total, "startup": stamps[0] - t0, "rows_per_min": steady}


def executed_seconds(logs: list[Path]) -> list[float]:
    found = []
    for log in logs:
        found += [float(s) for s in re.findall(r"Prompt executed in ([0-9.]+) seconds", log.read_text())]
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=24)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    os.environ.setdefault("COMFYUI_PATH", str(comfy_path()))
    with tempfile.TemporaryDirectory(prefix="batch_scale_") as tmp:
        tmp = Path(tmp)
        base = make_base_dir(tmp / "base")
        install_demo_models(base / "models")
        install_demo_person(base / "input")
        table = tmp / "table"
        (table / "people").mkdir(parents=True)
        draw_person().save(table / "people" / "p1.png")
        draw_person().transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(table / "people" / "p2.png")
        (table / "workflow.json").write_text(json.dumps(batch_workflow()))
        cats = ("upper_body", "lower_body", "dresses")
        lines = ["id,text,k,category,person"] + [
            f"r{i},garment number {i},3,{cats[i % 3]},people/p{1 + i % 2}.png" for i in range(args.rows)]
        (table / "jobs.csv").write_text("\n".join(lines) + "\n")
        common = ["--workflow", str(table / "workflow.json"), "--jobs", str(table / "jobs.csv"),
                  "--comfyui", str(comfy_path()), "--base", str(base), "--device", "cpu", FP32]

        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20,
                 _temp_dir=str(tmp / "ray"), logging_level="ERROR", configure_logging=False)
        address = ray.get_runtime_context().gcs_address
        results = []
        try:
            out = tmp / "out-local"
            r = run_batch([*common, "--out", str(out)], args.rows)
            seconds = [rec.seconds or 0 for rec in read_summary(out / "summary.csv").values()]
            ran = executed_seconds([out / "comfyui.log"])
            results.append(("local (1 ComfyUI)", r, seconds, ran, None))
            for n in args.workers:
                out = tmp / f"out-ray-{n}"
                sampler = MemorySampler()
                sampler.start()
                r = run_batch([*common, "--out", str(out), "--engine", "ray", "--ray-address", address,
                               "--workers", str(n)], args.rows)
                sampler.done.set()
                sampler.join()
                seconds = [rec.seconds or 0 for rec in read_summary(out / "summary.csv").values()]
                ran = executed_seconds(sorted((out / "comfyui-workers").glob("*.log")))
                results.append((f"ray, {n} CPU worker{'s' * (n > 1)}", r, seconds, ran, sampler.peak))
        finally:
            ray.shutdown()

    print(f"### Batch on Ray, scaling ({dt.date.today()}, {platform.node()}, {os.cpu_count()} CPUs, "
          f"{args.rows} rows, demo weights, retrieval + mask workflow)\n")
    print("| engine | rows/min (steady) | start-up s | total s | row s on the driver (mean) | "
          "ComfyUI s per prompt (mean) | driver overhead per row s | peak RSS per worker: Ray actor / "
          "its ComfyUI MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r, seconds, ran, peak in results:
        mean_row = sum(seconds) / len(seconds)
        mean_ran = sum(ran) / len(ran) if ran else float("nan")
        if peak:
            actors = [v for (k, _), v in peak.items() if k == "worker"]
            comfy = [v for (k, _), v in peak.items() if k == "comfyui"]
            mem = (f"{', '.join(f'{v / 2**20:.0f}' for v in actors)} / "
                   f"{', '.join(f'{v / 2**20:.0f}' for v in comfy)}")
        else:
            mem = "n/a"
        print(f"| {name} | {r['rows_per_min']:.1f} | {r['startup']:.1f} | {r['total']:.1f} | "
              f"{mean_row:.2f} | {mean_ran:.2f} | {mean_row - mean_ran:.2f} | {mem} |")


if __name__ == "__main__":
    main()
