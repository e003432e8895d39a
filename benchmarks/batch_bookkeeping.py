"""Batch bookkeeping benchmark: `fashion-rag batch` over a 100k-row job table, nothing but its own work.

    python benchmarks/batch_bookkeeping.py --rows 100000 --mode fail ok

A fake ComfyUI on 127.0.0.1 (a tiny http.server in this process, answering the endpoints the
batch uses: /object_info, /upload/image, /prompt, /queue, /interrupt, /history, /view) answers
every prompt at once, so what is timed is the batch's per-row bookkeeping: building the prompt,
checking and (once) uploading the person photo, the HTTP round trips, the row folder (mode ok),
the summary log line, the progress line. Modes: `fail` rejects every prompt as invalid (the row
is recorded failed, the prompt cancelled); `ok` runs it and returns one 8x8 PNG (fetched into
OUT/<id>/ with its marker).

The real CLI runs as a child process (`python -m fashion_rag batch`, stderr not a terminal: one
line per row), and the time each "[i/N]" line arrives is recorded. A batch whose per-row cost
grows with the rows done (a summary rewritten whole after each row) shows it as a larger
"s per 1k rows" at the end than at the start. "ETA at 10%" is what the batch predicted for the
remaining rows when 10% were done, next to the time they then took. --repo runs another checkout
(e.g. an older commit, exported with `git archive`) for comparison.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "person.png"}},
    "2": {"class_type": "BenchEdit", "inputs": {"image": ["1", 0], "text": "a red top", "steps": 1}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bench/result"}},
}
OBJECT_INFO = {
    "LoadImage": {"input": {"required": {"image": [["person.png"], {"image_upload": True}]}}},
    "BenchEdit": {"input": {"required": {"image": ["IMAGE"], "text": ["STRING", {}], "steps": ["INT", {}]}}},
    "SaveImage": {"input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {}]}}},
}


def _png(size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


class FakeComfy(BaseHTTPRequestHandler):
    """ComfyUI's answers, instantly. `server.mode` is "fail" or "ok"."""

    protocol_version = "HTTP/1.0"
    image = _png()

    def log_message(self, *args: object) -> None:  # no line per request
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: object) -> None:
        self._send(status, json.dumps(data).encode())

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/object_info":
            self._json(200, OBJECT_INFO)
        elif self.path.startswith("/history/"):
            pid = self.path.rsplit("/", 1)[1]
            image = {"filename": "result_00001_.png", "subfolder": "bench", "type": "output"}
            self._json(200, {pid: {"status": {"completed": True, "status_str": "success"},
                                   "outputs": {"3": {"images": [image]}}}})
        elif self.path.startswith("/view?"):
            self._send(200, self.image, "image/png")
        else:
            self._json(404, {})

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/prompt":
            if self.server.mode == "fail":
                self._json(400, {"error": {"type": "prompt_outputs_failed_validation", "message": "invalid"},
                                 "node_errors": {"2": {"class_type": "BenchEdit", "errors": [
                                     {"message": "bad", "details": "steps: fails at once (benchmark)"}]}}})
            else:
                pid = json.loads(body).get("prompt_id") or str(uuid.uuid4())
                self._json(200, {"prompt_id": pid, "number": 0, "node_errors": {}})
        elif self.path == "/upload/image":
            name = re.search(rb'filename="([^"]+)"', body).group(1).decode()
            self._json(200, {"name": name, "subfolder": "fashion_rag_batch", "type": "input"})
        else:  # /queue, /interrupt
            self._send(200, b"")


def write_table(folder: Path, rows: int) -> tuple[Path, Path]:
    Image.new("RGB", (384, 512), (120, 130, 140)).save(folder / "person.png")
    workflow = folder / "workflow.json"
    workflow.write_text(json.dumps(WORKFLOW))
    jobs = folder / "jobs.csv"
    with open(jobs, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "steps", "person"])
        w.writerows([f"r{i:06d}", f"garment number {i}", 1 + i % 50, "person.png"] for i in range(rows))
    return workflow, jobs


def run_once(repo: Path, rows: int, mode: str, workdir: Path) -> dict:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeComfy)
    server.mode = mode
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    folder = Path(tempfile.mkdtemp(dir=workdir, prefix=f"batch_{mode}_"))
    try:
        workflow, jobs = write_table(folder, rows)
        cmd = [sys.executable, "-m", "fashion_rag", "batch", "--workflow", str(workflow), "--jobs", str(jobs),
               "--out", str(folder / "out"), "--server", f"http://127.0.0.1:{server.server_port}"]
        env = {**os.environ, "PYTHONPATH": str(repo)}
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=repo, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                env=env)
        stamps: list[float] = []  # when the line of row i+1 arrived
        eta_at_10 = None
        row_line = re.compile(r"^\[(\d+)/(\d+)\] .*\(ETA ([0-9:]+)\)$")
        tail = []
        for line in proc.stderr:
            match = row_line.match(line.rstrip("\n"))
            if match:
                stamps.append(time.monotonic())
                if int(match[1]) == rows // 10:
                    eta_at_10 = match[3]
            else:
                tail.append(line)
        code = proc.wait()
        t_end = time.monotonic()
        if len(stamps) != rows:
            raise RuntimeError(f"{len(stamps)} row lines of {rows}, exit {code}:\n{''.join(tail[-20:])}")
        k = min(1000, rows // 2)
        first = stamps[k - 1] - stamps[0]
        last = stamps[-1] - stamps[-k]
        return {"mode": mode, "rows": rows, "total": t_end - t0, "startup": stamps[0] - t0,
                "first": first * 1000 / (k - 1), "last": last * 1000 / (k - 1), "finish": t_end - stamps[-1],
                "eta_at_10": eta_at_10, "rest_at_10": stamps[-1] - stamps[rows // 10 - 1], "exit": code}
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(folder, ignore_errors=True)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--mode", nargs="+", choices=("fail", "ok"), default=["fail", "ok"])
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose fashion_rag runs")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    print(f"{dt.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, {args.repo}", flush=True)
    print("| mode | rows | total s | start-up s | s per 1k rows, first 1k | s per 1k rows, last 1k "
          "| after the last row s | ETA at 10% / the rest took | exit |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rows in args.rows:
        for mode in args.mode:
            r = run_once(args.repo.resolve(), rows, mode, args.dir)
            print(f"| {r['mode']} | {r['rows']:,} | {r['total']:.1f} | {r['startup']:.1f} | {r['first']:.2f} "
                  f"| {r['last']:.2f} | {r['finish']:.1f} | {r['eta_at_10']} / {_clock(r['rest_at_10'])} "
                  f"| {r['exit']} |", flush=True)


if __name__ == "__main__":
    main()
