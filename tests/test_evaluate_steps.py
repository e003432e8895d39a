"""`fashion-rag evaluate`'s steps one by one, in this process and without ComfyUI (one test, the
--score-only run, scores with the demo metric weights: ~14 s, the rest well under 1 s each): the
command's defaults, the per-pair graph's sampling and pose settings and its job-table
header, the inputs written per pair (and left alone when unchanged, so a resumed batch skips them),
the retrieved garments taken per pair, --score-only's lookup, the reference-layout copies,
problems.txt, the report's headers and blanks, and your-own-photos tables (default ids, FID's
pooled photos, the header rules, an empty drawn mask)."""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashion_rag.cli import evaluate
from fashion_rag.cli.batch_jobs import load_workflow
from fashion_rag.cli.evaluate_graph import Sampling, evaluation_graph, model_files
from fashion_rag.evaluation.own_photos import prepare_photo, read_photo_table
from fashion_rag.evaluation.pairs import PairError, Problem, pose_json, read_dataset_json, read_json
from fashion_rag.evaluation.report import write_report
from fashion_rag.inpaint.keypoints import Keypoints
from tools.harness import REPO

EXAMPLE = REPO / "example_workflows" / "api" / "fashion_rag_text_to_tryon.json"
# The reference's result names of the mini Dress Code's first pair per category (its captions).
NAMES = {"dresses": "052000_0_plain_pattern_red_mini_dress_soft_cotton_fabric.png",
         "lower_body": "051000_0_blue_shorts_soft_cotton_fabric_striped_pattern.png",
         "upper_body": "048000_0_green_sleeveless_top_polka-dot_pattern_soft_cotton_fabric.png"}


def _args(*argv: str) -> argparse.Namespace:
    """The command line as `fashion-rag evaluate` parses it."""
    parser = argparse.ArgumentParser()
    evaluate.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["evaluate", *argv])


def _evaluation(mini: Path, out: Path, *more: str) -> evaluate._Evaluation:
    return evaluate._Evaluation(_args("--dresscode", str(mini), "--out", str(out),
                                      "--server", "http://127.0.0.1:9", *more))


def test_the_defaults_are_the_reference_settings():
    """The paper's settings: seed 1234, 50 steps, guidance 7.5, 3 garments, 3 noun chunks, 384x512,
    paired, the box mask, image retrieval.
    Mutation caught: the --seed default changed (0)."""
    a = _args("--dresscode", "x")
    assert (a.seed, a.steps, a.guidance, a.k, a.chunks, a.size) == (1234, 50, 7.5, 3, 3, (384, 512))
    assert (a.order, a.mask, a.retrieval, a.retrieval_mode) == ("paired", "bounding_box", ["index"], "image")
    assert a.category == "upper_body,lower_body,dresses" and a.timeout == 3600


def test_the_graph_takes_every_sampling_setting_and_the_size_as_width_by_height():
    """Sampling values none of which is a default reach the Inpaint node; a 96x128 (W x H) size
    reaches the pose node as width 96, height 128; one conditioning for all garments
    (per_garment off); the job header names the pose node's keypoints before the inversion's
    category (the order the job rows are written in); the UNet file is looked up under
    models/fashion_rag/unet.
    Mutation caught: cfg fixed at 7.5; the scheduler fixed at "normal"; width and height
    swapped; per_garment on; the keypoints and category columns swapped; the UNet's folder
    "unet"."""
    workflow = load_workflow(EXAMPLE)
    graph = evaluation_graph(workflow, 2, Sampling(seed=11, steps=3, cfg=4.5, sampler="euler",
                                                   scheduler="karras"), (96, 128))
    nodes = graph.workflow
    inpaint = next(n["inputs"] for n in nodes.values() if n["class_type"] == "FashionRAGInpaint")
    assert (inpaint["seed"], inpaint["steps"], inpaint["cfg"], inpaint["sampler_name"],
            inpaint["scheduler"]) == (11, 3, 4.5, "euler", "karras")
    pose_id = next(i for i, n in nodes.items() if n["class_type"] == "FashionRAGPoseFromKeypoints")
    assert (nodes[pose_id]["inputs"]["width"], nodes[pose_id]["inputs"]["height"]) == (96, 128)
    inversion_id = next(i for i, n in nodes.items() if n["class_type"] == "FashionRAGGarmentInversion")
    assert nodes[inversion_id]["inputs"]["per_garment"] is False
    columns = graph.columns()
    assert columns[-2:] == [f"{pose_id}.keypoints_json", f"{inversion_id}.category"]
    unet = next(n["inputs"]["unet_name"] for n in json.loads(EXAMPLE.read_text()).values()
                if n.get("class_type") == "FashionRAGUNetLoader")
    assert model_files(nodes)["FashionRAGUNetLoader.unet_name"] == ("fashion_rag/unet", unet)


