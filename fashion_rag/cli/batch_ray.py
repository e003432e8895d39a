"""`fashion-rag batch --engine ray`: the rows of a job table on Ray actors, each with its own ComfyUI.

The driver (the machine running the command) keeps everything the local batch keeps, with the
same code (batch.run, RowRunner): the job table, the resume rule, the summary and its log, the
row folders OUT/<id>/, the progress bar, Ctrl-C, the exit codes. What moves to the workers is
only the server side of a row (batch.execute):

- a worker (BatchWorker, one Ray actor, `--gpus-per-worker` GPUs: Ray pins it to them through
  CUDA_VISIBLE_DEVICES, which its ComfyUI inherits) starts one ComfyUI on its node, with an output
  and temp folder of its own, loads the models on its first row and keeps them, and takes rows
  until none are left;
- a row travels as its finished prompt plus its person images (checked and re-encoded as PNG on
  the driver, exactly as the local batch uploads them, and put in Ray's object store once; a
  worker fetches and uploads each one once); the images the row produced come back as bytes and
  the driver writes them into OUT/<id>/.

Faults: a worker that dies mid-row (OOM kill, node lost, SIGKILL) is replaced by a new one and
its row goes back to the front of the queue, for any worker: at most RETRIES times, then the row
is recorded failed with the cause. A worker whose ComfyUI cannot start is reported once and
dropped; the others go on (no worker at all: exit 2). A killed driver takes its actors with it
(Ray ends the actors of a dead driver; their ComfyUI ends with them, die_with_parent) and the
rerun resumes from the summary like the local batch.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..logs import error_line
from .batch_files import ImageUploads
from .batch_jobs import Job, JobError, JobTable
from .batch_outputs import RowFolderError, output_images
from .batch_report import FAILED, Progress, Record, one_line
from .batch_server import ServerSetupError, default_comfyui, no_comfyui, start_server
from .comfy_server import ComfyServer, PromptFailed

RETRIES = 3  # runs of a row after the first whose worker died
WORKER_LOGS = "comfyui-workers"  # OUT/comfyui-workers/worker-<n>.log: each worker's ComfyUI log
LOG_BYTES = 4 << 20  # the end of a worker's log that comes back to the driver


class RayUnavailableError(ServerSetupError):
    """Ray is not installed (it is an optional dependency)."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailableError(f"--engine ray needs Ray, which is not installed ({exc}): pip install "
                                  "\"fashion-rag[ray]\", or run with the default --engine local") from None
    return ray


def _image_key(image: dict) -> tuple[str, str, str]:
    return (image["filename"], image.get("subfolder", ""), image.get("type", "output"))


