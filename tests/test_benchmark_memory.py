"""The memory benchmarks run (`--smoke`: tiny configs of the same models), so they cannot rot.

benchmarks/memory.py runs the example graph in a real ComfyUI and the independent diffusers/
transformers pipeline, each in its own process; here the two must agree on the final latent,
the second prompt must rerun no loader, and every figure of the table must be there. Its
performance targets are checked by the full-size run (benchmarks/RESULTS.md), not here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread is faster on shared cores
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--smoke", *args],
                         capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def test_memory_benchmark_smoke(tmp_path):
    summary = tmp_path / "summary.json"
    table = _run("memory.py", "--attention", "default", "--cache", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "run"), "--json", str(summary))
    print(table)
    s = json.loads(summary.read_text())
    pack, ref = s["pack"]["default"], s["reference"]
    # The two pipelines compute the same thing (fp32 rounding apart).
    assert s["latent_difference"]["default"] < 1e-4
    # The warm second prompt reran retrieval, inversion and inpainting, and no loader.
    assert pack["reloads"] == []
    assert {"1", "2", "3", "5", "7"} <= set(pack["second_cached"])
    assert {"4", "6", "11"} <= set(pack["second_executed"])
    for figures in (pack, ref):
        assert figures["peak"] > 0 and figures["load"] > 0
        assert math.isfinite(figures["step"]) and figures["step"] > 0
    assert set(pack["load_parts"]) >= {"text encoder + VAE", "vision", "adapter", "UNet"}
    assert "| peak process memory (VmHWM) |" in table


def test_unet_load_benchmark_smoke(tmp_path):
    out = _run("unet_load.py", "--cache", str(tmp_path / "cache"), "--base", str(tmp_path / "base"))
    assert "convert-unet (once)" in out
    assert out.count("| fp32 |") == 2  # the .pth and the converted file


def test_encoder_load_benchmark_smoke(tmp_path):
    out = _run("encoder_load.py", "--cache", str(tmp_path / "cache"))
    assert "| whole model (before) |" in out and "| text-first (index loader node) |" in out