def test_inputs_are_written_once_and_left_alone_when_unchanged(mini, tmp_path):
    """OUT/inputs/<pair>/mask.png holds 0 and 255 only (255 = repaint), person.png is the person
    at 384x512; preparing the same pairs again (a resumed
    run) leaves both files untouched (the batch resumes by size and time).
    Mutation caught: the mask written as 0/1; a PNG rewritten even when its bytes are the same."""
    out = tmp_path / "out"
    ev = _evaluation(mini, out)
    pairs = evaluate.limited(ev.read().pairs, 3)
    assert sorted(p.pair_id for p in ev.prepare(pairs)) == ["048000_0", "051000_0", "052000_0"]
    mask = np.asarray(Image.open(out / "inputs" / "048000_0" / "mask.png"))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    assert 0 < (mask == 255).mean() < 1
    assert Image.open(out / "inputs" / "048000_0" / "person.png").size == (384, 512)
    old = 1_000_000_000
    files = sorted((out / "inputs").rglob("*.png"))
    for f in files:
        os.utime(f, (old, old))
    _evaluation(mini, out).prepare(pairs)
    assert [f.stat().st_mtime for f in files] == [old] * len(files)


def test_each_pair_takes_the_first_k_retrieved_garments(mini, tmp_path):
    """With --k 2 and the reference's retrieval files listing three garments for each pair's
    query, a pair gets the first two, in order.
    Mutation caught: the top-ranked garment skipped (ranked[1:k+1])."""
    out = tmp_path / "out"
    folder = tmp_path / "retrieval"
    folder.mkdir()
    ev = _evaluation(mini, out, "--k", "2", "--retrieval", "reference-json", str(folder))
    test_set = ev.read()
    pairs = evaluate.limited(test_set.pairs, 3)
    listed = {"upper_body": ["048001", "048000", "048002"], "lower_body": ["051002", "051000", "051001"],
              "dresses": ["052001", "052002", "052000"]}
    for category, ids in listed.items():
        ranked = {p.query: [f"{category}/cleaned_inshop_imgs/{i}_1_cleaned.jpg" for i in ids]
                  for p in pairs if p.category == category}
        (folder / f"test_{category}_triplet.json").write_text(json.dumps({"pred_files": ranked}))
    ev.retrieve(test_set, ev.prepare(pairs))
    assert ev.state.garments == {"048000_0": ["048001_1", "048000_1"], "051000_0": ["051002_1", "051000_1"],
                                 "052000_0": ["052001_1", "052002_1"]}


