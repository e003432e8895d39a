"""`fashion-rag batch --engine ray`: the same rows, files and summary as the local batch, run by Ray
workers that each start their own ComfyUI (a real local Ray cluster of 2 CPUs for the module, the
demo index, the batch tests' workflow: no diffusion, a row takes about a second). Only the test
comparing with the local batch on the shared server runs on the full-size worker; the others'
ComfyUIs load no full-size model (`index_base`: the demo index and the person, no weights).

The batch runs in a child process (as a user runs it) that joins the module's cluster through its
address; what ComfyUI itself saw is read from each worker's ComfyUI log, which the batch brings
back to OUT/comfyui-workers/ (one "got prompt" line per prompt the server received).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is optional (pip install \"fashion-rag[ray]\")")

import test_batch  # noqa: E402
from test_batch import _batch, _job_files, _many_rows, _wait_for_ok, _write_csv  # noqa: E402

from fashion_rag.cli.batch_report import read_summary  # noqa: E402
from tools.demo.person import PERSON_FILE  # noqa: E402
from tools.harness import REPO, comfy_path  # noqa: E402

people = test_batch.people  # the batch tests' person photos (a fixture)


@pytest.fixture(scope="module")
def cluster(local_ray) -> str:
    """A local Ray cluster (tests/conftest.py); its address, for the batch processes to join."""
    return local_ray


def _ray_args(address: str, base: Path, workers: int = 2, device: str = "cpu") -> list[str]:
    # The session server's flags (fp32 everywhere), so both engines compute the same images.
    return ["--engine", "ray", "--ray-address", address, "--workers", str(workers),
            "--comfyui", str(comfy_path()), "--base", str(base), "--device", device,
            "--comfyui-args=--fp32-text-enc --fp32-vae --fp32-unet"]


def _prompts_received(out: Path) -> list[int]:
    """Per worker, the prompts its ComfyUI received (its log says "got prompt" for each)."""
    logs = sorted((out / "comfyui-workers").glob("worker-*.log"))
    return [log.read_text(errors="replace").count("got prompt") for log in logs]


def test_ray_workers_give_the_local_batchs_rows_and_images(cluster, comfy_server, comfy_base, people,
                                                          tmp_path):
    """Six rows, one whose person image is missing: the same statuses, errors and outputs as the
    local batch, byte-identical images, and each row sent to a ComfyUI once (two workers started)."""
    workflow, jobs = _job_files(tmp_path, people, [
        ["id", "text", "k", "category", "person"],
        ["top", "a red striped short-sleeve top", 1, "upper_body", "people/p1.png"],
        ["trousers", "blue denim trousers", 2, "lower_body", "people/p2.png"],
        ["dress", "a green floral dress", 3, "dresses", "people/p1.png"],
        ["ghost", "a white shirt", 1, "upper_body", "people/missing.png"],
        ["on-server", "a black skirt", 2, "lower_body", PERSON_FILE],
        ["small", "a yellow dress", 1, "dresses", "people/small.png"],
    ])
    local = _batch(workflow, jobs, tmp_path / "local", "--server", comfy_server.url)
    assert local.returncode == 1, local.stderr
    remote = _batch(workflow, jobs, tmp_path / "ray", *_ray_args(cluster, comfy_base))
    assert remote.returncode == 1, remote.stderr
    want = read_summary(tmp_path / "local" / "summary.csv")
    got = read_summary(tmp_path / "ray" / "summary.csv")
    assert {k: r.status for k, r in got.items()} == {
        "top": "ok", "trousers": "ok", "dress": "ok", "ghost": "failed", "on-server": "ok", "small": "ok"}
    assert {k: (r.status, r.outputs, r.error, r.digest) for k, r in got.items()} == {
        k: (r.status, r.outputs, r.error, r.digest) for k, r in want.items()}
    assert "missing.png" in got["ghost"].error and "LoadImage (node 4)" in got["ghost"].error
    assert sum(len(r.outputs) for r in got.values()) == (1 + 2 + 3 + 2 + 1) + 5  # garments, masks
    for record in got.values():
        for name in record.outputs:
            assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    assert "5 ok, 1 failed, 0 skipped" in remote.stderr
    # Two workers asked for, and each row went to a ready worker's ComfyUI once. Not "each worker
    # got a row", nor even "both became ready": workers pull rows as they become ready, so one whose
    # ComfyUI starts late may find none left (seen: [6, 0]), or none queued, and the batch then ends
    # without waiting for it (seen: [6]). A log comes back from each worker that was ready; that two
    # workers start and rows move between them, the killed-worker test shows ("worker 3 starts in
    # place of worker 1 or 2").
    assert "batch: starting 2 Ray workers" in remote.stderr
    received = _prompts_received(tmp_path / "ray")
    ready = len(re.findall(r"batch: worker [12] ready on ", remote.stderr))
    assert 1 <= len(received) == ready <= 2 and sum(received) == 6, (received, remote.stderr[-3000:])


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        found[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    return found


def _worker_mid_row(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, int]:
    """(pid of a Ray worker running a row, pid of its ComfyUI); Ray titles a busy actor's process
    ray::<class>.<method>."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        table = _processes()
        for pid, (_, cmdline) in table.items():
            if cmdline.startswith("ray::BatchWorker.run_row"):
                children = [c for c, (ppid, line) in table.items() if ppid == pid and "main.py" in line]
                if children:
                    return pid, children[0]
        time.sleep(0.01)
    raise AssertionError(f"no worker seen running a row: {proc.poll()}")


