"""Measure a model load in a fresh process: the peak and kept memory over the RSS before it.

A fresh process, so nothing allocated and freed earlier hides in the figures; ComfyUI runs
in it in-process (the pack installed) unless the load is the plain library's, and VmHWM is
reset right before the load, so the peak is the load's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

_PRELUDE = r"""
import gc, json, sys
from pathlib import Path
sys.path[:0] = [sys.argv[1], str(Path(sys.argv[1]).parent)]
from comfy_harness import InProcessComfy

def mem():
    d = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            d[k] = int(v.split()[0]) * 1024
    return d

def pack_module(name):
    return next(m for n, m in sys.modules.items() if n.endswith("nodes." + name))

if sys.argv[3] == "comfy":
    InProcessComfy.get(Path(sys.argv[2]))
args = sys.argv[4:]
"""

_RESET = r"""
gc.collect()
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
before = mem()
"""

_MEASURED = r"""
gc.collect()
after = mem()
nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
"""

_REPORT = r"""
print(json.dumps({**extra, "bytes": nbytes, "before": before["VmRSS"], "after": after["VmRSS"],
                  "peak": after["VmHWM"]}))
"""


def measure_load(load: str, base: Path, *args: str, then: str = "extra = {}", setup: str = "",
                 comfy: bool = True) -> dict:
    """Run `setup` (imports whose memory is not the load's), then `load` (code that sets `model`,
    a torch module, from `args`) in a fresh process, then `then` (code that sets `extra`, a dict
    reported too, after the figures are taken); returns the figures, with `peak_models` and
    `kept_models`: memory over the RSS before the load, divided by the model's bytes. `comfy`
    False: a load of the plain library, in a process that never starts ComfyUI (seconds saved)."""
    script = "\n".join([_PRELUDE, setup, _RESET, load, _MEASURED, then, _REPORT])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [str(TESTS), str(base), "comfy" if comfy else "-", *args]
    out = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    m["peak_models"] = (m["peak"] - m["before"]) / m["bytes"]
    m["kept_models"] = (m["after"] - m["before"]) / m["bytes"]
    return m