def test_score_only_finds_images_by_the_reference_names_and_says_which_is_missing(mini, tmp_path):
    """--score-only DIR: a pair's image is DIR/<category>/<person>_<chunks>.png; a pair without
    one is failed with the path it looked for; a DIR that is not there is a setup error (exit 2)
    that names it.
    Mutation caught: the failure without the path; the folder check dropped."""
    images = tmp_path / "images"
    (images / "dresses").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(images / "dresses" / NAMES["dresses"])
    ev = _evaluation(mini, tmp_path / "out", "--score-only", str(images))
    pairs = evaluate.limited(ev.read().pairs, 3)
    ev.state.garments = {p.pair_id: ["x"] for p in pairs}
    ev.find_results(pairs)
    assert ev.state.results == {"052000_0": images / "dresses" / NAMES["dresses"]}
    assert ev.state.failed == {"048000_0": f"no image {images / 'upper_body' / NAMES['upper_body']}",
                               "051000_0": f"no image {images / 'lower_body' / NAMES['lower_body']}"}
    nowhere = tmp_path / "nowhere"
    ev = _evaluation(mini, tmp_path / "out", "--score-only", str(nowhere))
    ev.state.garments = {p.pair_id: ["x"] for p in pairs}
    with pytest.raises(evaluate._Setup, match=f"--score-only {nowhere}: no such folder"):
        ev.find_results(pairs)


def test_results_are_copied_under_the_reference_layout(mini, tmp_path):
    """OUT/images/<category>/<person>_<chunks>.png holds each result's bytes; a pair without a
    result gets no file.
    Mutation caught: the category folder left out of the copy's path."""
    out = tmp_path / "out"
    ev = _evaluation(mini, out)
    pairs = evaluate.limited(ev.read().pairs, 3)
    result = tmp_path / "result.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(result)
    ev.state.results = {"052000_0": result}
    ev.collect_reference_layout(pairs)
    assert [p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png")] == [
        f"images/dresses/{NAMES['dresses']}"]
    assert (out / "images" / "dresses" / NAMES["dresses"]).read_bytes() == result.read_bytes()


def test_problems_txt_lists_unusable_then_failed_pairs_with_their_errors(mini, tmp_path):
    """problems.txt: "unusable: <category>/<pair>: <why>" lines, then "failed: <pair>: <error>"
    sorted by pair id.
    Mutation caught: a failed pair's error left out."""
    out = tmp_path / "out"
    ev = _evaluation(mini, out)
    ev.state.problems = [Problem("052001_0", "dresses", "keypoints file k.json is not readable JSON")]
    ev.state.failed = {"b": "timed out after 3600 s", "a": "no image /x/a.png"}
    ev.write_problems()
    assert (out / "problems.txt").read_text() == (
        "unusable: dresses/052001_0: keypoints file k.json is not readable JSON\n"
        "failed: a: no image /x/a.png\nfailed: b: timed out after 3600 s\n")


def test_report_headers_name_each_metric_and_its_direction_and_nan_is_a_blank(tmp_path):
    """The image table's header is "FID ↓ | KID ↓ | CLIP-T ↑ | CLIP-I ↑ | LPIPS ↓ | SSIM ↑"; a NaN
    value is shown as "–" as a missing one is.
    Mutation caught: CLIP-I headed "CLIP-T"; LPIPS marked higher-is-better; NaN printed "nan"."""
    rows = [{"category": "all", "n": 3, "FID": float("nan"), "KID": None, "CLIP-T": 1.0, "CLIP-I": 2.0,
             "LPIPS": 0.5, "SSIM": 0.25}]
    write_report(tmp_path, rows, None, {"seed": "1"})
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert "| category | n | FID ↓ | KID ↓ | CLIP-T ↑ | CLIP-I ↑ | LPIPS ↓ | SSIM ↑ |" in lines
    assert "| all | 3 | – | – | 1.00 | 2.00 | 0.5000 | 0.2500 |" in lines


def test_missing_json_files_are_named_with_the_remedy(tmp_path):
    """A pair's missing JSON file is named in its PairError; a missing file the run needs is named
    with what belongs there.
    Mutation caught: the path left out of "not found"; the remedy left out."""
    missing = tmp_path / "k.json"
    with pytest.raises(PairError) as exc:
        read_json(missing, "keypoints file")
    assert str(exc.value) == f"keypoints file {missing} not found"
    with pytest.raises(ValueError) as exc:
        read_dataset_json(missing, "caption file", "put the Dress Code-multimodal captions there")
    assert str(exc.value) == f"{missing} not found: put the Dress Code-multimodal captions there"


