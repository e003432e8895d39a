"""benchmarks/test_suite.py's process accounting: what each process kind of a run cost in CPU.
Mutations caught: utime and stime read from the wrong /proc/PID/stat fields (the burn below is
then not seen), a ComfyUI server or an xdist worker filed under "other"."""

from __future__ import annotations

import importlib.util
import os
import time

from tools.harness import REPO


def _suite():
    spec = importlib.util.spec_from_file_location("suite_report", REPO / "benchmarks" / "test_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_seconds_follow_the_process_cpu_time():
    suite = _suite()
    before = suite._cpu_seconds(os.getpid())
    end = time.process_time() + 0.3
    while time.process_time() < end:  # 0.3 s of this process's CPU
        pass
    after = suite._cpu_seconds(os.getpid())
    # /proc counts in clock ticks (1/100 s): 0.3 s burnt, give or take two ticks and the scheduler
    assert 0.25 <= after - before <= 0.6, (before, after)
    assert suite._cpu_seconds(2**22 + 1) is None  # above Linux's pid_max: no such process


def test_process_kinds():
    kind = _suite()._kind
    assert kind(["/v/bin/python", "/c/ComfyUI/main.py", "--cpu"]) == "ComfyUI server"
    assert kind(["/v/bin/python", "-u", "-c", "import sys;exec(eval(sys.stdin.readline()))"]) == (
        "pytest-xdist worker")
    assert kind(["/v/bin/python", "/v/ray/_private/workers/default_worker.py", "--node-ip-address=x"]) == (
        "Ray worker")
    assert kind(["/usr/lib/chromium/chromium", "--headless"]) == "Chromium (browser process)"
    assert kind(["/usr/lib/chromium/chromium", "--type=renderer"]) == "Chromium (its other processes)"
    assert kind(["/v/bin/python", "-m", "fashion_rag", "batch"]) == "other: python fashion_rag"
    assert kind([]) == "other: "
