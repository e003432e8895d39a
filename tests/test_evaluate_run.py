"""`fashion-rag evaluate` end to end: a synthetic mini Dress Code (tools/demo/dresscode.py) through the
real ComfyUI server of the suite on the demo weights, then scored with the demo metric weights.

One run of 3 pairs (one per category; 96x128, 2 steps, 1 garment: the demo's ViT-H and VAE are
full size), then the same command again (resumed: nothing generated), then with a 4th pair whose
keypoint file is damaged (reported by its pair id, the rest resumed), then --score-only on the
images it wrote in the reference's layout. The four runs call the command's entry point
(fashion_rag.cli.main, what the `fashion-rag` script runs) in this process: each run as a child
process spent ~7 s of its ~10 s importing torch, torchvision and torchmetrics again; what a run
keeps is on disk (OUT/, the stats cache), and what the process remembers (file digests) is keyed
by each file's size and mtime."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

import pytest
from PIL import Image

from comfy_harness import prompts_per_row
from fashion_rag.cli import main
from fashion_rag.cli.batch_report import read_summary
from tools.demo.dresscode import write_mini_dresscode
from tools.demo.metric_weights import write_demo_metric_weights

FIRST = {"dresses": "052000_0", "lower_body": "051000_0", "upper_body": "048000_0"}
# The reference's result names: the person, then the query's noun chunks.
NAMES = {"dresses": "052000_0_plain_pattern_red_mini_dress_soft_cotton_fabric.png",
         "lower_body": "051000_0_blue_shorts_soft_cotton_fabric_striped_pattern.png",
         "upper_body": "048000_0_green_sleeveless_top_polka-dot_pattern_soft_cotton_fabric.png"}


class Run(NamedTuple):
    returncode: int
    stderr: str


@pytest.mark.slow  # 3 pairs through the demo's full-size ViT-H and VAE, then scoring, three times
def test_mini_dresscode_end_to_end(comfy_server, comfy_base, tmp_path, capfd):
    mini = write_mini_dresscode(tmp_path / "DressCode", per_category=2)
    metric_weights = tmp_path / "metric_weights"
    write_demo_metric_weights(metric_weights, log=lambda _: None)
    out = tmp_path / "out"
    retrieval = comfy_base / "models" / "fashion_rag" / "retrieval" / "fashion_rag_tiny_random.safetensors"

    def evaluate(limit: int, *more: str, to: Path = out) -> Run:
        capfd.readouterr()  # this run's stderr only
        code = main(["evaluate", "--dresscode", str(mini), "--limit", str(limit),
                     "--out", str(to), "--server", comfy_server.url, "--base", str(comfy_base),
                     "--metric-weights", str(metric_weights), "--stats-cache", str(tmp_path / "stats"),
                     "--retrieval-weights", str(retrieval), "--steps", "2", "--k", "1", "--size", "96x128",
                     *more])
        return Run(code, capfd.readouterr().err)

    first = evaluate(3)
    assert first.returncode == 0, first.stderr[-4000:]
    summary = read_summary(out / "generated" / "summary.csv")
    assert {k: r.status for k, r in summary.items()} == {pid: "ok" for pid in FIRST.values()}
    assert "[3/3] 048000_0: ok in " in first.stderr and "(ETA " in first.stderr  # the batch's progress
    assert prompts_per_row(comfy_server, out / "jobs.csv") == {pid: 1 for pid in FIRST.values()}
    for category, pid in FIRST.items():
        assert [p.name for p in (out / "images" / category).iterdir()] == [NAMES[category]]
        assert Image.open(out / "images" / category / NAMES[category]).size == (96, 128)
        assert Image.open(out / "inputs" / pid / "mask.png").size == (96, 128)

    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["category"] for r in rows] == ["upper_body", "lower_body", "dresses", "all"]
    assert [r["n"] for r in rows] == ["1", "1", "1", "3"]
    for column in ("FID", "KID", "CLIP-T", "CLIP-I", "LPIPS", "SSIM"):
        assert rows[-1][column] not in ("", None), column  # every metric of a paired run, for all pairs
    with open(out / "retrieval.csv", newline="") as f:
        retrieval_rows = list(csv.DictReader(f))
    assert {(r["captions"], r["category"]) for r in retrieval_rows} >= {("single", "all"), ("triplet", "all")}
    report = (out / "report.md").read_text()
    for line in ("| seed | 1234 |", "| steps | 2 |", "| k | 1 |", "| guidance | 7.5 |", "| size | 96x128 |",
                 "| mask | bounding_box |", "| pairs | 3 scored of 3 (--limit 3) |"):
        assert line in report, line
    assert "| FashionRAGUNetLoader.unet_name | fashion_rag_demo_unet.pth sha256 " in report
    assert "| ComfyUI | 0." in report and "| pack | fashion-rag " in report

    again = evaluate(3)  # resumed: every pair is done
    assert again.returncode == 0, again.stderr[-4000:]
    assert "3 of 3 rows already done" in again.stderr
    assert prompts_per_row(comfy_server, out / "jobs.csv") == {pid: 1 for pid in FIRST.values()}

    (mini / "dresses" / "keypoints" / "052001_2.json").write_text("{broken")
    damaged = evaluate(4)  # the 4th pair (the second dress) is unusable, the others resume
    assert damaged.returncode == 1, damaged.stderr[-4000:]
    message = "unusable pair dresses/052001_0: keypoints file "
    assert message in damaged.stderr and "052001_2.json is not readable JSON" in damaged.stderr
    assert "3 of 3 rows already done" in damaged.stderr
    assert prompts_per_row(comfy_server, out / "jobs.csv") == {pid: 1 for pid in FIRST.values()}
    assert (out / "problems.txt").read_text().startswith("unusable: dresses/052001_0: keypoints file ")
    assert "| pairs | 3 scored of 4 (--limit 4), 1 unusable |" in (out / "report.md").read_text()

    # The images in the reference's layout scored again on their own: the same numbers, no prompt.
    rescored = evaluate(3, "--score-only", str(out / "images"), "--index-dir", str(out / "index"),
                        to=tmp_path / "rescored")
    assert rescored.returncode == 0, rescored.stderr[-4000:]
    assert (tmp_path / "rescored" / "metrics.csv").read_text() == (out / "metrics.csv").read_text()
    assert "| ComfyUI | (scored only) |" in (tmp_path / "rescored" / "report.md").read_text()
    assert prompts_per_row(comfy_server, out / "jobs.csv") == {pid: 1 for pid in FIRST.values()}