def test_pose_json_is_in_the_frame_given_width_by_height():
    """pose_json gives the keypoints in pixels of `size` (width, height), with that canvas:
    keypoints on a 100x200 canvas, at 50x400, are (x / 2, y * 2) (hand count, off the integer
    grid); no keypoints give an empty pose on the reference's 384x512 canvas.
    Mutation caught: the frame passed on as height x width (canvas 400x50, x * 4, y / 4)."""
    kp = Keypoints(np.array([[10.0 + i, 20.0 + 2 * i] for i in range(18)]), canvas=(100, 200))
    frame = json.loads(pose_json(kp, (50, 400)))
    assert (frame["canvas_width"], frame["canvas_height"]) == (50, 400)
    expected = [v for i in range(18) for v in (5.0 + 0.5 * i, 40.0 + 4.0 * i, 1.0)]
    assert frame["people"][0]["pose_keypoints_2d"] == pytest.approx(expected, abs=1e-9)
    assert json.loads(pose_json(None)) == {"people": [], "canvas_width": 384, "canvas_height": 512}


def test_a_json_file_that_cannot_be_opened_is_one_pairs_problem(tmp_path):
    """An OSError other than "not found" on opening a pair's JSON file (here a symlink pointing at
    itself: ELOOP) is that pair's PairError naming the file, so the run skips the pair instead of
    stopping on a traceback.
    Mutation caught: read_json catching ValueError only (the OSError escaped)."""
    loop = tmp_path / "k.json"
    loop.symlink_to(loop)
    with pytest.raises(PairError) as exc:
        read_json(loop, "keypoints file")
    assert str(exc.value).startswith(f"keypoints file {loop} is not readable JSON (")
    assert "\n" not in str(exc.value)


def _photo_files(folder: Path) -> None:
    Image.new("RGB", (48, 64), (90, 90, 90)).save(folder / "p.png")
    Image.new("RGB", (30, 40), (200, 30, 40)).save(folder / "g.png")
    drawn = Image.new("L", (48, 64))
    drawn.paste(255, (10, 10, 30, 40))
    drawn.save(folder / "m.png")
    Image.new("L", (48, 64), 127).save(folder / "empty.png")


def test_own_photos_default_ids_pooled_photos_and_header_rules(tmp_path):
    """Rows without an id are named by their row number (1 = the first under the header); FID's
    "all" photos pool every category's; header names are case-insensitive; an unknown column is
    refused by name; a drawn mask with nothing at 128 or above is a problem of its pair.
    Mutation caught: ids from the line number; "all" holding one category only; the header read
    case-sensitively; unknown columns accepted; the empty-mask check dropped."""
    _photo_files(tmp_path)
    (tmp_path / "pairs.csv").write_text(
        "Person,GARMENT,Caption,category,Mask\n"
        "p.png,g.png,a red top,upper_body,m.png\n"
        "p.png,g.png,red trousers,lower_body,m.png\n"
        "p.png,g.png,a red dress,dresses,empty.png\n")
    table = read_photo_table(tmp_path / "pairs.csv")
    assert [(p.pair_id, p.category) for p in table.pairs] == [
        ("1", "upper_body"), ("2", "lower_body"), ("3", "dresses")]
    assert table.real["all"] == [tmp_path / "p.png"] * 3 and table.real["lower_body"] == [tmp_path / "p.png"]
    assert prepare_photo(table.pairs[0]).mask.sum() == 20 * 8 * 30 * 8
    with pytest.raises(PairError, match="the mask is empty: nothing to repaint"):
        prepare_photo(table.pairs[2])
    (tmp_path / "more.csv").write_text("person,garment,caption,category,colour\n")
    with pytest.raises(ValueError, match=r"unknown column\(s\) colour"):
        read_photo_table(tmp_path / "more.csv")


