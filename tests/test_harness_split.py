"""Issue 19: the installed package knows neither a checkout nor the test harness's cache; the
harness (tools/harness.py) supplies both to the tests, the demo and the benchmarks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fashion_rag
from fashion_rag.cli import comfy_server
from tools.harness import REPO


def test_the_package_names_no_harness_comfyui_and_no_checkout():
    sources = {p: p.read_text() for p in Path(fashion_rag.__file__).parent.rglob("*.py")}
    for path, text in sources.items():
        assert "fashion-rag/ComfyUI" not in text and '"fashion-rag" / "ComfyUI"' not in text, path
    assert not hasattr(comfy_server, "REPO") and not hasattr(comfy_server, "comfy_path")


def test_batch_without_a_comfyui_to_start_says_what_to_pass(tmp_path):
    """No --server, no --comfyui, no COMFYUI_PATH, the pack not inside a ComfyUI: exit 2 with
    one line naming the options, not a ComfyUI from some cache."""
    (tmp_path / "workflow.json").write_text(json.dumps(
        {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}}))
    (tmp_path / "jobs.csv").write_text("id,filename_prefix\na,y\n")
    (tmp_path / "home" / ".cache" / "fashion-rag" / "ComfyUI").mkdir(parents=True)
    (tmp_path / "home" / ".cache" / "fashion-rag" / "ComfyUI" / "main.py").write_text("")
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"} | {"HOME": str(tmp_path / "home")}
    code = ("import argparse, sys; from fashion_rag.cli import batch; p = argparse.ArgumentParser(); "
            "batch.add_parser(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
    run = subprocess.run([sys.executable, "-c", code, "batch", "--workflow", str(tmp_path / "workflow.json"),
                          "--jobs", str(tmp_path / "jobs.csv"), "--out", str(tmp_path / "out")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert "batch: no ComfyUI to start: this pack is not inside a ComfyUI's custom_nodes/ and COMFYUI_PATH " \
           "is not set; pass --comfyui PATH, or --server URL for a running one" in run.stderr, run.stderr
