"""`fashion-rag batch --workflow API.json --jobs jobs.csv`: one workflow run per CSV row, unattended.

Each row sets inputs of the workflow (columns: see `fashion_rag.cli.batch_jobs` or the README,
"Batch runs") and runs through a ComfyUI server: --server URL, or one started for the run. Every
image its SaveImage/PreviewImage nodes produce is fetched into OUT/<row id>/; OUT/summary.csv
records each row (id, status ok/failed/skipped, seconds, outputs, error, scores). Running the
same command again skips the rows that finished ok. A folder OUT/<row id> that batch did not make
is never replaced: that row fails. Image cells are uploaded only if they are images inside the job
table's folder (--allow-outside: anywhere). Ctrl-C stops after the current row (twice: at once).
Exit status: 0 every row ok, 1 some row failed, 2 a bad workflow or job table (nothing ran) or no
usable server, 130 stopped by Ctrl-C. --engine ray: the rows run on Ray workers, each with its own
ComfyUI, with the same bookkeeping here (docs/batch-on-ray.md).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import urllib.error
import uuid
from pathlib import Path
from typing import Any

from . import batch_jobs
from .batch_files import ImageUploads, cell_path
from .batch_jobs import Job, JobError, JobTable, Target, build_prompt, load_workflow, read_jobs
from .batch_outputs import RowFolderError, check_row_folder, save_outputs, sweep_partials
from .batch_report import (
    FAILED,
    OK,
    SKIPPED,
    SUMMARY_LOG,
    SUMMARY_NAME,
    Progress,
    Record,
    SummaryLog,
    one_line,
    read_summary,
)
from .batch_server import ServerSetupError, default_comfyui, describe, no_comfyui, start_server
from .comfy_server import ComfyClient, ComfyServer, PromptFailed

UPLOAD_SUBFOLDER = "fashion_rag_batch"
# Fallback when /object_info does not flag an input as an upload (older servers).
_FILE_INPUTS = {("LoadImage", "image"), ("LoadImageMask", "image")}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="run an API workflow once per row of a CSV job table",
                       description=__doc__, epilog=batch_jobs.__doc__.split("\n\n", 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workflow", required=True, type=Path, help="API-format workflow JSON (Export (API))")
    p.add_argument("--jobs", required=True, type=Path,
                   help="CSV job table: a header row, one row per run; relative file paths in it are "
                        "relative to its folder")
    p.add_argument("--out", type=Path, help="output folder: OUT/<id>/ per row and OUT/summary.csv "
                   "(default: <jobs>_out beside the job table)")
    p.add_argument("--server", help="URL of a running ComfyUI (with this pack) to use, e.g. "
                   "http://127.0.0.1:8188; default: start one for the run")
    p.add_argument("--comfyui", type=Path, help="ComfyUI folder to start (default: the ComfyUI this pack "
                   "is installed in, else $COMFYUI_PATH); with --engine ray, the folder on every worker node")
    p.add_argument("--base", type=Path, help="ComfyUI base directory (models/, input/, output/, "
                   "custom_nodes/) for the started server (default: the --comfyui folder itself); any "
                   "other folder gets this pack linked into its custom_nodes/")
    p.add_argument("--python", default=sys.executable,
                   help="Python that runs ComfyUI's main.py (default: this one)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="started server: auto passes --cpu to ComfyUI only when torch sees no GPU")
    p.add_argument("--comfyui-args", default="", help="extra arguments for ComfyUI's main.py, one string "
                   "(e.g. \"--lowvram\")")
    p.add_argument("--timeout", type=float, default=3600, help="seconds one row may run (default 3600)")
    add_engine_arguments(p)
    p.add_argument("--allow-outside", action="store_true",
                   help="upload image cells naming files outside the job table's folder too (default: "
                        "such a row fails, so a job table cannot send /etc/passwd or ~/.ssh to a server)")
    p.set_defaults(func=run)


def add_engine_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--engine and the Ray options (`fashion-rag evaluate` passes them on to batch)."""
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: one ComfyUI (--server or started here); ray: Ray actors on a cluster, each "
                        "starting its own ComfyUI (docs/batch-on-ray.md)")
    p.add_argument("--ray-address", default=None,
                   help="--engine ray: the cluster (auto, ray://head:10001); default: a local Ray")
    p.add_argument("--workers", type=int, default=None,
                   help="--engine ray: ComfyUI workers (default: one per GPU of the cluster, else 1)")
    p.add_argument("--gpus-per-worker", type=float, default=None,
                   help="--engine ray: GPUs each worker holds (default 1 where the cluster has GPUs, else 0)")
    p.add_argument("--start-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="--engine ray: stop with a message when no worker has started within this time "
                        "(a cluster without the CPUs/GPUs a worker asks for would otherwise wait forever; "
                        "an autoscaling cluster may need longer; default 600)")