def test_score_only_run_report_and_exit_code(mini, tmp_path, capsys):
    """The whole command with --score-only (no ComfyUI; the demo metric weights): images for 2 of
    the 3 pairs, each the person photo itself at 384x512 (PIL bicubic, as the reference resizes),
    so a paired run scores them against their own photo (LPIPS 0); the third pair is failed, so
    the exit status is 1 and the report says "2 scored of 3 ..., 1 failed"; --k 2 is reported as
    k 2; the reference's triplet files give a "triplet" retrieval row (there are no single files).
    Mutation caught: exit 0 whatever failed; failed pairs not counted for the exit status; the
    paired target given to unpaired runs only (no LPIPS); "k" showing the noun chunks; the single
    and triplet names swapped."""
    from fashion_rag.cli import main
    from tools.demo.metric_weights import write_demo_metric_weights

    weights = tmp_path / "metric_weights"
    write_demo_metric_weights(weights, log=lambda _: None)
    ev = _evaluation(mini, tmp_path / "unused")
    pairs = evaluate.limited(ev.read().pairs, 3)
    folder = tmp_path / "retrieval"
    folder.mkdir()
    for pair in pairs:
        own = f"{pair.category}/cleaned_inshop_imgs/{pair.pair_id[:-2]}_1_cleaned.jpg"
        ranked = {"pred_files": {pair.query: [own]}}
        (folder / f"test_{pair.category}_triplet.json").write_text(json.dumps(ranked))
    images = tmp_path / "images"
    for pair in pairs:
        if pair.category == "upper_body":
            continue
        (images / pair.category).mkdir(parents=True)
        photo = Image.open(pair.person).convert("RGB").resize((384, 512), Image.Resampling.BICUBIC)
        photo.save(images / pair.category / NAMES[pair.category])
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(["evaluate", "--dresscode", str(mini), "--limit", "3", "--k", "2", "--out", str(out),
                 "--score-only", str(images), "--server", "http://127.0.0.1:9", "--metric-weights",
                 str(weights), "--stats-cache", str(tmp_path / "stats"), "--metrics-device", "cpu",
                 "--retrieval", "reference-json", str(folder)])
    err = capsys.readouterr().err
    assert code == 1, err[-3000:]
    assert "evaluate: failed pair 048000_0: no image " in err
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["category"], r["n"], r["LPIPS"]) for r in rows] == [
        ("lower_body", "1", "0.0"), ("dresses", "1", "0.0"), ("all", "2", "0.0")]
    with open(out / "retrieval.csv", newline="") as f:
        assert {r["captions"] for r in csv.DictReader(f)} == {"triplet"}
    report = (out / "report.md").read_text()
    assert "| pairs | 2 scored of 3 (--limit 3), 1 failed |" in report and "| k | 2 |" in report