class BatchWorker:
    """One ComfyUI on this node, run row after row (wrapped by ray.remote in run_on_ray)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.server: ComfyServer | None = None
        self.scratch: Path | None = None
        self.uploaded: set[str] = set()

    def start(self) -> dict[str, Any]:
        """Start ComfyUI; {"node", "pid", "file_inputs"} or {"error": why it cannot start}."""
        from .batch import check_server

        c = self.config
        try:
            comfyui = Path(c["comfyui"]) if c["comfyui"] else default_comfyui()
            if comfyui is None:
                raise no_comfyui()
            # Outputs and temp files of its own: servers sharing a base would race for file names.
            self.scratch = Path(tempfile.mkdtemp(prefix="fashion-rag-batch-worker-"))
            device = c["device"]
            if device == "auto":
                device = "gpu" if c["gpus"] else "cpu"
            base = Path(c["base"]) if c["base"] else comfyui
            self.server = start_server(
                comfyui, base, c["python"] or sys.executable, device, c["comfyui_args"],
                self.scratch / "comfyui.log", die_with_parent=True,
                server_args=("--output-directory", str(self.scratch / "output"),
                             "--temp-directory", str(self.scratch / "temp")))
            self.server.wait_ready(timeout=600)
            files = check_server(self.server, c["workflow"])
        except (ServerSetupError, OSError, RuntimeError, TimeoutError, ValueError) as exc:
            error = one_line(exc, 1500)
            self.stop()
            return {"error": error}
        return {"node": socket.gethostname(), "pid": os.getpid(), "file_inputs": sorted(files)}

    def run_row(self, job_id: str, prompt: dict, files: dict[str, Any]) -> dict[str, Any]:
        """The row on this worker's ComfyUI; what batch.execute returned or raised, as plain data."""
        import ray

        from .batch import UPLOAD_SUBFOLDER, execute

        server = self.server
        if server is None:
            return {"setup": "its ComfyUI is not running"}
        try:
            for name, ref in files.items():
                if name not in self.uploaded:
                    # overwrite=False: a file of that (content-derived) name is already this image.
                    server.upload_bytes(ray.get(ref), name, UPLOAD_SUBFOLDER, overwrite=False)
                    self.uploaded.add(name)
            # An on_wait makes the client poll as often as the local batch's does (0.2 s, not 0.5 s).
            entry = execute(server, prompt, job_id, Path(self.config["jobs"]), self.config["timeout"],
                            on_wait=lambda: None)
            images = {}
            for found in output_images(self.config["workflow"], entry).values():
                for image in found:
                    images[_image_key(image)] = server.view(image)
                    self._forget(image)
            return {"entry": entry, "images": images}
        except PromptFailed as exc:
            return {"prompt_failed": [exc.kind, exc.payload]}
        except TimeoutError:
            return {"timeout": True}
        except urllib.error.HTTPError as exc:
            return {"http": [exc.code, exc.url, str(exc.reason)]}
        except (urllib.error.URLError, ConnectionError):
            # Its ComfyUI is gone: end this worker, so the driver replaces it and reruns the row.
            os._exit(3)

    def _forget(self, image: dict) -> None:
        """Delete a fetched output file: a worker running for days must not fill its disk."""
        assert self.scratch is not None
        folder = (self.scratch / ("temp" if image.get("type") == "temp" else "output")).resolve()
        path = (folder / image.get("subfolder", "") / image["filename"]).resolve()
        if path.is_relative_to(folder):
            path.unlink(missing_ok=True)

    def stop(self) -> str:
        """Stop ComfyUI; the end of its log."""
        log = ""
        if self.server is not None:
            self.server.stop()
            with open(self.server.log_path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - LOG_BYTES))
                log = f.read().decode(errors="replace")
            self.server = None
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None
        return log


class _Fetched:
    """The images a worker sent back, served as save_outputs asks a client for them."""

    def __init__(self, images: dict[tuple[str, str, str], bytes]) -> None:
        self.images = images

    def view(self, image: dict) -> bytes:
        return self.images[_image_key(image)]


def _result(outcome: dict[str, Any]) -> Callable[[], tuple[dict, _Fetched]]:
    """A worker's outcome as RowRunner.record takes it: raising what batch.execute raised."""

    def result() -> tuple[dict, _Fetched]:
        if "prompt_failed" in outcome:
            raise PromptFailed(*outcome["prompt_failed"])
        if "timeout" in outcome:
            raise TimeoutError
        if "http" in outcome:
            code, url, reason = outcome["http"]
            raise urllib.error.HTTPError(url, code, reason, None, None)  # type: ignore[arg-type]
        return outcome["entry"], _Fetched(outcome["images"])

    return result


def _raise(exc: Exception) -> Callable[[], Any]:
    def result() -> Any:
        raise exc

    return result