class _StopOnInterrupt:
    """First Ctrl-C: finish the current row, then stop. Second: abort now (KeyboardInterrupt)."""

    def __init__(self, tty: bool, running: str = "the current row") -> None:
        self.requested = False
        self.finishing = False  # the rows are done: only the summary is left to write
        self.tty = tty
        self.running = running  # what is left to finish: one row locally, one per worker on Ray

    def __enter__(self) -> _StopOnInterrupt:
        self._old = signal.getsignal(signal.SIGINT)
        if self._old is not signal.SIG_IGN:  # started with Ctrl-C ignored (nohup, `&`): keep it so
            signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, self._old)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and self.finishing:
            # Nothing is left to abort: the summary (one atomic write) is all that remains.
            os.write(2, b"batch: aborted; writing the summary of the rows run\n")
            return
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        # os.write, not print: the handler may interrupt a print to the same buffered stream.
        os.write(2, ("\r\x1b[K" if self.tty else "").encode()
                 + f"batch: stopping after {self.running} (Ctrl-C again to abort now)\n".encode())


def run(args: argparse.Namespace) -> int:
    def err(message: str) -> None:
        print(f"batch: {message}", file=sys.stderr, flush=True)

    try:
        workflow = load_workflow(args.workflow)
        table = read_jobs(args.jobs, workflow)
    except JobError as exc:
        err(str(exc))
        return 2
    out: Path = args.out or args.jobs.with_name(f"{args.jobs.stem}_out")
    summary_path = out / SUMMARY_NAME
    previous = read_summary(summary_path)  # with the log of a killed run
    records = {job.id: _resumed(previous.get(job.id), job, out) for job in table.jobs}
    todo = [job for job in table.jobs if records[job.id].status != OK]
    if len(todo) < len(table.jobs):
        err(f"{len(table.jobs) - len(todo)} of {len(table.jobs)} rows already done ({summary_path}): "
            "not run again")
    book = SummaryLog(summary_path)
    try:
        sweep_partials(out)
        # Every row listed from the start; a killed run's log folded in.
        book.compact(list(records.values()))
    except OSError as exc:
        err(f"cannot write the summary in {out}: {exc}")
        return 2
    if not todo:
        return _exit_code(records, False)
    if args.engine == "ray" and args.server:
        err("--server is for --engine local: Ray workers start their own ComfyUI")
        return 2
    progress = Progress(len(todo))

    def finished(record: Record) -> None:
        """The one place a finished row is recorded (both engines)."""
        records[record.id] = record
        book.append(record)
        progress.finish_row(record)

    running = "the rows the workers are running" if args.engine == "ray" else "the current row"
    with _StopOnInterrupt(progress.tty, running) as stop:
        try:
            if args.engine == "ray":
                from .batch_ray import run_on_ray  # Ray is imported only here

                run_on_ray(args, workflow, table, out, todo, progress, finished, stop)
            else:
                _run_local(args, workflow, table, out, todo, progress, finished, stop)
        except (JobError, ServerSetupError, OSError, RuntimeError) as exc:
            # Setup failures and a lost server: the rows run so far stay recorded.
            progress.note(f"batch: {one_line(exc, 2000)}")
            _compact(book, records, err)
            return 2
        except KeyboardInterrupt:
            progress.note("batch: aborted; the current row was dropped")
            stop.requested = True
        finally:
            progress.close()
        # The handler stays in place for the wrap-up: a second Ctrl-C arriving now (the first came
        # between rows) must not kill the process before the summary is written.
        stop.finishing = True
        if stop.requested:
            for job in todo:
                if records[job.id].status == SKIPPED:
                    records[job.id].error = "not run: stopped by Ctrl-C"
        if not _compact(book, records, err):
            return 2
        counts = {s: sum(r.status == s for r in records.values()) for s in (OK, FAILED, SKIPPED)}
        err(f"{counts[OK]} ok, {counts[FAILED]} failed, {counts[SKIPPED]} skipped; summary {summary_path}")
        return _exit_code(records, stop.requested)