def _stderr_unless_hung(proc: subprocess.Popen, timeout: float) -> str:
    """The batch's stderr once it has ended; killed and failed as hung after `timeout` s."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the batch hung: {proc.communicate()[1]}") from None


def _gone(pid: int, timeout: float = 30) -> bool:
    """The process has exited within `timeout` s: no longer listed, or a zombie (dead, waiting to be
    reaped by whoever adopted it: its parent is gone, and the reaper takes its time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def test_killed_worker_row_runs_again_killed_driver_resumes_and_ctrl_c_stops(cluster, index_base, people,
                                                                            tmp_path):
    """One 12-row batch, run three times (each run's workers start their own ComfyUIs: the cost
    of a run, so the Ctrl-C checks ride on the resumed run).
    1. SIGKILL a worker mid-row: its row goes to another worker and is done once, its ComfyUI does
       not outlive it, a third worker starts in its place. Then SIGKILL the driver.
    2. The rerun resumes, sending no finished row again; at its first Ctrl-C no row is sent any
       more, the rows running finish and are recorded, the rest are skipped, exit 130; every
       prompt a ComfyUI received is an ok row.
    3. The last rerun (one worker, `--device auto`) runs the rows left: all 12 ok, none sent twice."""
    workflow, jobs = _job_files(tmp_path, people, _many_rows(12))
    out = tmp_path / "out"
    proc = _batch(workflow, jobs, out, *_ray_args(cluster, index_base), wait=False)
    try:
        _wait_for_ok(out / "summary.csv", 1, proc, timeout=300)
        worker, its_comfyui = _worker_mid_row(proc)
        os.kill(worker, signal.SIGKILL)
        assert _gone(its_comfyui), "the killed worker's ComfyUI outlived it"
        deadline = time.monotonic() + 300
        retried = None
        while retried is None and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stderr.readline()
            found = re.search(r"worker \d+ died running row (r\d+) .*runs again on another worker \(1/3\)",
                              line)
            retried = found and found.group(1)
        assert retried, f"no retry reported: {proc.poll()}"
        # A fresh worker takes the dead one's place (mutation caught: `pool.add()` after a death
        # dropped: the batch would go on with one worker and never start a worker 3).
        replaced = False
        while not replaced and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            replaced = re.search(r"worker 3 starts in place of worker [12]\b", line) is not None
        assert replaced, f"no worker took the killed one's place: {proc.poll()}"
        while time.monotonic() < deadline and read_summary(out / "summary.csv").get(retried, None) \
                and read_summary(out / "summary.csv")[retried].status != "ok":
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = read_summary(out / "summary.csv")
    finished = {k for k, r in summary.items() if r.status == "ok"}
    assert retried in finished and len(finished) < 12, finished

    rerun = _batch(workflow, jobs, out, *_ray_args(cluster, index_base), wait=False)
    try:
        _wait_for_ok(out / "summary.csv", len(finished) + 1, rerun, timeout=300)
        rerun.send_signal(signal.SIGINT)
        _, stderr = rerun.communicate(timeout=120)
    finally:
        if rerun.poll() is None:
            rerun.kill()
    assert rerun.returncode == 130, stderr
    assert f"{len(finished)} of 12 rows already done" in stderr
    assert "stopping after the rows the workers are running" in stderr
    summary = read_summary(out / "summary.csv")
    ok = {k for k, r in summary.items() if r.status == "ok"}
    assert finished < ok and len(ok) < 12, summary
    assert all(r.status == "skipped" and r.error == "not run: stopped by Ctrl-C"
               for k, r in summary.items() if k not in ok)
    assert sum(_prompts_received(out)) == len(ok) - len(finished)  # no finished row sent again
    shutil.rmtree(out / "comfyui-workers")  # (the next run's workers write theirs)

    # `--device auto` (the default) on this GPU-less cluster: a worker without a GPU starts ComfyUI
    # with --cpu (mutation caught: auto read the other way round; ComfyUI then found no driver).
    last = _batch(workflow, jobs, out, *_ray_args(cluster, index_base, workers=1, device="auto"), wait=False)
    stderr = _stderr_unless_hung(last, 300)
    assert last.returncode == 0, stderr
    assert f"{len(ok)} of 12 rows already done" in stderr
    summary = read_summary(out / "summary.csv")
    assert len(summary) == 12 and all(r.status == "ok" for r in summary.values())
    assert sum(_prompts_received(out)) == 12 - len(ok)  # the finished rows were not sent again
    for row in summary:
        assert len(list((out / row).glob("garments_*.png"))) == 12  # k=20 of a 12-garment category


def test_workers_whose_comfyui_cannot_start_are_each_reported_once(cluster, people, tmp_path):
    workflow, jobs = _job_files(tmp_path, people, _many_rows(2))
    nowhere = tmp_path / "no-comfyui"
    nowhere.mkdir()
    run = _batch(workflow, jobs, tmp_path / "out", "--engine", "ray", "--ray-address", cluster,
                 "--workers", "2", "--comfyui", str(nowhere))
    assert run.returncode == 2, run.stderr
    for n in (1, 2):
        assert run.stderr.count(f"worker {n} could not start ComfyUI, going on without it: no ComfyUI at "
                                f"{nowhere} (no main.py)") == 1, run.stderr
    assert "no Ray worker could start ComfyUI (see above); 2 rows not run" in run.stderr
    assert {r.status for r in read_summary(tmp_path / "out" / "summary.csv").values()} == {"skipped"}


def test_workers_the_cluster_cannot_place_stop_the_batch_with_the_numbers(cluster, people, tmp_path):
    """Workers asking for a GPU on a CPU-only cluster: Ray would queue them for ever; the batch gives
    up after --start-timeout with what was asked and what the cluster has, the rows left to run.
    Mutation caught: no start deadline (the batch waited until the 120 s limit here)."""
    workflow, jobs = _job_files(tmp_path, people, _many_rows(2))
    cmd = [sys.executable, "-m", "fashion_rag", "batch", "--workflow", str(workflow), "--jobs", str(jobs),
           "--out", str(tmp_path / "out"), "--engine", "ray", "--ray-address", cluster, "--workers", "1",
           "--gpus-per-worker", "1", "--start-timeout", "2.5"]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert ("no Ray worker started within 2.5 s: each asks for 1 CPU and 1 GPU, the cluster has "
            "2 CPU, 0 GPU; lower --gpus-per-worker") in run.stderr, run.stderr
    assert {r.status for r in read_summary(tmp_path / "out" / "summary.csv").values()} == {"skipped"}


def test_the_local_batch_never_imports_ray(tmp_path):
    """Ray is optional: without --engine ray the batch runs (here: fails to reach a server) without it."""
    workflow = tmp_path / "workflow.json"
    workflow.write_text('{"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}}')
    jobs = _write_csv(tmp_path / "jobs.csv", [["id", "filename_prefix"], ["a", "y"]])
    code = ("import argparse, sys; from fashion_rag.cli import batch; p = argparse.ArgumentParser(); "
            "batch.add_parser(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); rc = a.func(a); "
            "print(rc, 'ray' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code, "batch", "--workflow", str(workflow), "--jobs",
                          str(jobs), "--out", str(tmp_path / "out"), "--server", "http://127.0.0.1:9"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.stdout.split() == ["2", "False"], run.stdout + run.stderr


def test_a_batch_ends_when_its_rows_are_done_though_a_worker_is_never_placed(cluster, index_base, people,
                                                                            tmp_path):
    """Three workers of 1 CPU on the module's 2-CPU cluster: Ray queues the third for ever. Once the
    two placed workers have run both rows, the batch ends (exit 0), rather than waiting for a worker
    that has no row left to run (it hung there until killed).
    Mutation caught (and defect fixed): the workers still starting waited for with no row left."""
    workflow, jobs = _job_files(tmp_path, people, _many_rows(2))
    proc = _batch(workflow, jobs, tmp_path / "out", *_ray_args(cluster, index_base, workers=3), wait=False)
    stderr = _stderr_unless_hung(proc, 120)
    assert proc.returncode == 0, stderr
    assert "2 ok, 0 failed, 0 skipped" in stderr, stderr
    summary = read_summary(tmp_path / "out" / "summary.csv")
    assert {k: r.status for k, r in summary.items()} == {"r0": "ok", "r1": "ok"}