class _Pool:
    """The workers: starting, idle, busy; replaced when one dies."""

    def __init__(self, ray: Any, actor_class: Any, config: dict[str, Any],
                 note: Callable[[str], None]) -> None:
        self.ray, self.actor_class, self.config, self.note = ray, actor_class, config, note
        self.numbers: dict[Any, int] = {}  # actor -> its worker number, for messages and log names
        self.starting: dict[Any, Any] = {}  # start() ref -> actor
        self.idle: list[Any] = []
        self.file_inputs: set[tuple[str, str]] | None = None
        self.started = 0

    def add(self, replacing: int | str | None = None) -> None:
        """Start one more worker; `replacing`: the number of the dead worker it takes over from."""
        self.started += 1
        actor = self.actor_class.remote(self.config)
        self.numbers[actor] = self.started
        self.starting[actor.start.remote()] = actor
        if replacing is not None:
            self.note(f"batch: worker {self.started} starts in place of worker {replacing}")

    def started_one(self, ref: Any) -> None:
        actor = self.starting.pop(ref)
        try:
            answer = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            answer = {"error": error_line(exc)}
        if "error" in answer:
            self.note(f"batch: worker {self.numbers[actor]} could not start ComfyUI, going on without it: "
                      f"{answer['error']}")
            self.drop(actor)
            return
        if self.file_inputs is None:
            self.file_inputs = {tuple(t) for t in answer["file_inputs"]}  # type: ignore[misc]
        self.note(f"batch: worker {self.numbers[actor]} ready on {answer['node']} (pid {answer['pid']})")
        self.idle.append(actor)

    def drop(self, actor: Any) -> None:
        self.numbers.pop(actor, None)
        self.ray.kill(actor, no_restart=True)

    def alive(self) -> int:
        return len(self.idle) + len(self.starting)


def _none_started_in_time(pool: _Pool, running: dict, deadline: float) -> bool:
    """Whether to give up on the workers: Ray queues an actor whose resources no node has,
    silently and for ever, so a batch stops with the numbers when not one worker has started by
    `deadline` (--start-timeout) and no row runs. Once one has started, the deadline is over: the
    others may queue, and the batch may run for hours with a moment between rows."""
    return pool.file_inputs is None and not running and time.monotonic() > deadline