def _compact(book: SummaryLog, records: dict[str, Record], err: Any) -> bool:
    try:
        book.compact(list(records.values()))
    except OSError as exc:
        err(f"cannot write {book.csv_path} ({exc}); the rows run are in {SUMMARY_LOG} beside it and "
            "the next run reads them")
        return False
    return True


def _exit_code(records: dict[str, Record], interrupted: bool) -> int:
    if interrupted:
        return 130
    return 1 if any(r.status != OK for r in records.values()) else 0


def _resumed(old: Record | None, job: Job, out: Path) -> Record:
    """The earlier record counts as done only if it ran these very inputs and its files are there."""
    done = old and old.status == OK and old.digest == job.digest
    if done and all((out / o).is_file() for o in old.outputs):
        return old
    if old and old.status == FAILED:
        return old  # shown as failed until it is run again
    return Record(job.id, digest=job.digest)


def _run_local(args: argparse.Namespace, workflow: dict[str, dict], table: JobTable, out: Path,
               todo: list[Job], progress: Progress, finished: Any, stop: _StopOnInterrupt) -> None:
    """One ComfyUI (--server, or started for the run), one row at a time."""
    server: ComfyServer | None = None
    try:
        if args.server:
            client = ComfyClient(args.server)
        else:
            client = server = _start(args, out, progress.note)
        file_inputs = check_server(client, workflow)
        uploads = ImageUploads(table.path.parent, args.allow_outside,
                               lambda data, name: client.upload_bytes(data, name, UPLOAD_SUBFOLDER))
        runner = RowRunner(workflow, table, out, args.timeout, file_inputs, uploads)
        runner.server = f"the ComfyUI server at {client.url}"
        for job in todo:
            if stop.requested:
                break
            progress.start_row(job.id)
            finished(runner.run(job, lambda prompt, job=job: (
                execute(client, prompt, job.id, table.path, args.timeout, progress.draw), client)))
    finally:
        if server is not None:
            server.stop()


def _start(args: argparse.Namespace, out: Path, say: Any) -> ComfyServer:
    comfyui = args.comfyui or default_comfyui()
    if comfyui is None:
        raise no_comfyui()
    server = start_server(comfyui, args.base or comfyui, args.python, args.device, args.comfyui_args,
                          out / "comfyui.log")
    say(f"batch: starting ComfyUI {comfyui} ({describe(server)})")
    t0 = time.monotonic()
    try:
        server.wait_ready(timeout=600)
    except (RuntimeError, TimeoutError) as exc:
        server.stop()
        raise ServerSetupError(f"ComfyUI did not start: {one_line(exc, 1500)}") from exc
    say(f"batch: ComfyUI ready in {time.monotonic() - t0:.0f}s at {server.url}")
    return server


def check_server(client: ComfyClient, workflow: dict[str, dict]) -> set[Target]:
    """Every node type of the workflow exists on the server; returns the file-upload inputs."""
    try:
        info = client.get("/object_info")
    except (urllib.error.URLError, OSError) as exc:
        raise ServerSetupError(f"no ComfyUI answers at {client.url}: {exc}") from exc
    missing = sorted({f"{n['class_type']} (node {nid})" for nid, n in workflow.items()
                      if n["class_type"] not in info})
    if missing:
        raise ServerSetupError(f"the server at {client.url} lacks node types of the workflow: "
                               f"{', '.join(missing)} (pack not installed or failed to import?)")
    files = set()
    for nid, node in workflow.items():
        spec = info[node["class_type"]].get("input", {})
        for name in node.get("inputs", {}):
            declared = spec.get("required", {}).get(name) or spec.get("optional", {}).get(name) or []
            options = declared[1] if len(declared) > 1 and isinstance(declared[1], dict) else {}
            if options.get("image_upload") or (node["class_type"], name) in _FILE_INPUTS:
                files.add((nid, name))
    return files


def execute(client: ComfyClient, prompt: dict, job_id: str, jobs: Path, timeout: float,
            on_wait: Any = None) -> dict:
    """Run one row's prompt on a server; its history entry. A prompt that failed validation, ran
    out of time or was interrupted is taken off the server (where a Ray worker runs it, too)."""
    pid = str(uuid.uuid4())
    # The row id in the server's history says which row a prompt was (and lets tests count).
    tag = {"fashion_rag_batch": {"row": job_id, "jobs": str(jobs)}}
    try:
        return client.run(prompt, timeout=timeout, prompt_id=pid, on_wait=on_wait, extra_data=tag)
    except PromptFailed as exc:
        if exc.kind == "validation":
            # ComfyUI queues the outputs that did validate (200 + node_errors): don't run them.
            client.cancel(pid)
        raise
    except (TimeoutError, KeyboardInterrupt):
        client.cancel(pid)  # or every later row queues behind it
        raise