def test_the_job_table_puts_each_pairs_files_under_the_graphs_columns(mini, tmp_path, capsys):
    """jobs.csv (written before the batch runs; here the batch stops at once, exit 2, the server
    being unreachable): the person photo under the person LoadImage's column, the mask under the
    LoadImageMask's, the retrieved garment, the keypoints JSON under the pose node's column and
    the category under the inversion's.
    Mutation caught: person and mask swapped in the rows; the header's keypoints and category
    columns swapped."""
    folder = tmp_path / "retrieval"
    folder.mkdir()
    out = tmp_path / "out"
    ev = _evaluation(mini, out, "--category", "dresses", "--k", "1", "--limit", "1",
                     "--retrieval", "reference-json", str(folder),
                     "--start-timeout", "5", "--timeout", "5")
    test_set = ev.read()
    pairs = evaluate.limited(test_set.pairs, 1)
    assert [p.pair_id for p in pairs] == ["052000_0"]
    (folder / "test_dresses_triplet.json").write_text(json.dumps(
        {"pred_files": {pairs[0].query: ["dresses/cleaned_inshop_imgs/052001_1_cleaned.jpg"]}}))
    prepared = ev.prepare(pairs)
    ev.write_garments(ev.retrieve(test_set, prepared), prepared)
    workflow = load_workflow(EXAMPLE)
    graph = evaluation_graph(workflow, 1, Sampling())
    assert ev.generate(graph, prepared) == 2
    with open(out / "jobs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    nodes = graph.workflow
    by_class = {n["class_type"]: i for i, n in nodes.items() if n["class_type"] != "LoadImage"}
    inpaint = nodes[by_class["FashionRAGInpaint"]]["inputs"]
    garment = str(nodes[by_class["FashionRAGGarmentInversion"]]["inputs"]["images"][0])  # k 1: no batch
    assert nodes[garment]["class_type"] == "LoadImage"
    keypoints = rows[0].pop(f"{by_class['FashionRAGPoseFromKeypoints']}.keypoints_json")
    assert json.loads(keypoints)["keypoints"][0][:2] == [192.0, 72.0]  # the demo person's nose
    assert rows == [{"id": "052000_0", f"{inpaint['image'][0]}.image": "inputs/052000_0/person.png",
                     f"{by_class['LoadImageMask']}.image": "inputs/052000_0/mask.png",
                     f"{garment}.image": "inputs/garments/052001_1.png",
                     f"{by_class['FashionRAGGarmentInversion']}.category": "dresses"}]



def test_k_above_three_is_refused_before_anything_is_read(tmp_path):
    """--k 4 is a setup error naming the range (the prompt holds at most 3 garments); --k 3 passes.
    Mutation caught: the bound loosened to 4."""
    with pytest.raises(evaluate._Setup, match="--k 4: the prompt holds the pseudo-words of 1 to 3 garments"):
        _evaluation(tmp_path / "DressCode", tmp_path / "out", "--k", "4")
    assert _evaluation(tmp_path / "DressCode", tmp_path / "out", "--k", "3").args.k == 3


def test_preview_labels_give_clip_t_and_clip_i_to_one_decimal():
    """The score node's preview labels: "#<rank>  <score>", then "T <CLIP-T>  I <CLIP-I>" with one
    decimal ("–" for a missing one), then the garment id when given.
    Mutation caught: CLIP-T and CLIP-I swapped; no decimals."""
    from fashion_rag.evaluation.preview import label_lines
    from fashion_rag.evaluation.scores import ImageScore

    assert label_lines(ImageScore(0, 31.25, 27.14, 35.26), 2) == ["#2  31.2", "T 27.1  I 35.3"]
    assert label_lines(ImageScore(1, 30.0, 30.0, None, "048001_1"), 1) == ["#1  30.0", "T 30.0  I –",
                                                                            "048001_1"]


def test_preview_outline_is_two_pixels_wide_on_a_384_wide_image():
    """A 384-pixel-wide preview outlines the mask's box with lines 2 px wide (1 px per 192 px of
    width): a row through the box's middle has 4 pixels of the outline colour (255, 214, 10),
    2 on each side.
    Mutation caught: the outline fixed at 1 px."""
    import torch

    from fashion_rag.evaluation.preview import draw_scores
    from fashion_rag.evaluation.scores import ImageScore

    mask = torch.zeros(256, 384)
    mask[150:221, 200:300] = 1.0
    drawn = draw_scores(torch.zeros(256, 384, 3), mask, ImageScore(0, 1.0, 1.0, 1.0), 1)
    row = (drawn[185] * 255).round().to(torch.uint8).numpy()
    outline = np.nonzero((row == np.array([255, 214, 10], dtype=np.uint8)).all(axis=1))[0]
    assert len(outline) == 4 and outline[1] - outline[0] == 1 and outline[3] - outline[2] == 1