def run_on_ray(args: argparse.Namespace, workflow: dict[str, dict], table: JobTable, out: Path,
               todo: list[Job], progress: Progress, finished: Callable[[Record], None], stop: Any) -> None:
    """Run `todo` on Ray workers; every row ends in finished() (batch.run's bookkeeping)."""
    from .batch import UPLOAD_SUBFOLDER, RowRunner

    if args.workers is not None and args.workers < 1:
        raise ServerSetupError("--workers must be at least 1")
    ray = import_ray()
    started_ray = not ray.is_initialized()
    if started_ray:
        import fashion_rag

        # Ship this package with the job: the workers run the driver's code, not another version.
        package = str(Path(fashion_rag.__file__).parent)
        ray.init(address=args.ray_address, runtime_env={"py_modules": [package]}, log_to_driver=False,
                 logging_level="ERROR", configure_logging=False)
    pool: _Pool | None = None
    running: dict[Any, tuple[Any, Job, float]] = {}  # run_row ref -> (actor, job, start time)
    try:
        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        gpus = args.gpus_per_worker if args.gpus_per_worker is not None else (1 if cluster_gpus else 0)
        workers = args.workers or (max(1, int(cluster_gpus // gpus)) if gpus else 1)
        progress.workers = workers
        config = {"comfyui": str(args.comfyui) if args.comfyui else None,
                  "base": str(args.base) if args.base else None,
                  # The driver's own Python is no path on another node: the worker's, unless asked.
                  "python": None if args.python == sys.executable else args.python,
                  "device": args.device, "comfyui_args": args.comfyui_args, "gpus": gpus,
                  "workflow": workflow, "jobs": str(table.path), "timeout": args.timeout}
        actor_class = ray.remote(BatchWorker).options(num_cpus=1, num_gpus=gpus, max_restarts=0,
                                                      max_task_retries=0)
        pool = _Pool(ray, actor_class, config, progress.note)
        for _ in range(workers):
            pool.add()
        progress.note(f"batch: starting {workers} Ray workers ({gpus:g} GPU each), each with its own ComfyUI")

        refs: dict[str, Any] = {}  # upload name -> the PNG in Ray's object store

        def put(data: bytes, name: str) -> str:
            refs[name] = ray.put(data)
            return f"{UPLOAD_SUBFOLDER}/{name}"

        uploads = ImageUploads(table.path.parent, args.allow_outside, put)
        runner: RowRunner | None = None
        queue = collections.deque(todo)
        died: collections.Counter[str] = collections.Counter()
        deadline = time.monotonic() + args.start_timeout
        while True:
            if _none_started_in_time(pool, running, deadline):
                raise ServerSetupError(
                    f"no Ray worker started within {args.start_timeout:g} s: each asks for 1 CPU and "
                    f"{gpus:g} GPU, the cluster has {_resources(ray.cluster_resources())}; lower "
                    "--gpus-per-worker, add nodes, or raise --start-timeout")
            if runner is None and pool.file_inputs is not None:
                runner = RowRunner(workflow, table, out, args.timeout, pool.file_inputs, uploads)
            while runner is not None and pool.idle and queue and not stop.requested:
                job = queue.popleft()
                if not died[job.id]:
                    progress.start_row(job.id)
                t0 = time.monotonic()
                try:
                    prompt = runner.prompt(job)
                except (JobError, RowFolderError) as exc:
                    finished(runner.record(job, t0, _raise(exc)))
                    continue
                names = {v.split("/", 1)[1] for node in prompt.values() for v in node["inputs"].values()
                         if isinstance(v, str) and v.startswith(f"{UPLOAD_SUBFOLDER}/")}
                files = {n: refs[n] for n in names if n in refs}
                actor = pool.idle.pop()
                running[actor.run_row.remote(job.id, prompt, files)] = (actor, job, t0)
            # Workers still starting are waited for only while rows are left for them: not after
            # Ctrl-C, nor once the queue is empty (Ray may queue a worker it cannot place for ever).
            waiting = [*running, *(pool.starting if queue and not stop.requested else [])]
            if not waiting:
                if queue and not stop.requested:
                    raise ServerSetupError("no Ray worker could start ComfyUI (see above); "
                                           f"{len(queue)} rows not run")
                break
            ready, _ = ray.wait(waiting, num_returns=1, timeout=0.5)
            progress.draw()
            for ref in ready:
                if ref in pool.starting:
                    pool.started_one(ref)
                    continue
                actor, job, t0 = running.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker died mid-row
                    number = pool.numbers.get(actor, "?")
                    pool.drop(actor)
                    cause = error_line(exc)
                    error = _worker_died(died, job.id, cause)
                    if error is not None:
                        seconds = time.monotonic() - t0
                        finished(Record(job.id, FAILED, seconds, digest=job.digest, error=error))
                    else:
                        progress.note(f"batch: worker {number} died running row {job.id} ({cause}); "
                                      f"the row runs again on another worker ({died[job.id]}/{RETRIES})")
                        queue.appendleft(job)
                    pool.add(replacing=number)  # a fresh worker in its place
                    continue
                if "setup" in outcome:
                    progress.note(f"batch: worker {pool.numbers.get(actor, '?')} lost: {outcome['setup']}")
                    pool.drop(actor)
                    queue.appendleft(job)
                    continue
                finished(runner.record(job, t0, _result(outcome)))  # type: ignore[union-attr]
                pool.idle.append(actor)
    finally:
        for actor in running.values():
            ray.kill(actor[0], no_restart=True)  # Ctrl-C twice: their rows run again next time
        if pool is not None:
            _collect_logs(ray, pool, out)
        if started_ray:
            ray.shutdown()


def _worker_died(died: collections.Counter[str], row: str, cause: str) -> str | None:
    """Count one more death of a worker running `row`: None while the row may run again (at most
    RETRIES runs after the first), else the row's error (it failed, and is not run again)."""
    died[row] += 1
    if died[row] > RETRIES:
        return one_line(f"its worker died {died[row]} times (not run again): {cause}")
    return None


def _resources(resources: dict[str, float]) -> str:
    """"2 CPU, 0 GPU" from Ray's resource dict (its other keys are node ids and memory)."""
    return f"{resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU"


def _collect_logs(ray: Any, pool: _Pool, out: Path) -> None:
    """Stop the idle workers' ComfyUI; their logs into OUT/comfyui-workers/worker-<n>.log."""
    folder = out / WORKER_LOGS
    stops = {actor.stop.remote(): actor for actor in pool.idle}
    for ref, actor in stops.items():
        try:
            log = ray.get(ref, timeout=60)
        except (ray.exceptions.RayError, TimeoutError):
            log = ""
        if log:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"worker-{pool.numbers[actor]}.log").write_text(log)
        pool.drop(actor)
    for actor in pool.starting.values():
        pool.drop(actor)