class RowRunner:
    """A row's prompt from its cells (uploading its images), and its record from what the server
    returned: the driver's side of a row, the same for both engines."""

    def __init__(self, workflow: dict[str, dict], table: JobTable, out: Path, timeout: float,
                 file_inputs: set[Target], uploads: ImageUploads) -> None:
        self.workflow, self.table, self.out = workflow, table, out
        self.timeout, self.file_inputs, self.uploads = timeout, file_inputs, uploads
        self.not_local: dict[str, list[str]] = {}  # row id -> file cells naming nothing local
        self.server = "the ComfyUI server"  # for the message when it is lost

    def file_value(self, job_id: str, target: Target, value: str) -> str:
        """Anything at a local path (relative to the job table) is a local file: uploaded if it
        passes ImageUploads' checks, else the row fails; a cell naming nothing local is taken as a
        file already in the server's input folder (ComfyUI checks it)."""
        if target not in self.file_inputs:
            return value
        path = cell_path(value, self.table.path.parent)
        if path is None or not os.path.lexists(path):  # lexists: a dangling or hostile link is local
            self.not_local.setdefault(job_id, []).append(str(path or value))
            return value
        return self.uploads.server_name(path)

    def prompt(self, job: Job) -> dict[str, dict]:
        """JobError, RowFolderError: the row fails before the server spends time on it."""
        self.not_local[job.id] = []
        check_row_folder(self.out, job.id)
        return build_prompt(self.workflow, self.table, job,
                            lambda target, value: self.file_value(job.id, target, value))

    def run(self, job: Job, execute: Any) -> Record:
        """execute(prompt) -> (history entry, something with .view(image) -> bytes)."""
        t0 = time.monotonic()
        return self.record(job, t0, lambda: execute(self.prompt(job)))

    def record(self, job: Job, t0: float, result: Any) -> Record:
        """The row's record from result() -> (history entry, viewer), which raises as execute() does."""
        record = Record(job.id, FAILED, digest=job.digest)
        try:
            entry, viewer = result()
            record.outputs, record.scores = save_outputs(viewer, self.workflow, entry, self.out, job.id)
            record.status = OK
        except PromptFailed as exc:
            record.error = one_line(_prompt_error(exc) + "".join(
                f" (no local file {p} either)" for p in self.not_local.get(job.id, [])))
        except (JobError, RowFolderError) as exc:
            record.error = one_line(exc)
        except TimeoutError:
            record.error = f"did not finish in {self.timeout:.0f}s (cancelled)"
        except urllib.error.HTTPError as exc:  # e.g. an upload refused
            record.error = one_line(f"HTTP {exc.code} from {exc.url}: {exc.reason}")
        except (urllib.error.URLError, ConnectionError) as exc:
            raise RuntimeError(f"lost {self.server}: {exc}") from exc
        finally:
            self.not_local.pop(job.id, None)
        record.seconds = time.monotonic() - t0
        return record


def _prompt_error(exc: PromptFailed) -> str:
    """ComfyUI's error payloads as one readable line: which node, what went wrong."""
    payload = exc.payload or {}
    if exc.kind == "validation":
        parts = []
        for nid, ne in (payload.get("node_errors") or {}).items():
            for e in ne.get("errors", []):
                what = e.get("details") or e.get("message")
                parts.append(f"{ne.get('class_type', '?')} (node {nid}): {what}")
        if not parts:
            e = payload.get("error") or {}
            parts.append(f"{e.get('message', 'invalid prompt')}: {e.get('details', '')}".rstrip(": "))
        return "invalid: " + "; ".join(parts)
    for name, data in payload.get("messages", []):
        if name == "execution_error":
            return (f"{data.get('node_type', '?')} (node {data.get('node_id', '?')}) failed: "
                    f"{data.get('exception_type', '')}: {data.get('exception_message', '')}")
        if name == "execution_interrupted":
            return "interrupted on the server"
    return f"failed: {payload.get('status_str', 'unknown error')}"
