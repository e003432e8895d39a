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

from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread is faster on shared cores
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--smoke", *args],
                         capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def test_memory_benchmark_smoke(tmp_path, bench_cache):
    summary = tmp_path / "summary.json"
    table = _run("memory.py", "--attention", "default", "--weights", "both",
                 "--cache", str(bench_cache), "--out", str(tmp_path / "run"), "--json", str(summary))
    print(table)
    s = json.loads(summary.read_text())
    ref = s["reference"]
    # ComfyUI's CPU defaults store the text encoder and CLIP vision as their fp16 files; the
    # fp32 flags store everything in fp32. The UNet and adapter are fp32 either way.
    stored = {w: s["pack"][f"{w}/default"]["dtypes"] for w in ("fp32", "comfy")}
    assert set(stored["fp32"].values()) == {"float32"}
    assert stored["comfy"] == {**stored["fp32"], "text encoder": "float16", "vision": "float16"}
    for mode, pack in s["pack"].items():
        # Both storages compute in fp32: the same latent as the reference (fp32 rounding apart).
        assert s["latent_difference"][mode] < 1e-4, mode
        # The warm second prompt reran retrieval, inversion and inpainting, and no loader.
        assert pack["reloads"] == []
        assert {"1", "2", "3", "5", "7"} <= set(pack["second_cached"])
        assert {"4", "6", "11"} <= set(pack["second_executed"])
        assert set(pack["load_parts"]) >= {"text encoder + VAE", "vision", "adapter", "UNet"}
    # --smoke runs both storages in one ComfyUI process (its log is the first run's): each loaded
    # the UNet itself, the second did not reuse the first's from the pack's cache.
    log = (tmp_path / "run" / "pack-fp32-default" / "log.txt").read_text()
    assert log.count("[Fashion-RAG] loaded UNet ") == 2
    # fp16 files stored as fp16 and computed in fp32 give the very latent fp32 storage gives.
    latents = [load_file(str(tmp_path / "run" / f"pack-{w}-default" / "tensors.safetensors"))["latent"]
               for w in ("fp32", "comfy")]
    assert float((latents[0] - latents[1]).norm() / latents[0].norm()) < 1e-6
    for figures in (*s["pack"].values(), ref):
        assert figures["peak"] > 0 and figures["load"] > 0
        assert math.isfinite(figures["step"]) and figures["step"] > 0
    assert "| peak process memory (VmHWM) |" in table
    assert ("| weights stored as (text encoder, CLIP vision, UNet) | float32, float32, float32 "
            "| float16, float16, float32 |") in table


def test_unet_load_benchmark_smoke(tmp_path, bench_cache):
    out = _run("unet_load.py", "--cache", str(bench_cache), "--base", str(tmp_path / "base"))
    assert "convert-unet (once)" in out
    assert out.count("| fp32 |") == 2  # the .pth and the converted file


def test_encoder_load_benchmark_smoke(bench_cache):
    out = _run("encoder_load.py", "--cache", str(bench_cache))
    for row in ("open_clip's own load (the encoder before)", "whole model, read in parts",
                "text-first (index loader node)"):
        assert f"| {row} |" in out
