"""`fashion-rag evaluate` without ComfyUI: the Dress Code reader (layout, captions to query text, pairs
left out as the reference leaves them, problems by pair id), `--check`'s output and exit code, the
reference's retrieval files, your-own-photos CSVs, and the generation graph made from the example
workflow."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from fashion_rag.cli import main
from fashion_rag.cli.batch_jobs import load_workflow, read_jobs
from fashion_rag.cli.evaluate import limited
from fashion_rag.cli.evaluate_graph import GraphError, Sampling, evaluation_graph
from fashion_rag.evaluation.dresscode import prepare_dresscode, read_dresscode
from fashion_rag.evaluation.own_photos import prepare_photo, read_photo_table
from fashion_rag.evaluation.pairs import DatasetError, PairError, reference_file_stem
from fashion_rag.evaluation.rankings import reference_rankings, relevant_garments
from tools.demo.metric_weights import write_demo_metric_weights
from tools.demo.person import KEYPOINTS, draw_person, keypoints_json
from tools.harness import REPO

ALL = ("dresses", "upper_body", "lower_body")
EXAMPLE = REPO / "example_workflows" / "api" / "fashion_rag_text_to_tryon.json"


def _evaluate(capsys, *args: str) -> tuple[int, str, str]:
    """The command in this process (what `python -m fashion_rag evaluate ...` runs): code, stdout, stderr."""
    capsys.readouterr()
    code = main(["evaluate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_captions_become_the_reference_query_text(mini):
    (mini / "fine_captions.json").write_text(json.dumps({
        "048001": ["zebra print", "a long sleeve", "cotton top", "wide collar"],  # 4 chunks: sorted, first 3
        "052001": ["red", "short dress"],  # fewer than 3 fine chunks: not used...
        "051001": ["grey", "shorts"],  # ...so this garment has no caption
    }))
    (mini / "coarse_captions.json").write_text(json.dumps({
        "052000": ["maxi dress", "blue", "floral print"],
        "052001": ["silk", "black dress", "pleated hem"],  # coarse replaces
        "051000": ["denim", "jeans", "slim fit"],
    }))
    with open(mini / "lower_body" / "test_pairs_paired.txt", "a") as f:
        f.write("051000_0.jpg 051000_1.jpg\n")  # a person listed again: taken once
    test_set = read_dresscode(mini, "paired", ALL, n_chunks=3)
    queries = {p.pair_id: p.query for p in test_set.pairs}
    assert queries == {
        "048001_0": "a long sleeve, cotton top, wide collar",
        "052000_0": "blue, floral print, maxi dress",
        "052001_0": "black dress, pleated hem, silk",
        "051000_0": "denim, jeans, slim fit",
    }
    one = read_dresscode(mini, "paired", ("upper_body",), n_chunks=1)
    assert [p.query for p in one.pairs] == ["a long sleeve"]
    # Every other pair's garment has no caption: left out and counted, as the reference does.
    assert test_set.left_out == {"garment without a caption": 5, "person listed before": 1}
    assert not test_set.problems
    assert reference_file_stem("052001_0", "black dress, pleated hem, silk/satin") == \
        "052001_0_black_dress_pleated_hem_silk_satin"


def test_a_malformed_caption_is_a_problem_unless_the_coarse_file_replaces_it(mini):
    """The coarse file replaces fine entries (a malformed fine one included); a malformed entry
    left standing is a problem of its pair. Mutation caught: a malformed fine entry kept as a
    problem after a good coarse one replaced it (the pair was refused)."""
    (mini / "fine_captions.json").write_text(json.dumps({
        "048000": "not a list", "048001": ["a", "b", "c"], "052000": [1, 2, 3]}))
    (mini / "coarse_captions.json").write_text(json.dumps({
        "048000": ["plain", "white", "top"], "048001": {"not": "a list"}}))
    test_set = read_dresscode(mini, "paired", ("upper_body", "dresses"), n_chunks=3)
    assert {p.pair_id: p.query for p in test_set.pairs} == {"048000_0": "plain, top, white"}
    not_a_list = "is not a list of noun chunks in the caption files"
    assert sorted(str(p) for p in test_set.problems) == [
        f"dresses/052000_0: the caption of garment 052000 {not_a_list}",
        f"upper_body/048001_0: the caption of garment 048001 {not_a_list}"]


def test_layout_pairs_gallery_and_real_photos(mini):
    test_set = read_dresscode(mini, "unpaired", ALL, n_chunks=3)
    assert test_set.usable_per_category() == {"dresses": 2, "lower_body": 2, "upper_body": 2}
    pair = next(p for p in test_set.pairs if p.pair_id == "048000_0")
    # Unpaired: the person with the next garment of the list.
    assert pair.garment_id == "048001_1" and pair.person == mini / "upper_body" / "images" / "048000_0.jpg"
    assert pair.keypoints == mini / "upper_body" / "keypoints" / "048000_2.json"
    assert pair.label_map == mini / "upper_body" / "label_maps" / "048000_4.png"
    garment = test_set.gallery["048001_1"]
    assert garment.image == mini / "upper_body" / "cleaned_inshop_imgs" / "048001_1_cleaned.jpg"
    (mini / "upper_body" / "cleaned_inshop_imgs" / "048001_1_cleaned.jpg").unlink()
    again = read_dresscode(mini, "unpaired", ALL, n_chunks=3)
    assert again.gallery["048001_1"].image == mini / "upper_body" / "images" / "048001_1.jpg"
    # FID's real photos: every person of the top-level paired list, per category and all...
    assert [p.name for p in test_set.real["lower_body"]] == ["051000_0.jpg", "051001_0.jpg", "051002_0.jpg"]
    assert len(test_set.real["all"]) == 9
    top = mini / "test_pairs_paired.txt"
    kept = [line for line in top.read_text().splitlines(keepends=True) if "051001" not in line]
    top.write_text("".join(kept))
    assert [p.name for p in read_dresscode(mini, "unpaired", ALL, 3).real["lower_body"]] == [
        "051000_0.jpg", "051002_0.jpg"]
    top.unlink()  # ...else each category's paired list
    assert len(read_dresscode(mini, "unpaired", ALL, 3).real["lower_body"]) == 3
    prepared = prepare_dresscode(pair, "bounding_box")
    assert prepared.person.size == (384, 512) and prepared.mask.shape == (512, 384)
    assert json.loads(prepared.keypoints_json)["keypoints"][0][:2] == [192.0, 72.0]


def test_problems_are_reported_by_pair_id(mini):
    (mini / "dresses" / "keypoints" / "052001_2.json").write_text("{not json")
    (mini / "upper_body" / "label_maps" / "048000_4.png").unlink()
    Image.new("RGB", (384, 512)).save(mini / "lower_body" / "label_maps" / "051000_4.png")
    with open(mini / "lower_body" / "test_pairs_paired.txt", "a") as f:
        f.write("../../etc/passwd 051001_1.jpg\n")
    test_set = read_dresscode(mini, "paired", ALL, n_chunks=3)
    assert [str(p) for p in test_set.problems] == [
        "lower_body/test_pairs_paired.txt line 4: expected '<person>.jpg <garment>.jpg', got "
        "'../../etc/passwd 051001_1.jpg'"]
    found = {}
    for pair in test_set.pairs:
        try:
            prepare_dresscode(pair, "bounding_box")
        except PairError as exc:
            found[pair.pair_id] = str(exc)
    assert set(found) == {"052001_0", "048000_0", "051000_0"}
    assert "052001_2.json is not readable JSON" in found["052001_0"]
    assert "label map" in found["048000_0"] and "not found" in found["048000_0"]
    assert "is a RGB image; expected one channel of label ids" in found["051000_0"]


def test_too_few_noun_chunks_is_a_problem_and_a_missing_caption_file_an_error(mini):
    (mini / "coarse_captions.json").write_text(json.dumps({"048000": ["plain", "top"]}))
    test_set = read_dresscode(mini, "paired", ("upper_body",), n_chunks=3)
    assert [str(p) for p in test_set.problems] == [
        "upper_body/048000_0: its garment's caption has 2 noun chunk(s) (plain, top); --chunks 3 needs 3"]
    (mini / "fine_captions.json").unlink()
    with pytest.raises(DatasetError, match="fine_captions.json not found"):
        read_dresscode(mini, "paired", ALL, n_chunks=3)


def test_check_prints_usable_pairs_and_problems_with_exit_codes(mini, tmp_path, capsys):
    code, out, err = _evaluate(capsys, "--dresscode", str(mini), "--check")
    assert code == 0, err
    assert out.splitlines() == [
        "dresses: 2 usable pairs", "lower_body: 2 usable pairs", "upper_body: 2 usable pairs",
        "left out as the reference does: 3 (garment without a caption)", "6 usable pairs, 0 problem(s)"]
    (mini / "upper_body" / "keypoints" / "048001_2.json").write_text(json.dumps({"keypoints": [[1, 2]]}))
    (mini / "dresses" / "images" / "052000_0.jpg").write_bytes(b"not a jpeg")
    code, out, err = _evaluate(capsys, "--dresscode", str(mini), "--check",
                               "--category", "upper_body,dresses")
    assert code == 1, err
    lines = out.splitlines()
    assert lines[:2] == ["dresses: 1 usable pairs, 1 unusable", "upper_body: 1 usable pairs, 1 unusable"]
    problems = [line for line in lines if line.startswith("problem: ")]
    assert len(problems) == 2 and lines[-1] == "2 usable pairs, 2 problem(s)"
    assert problems[0].startswith("problem: dresses/052000_0: person image: ")
    assert problems[1].startswith("problem: upper_body/048001_0: keypoints file ") and "x 18" in problems[1]
    code, out, err = _evaluate(capsys, "--dresscode", str(tmp_path / "nowhere"), "--check")
    assert (code, out, err) == (2, "", f"evaluate: no Dress Code folder at {tmp_path / 'nowhere'}\n")


def test_missing_metric_weights_and_strict_stop_before_anything_is_generated(mini, tmp_path, capsys):
    out = tmp_path / "out"
    args = ("--dresscode", str(mini), "--out", str(out), "--server", "http://127.0.0.1:9")
    code, _, err = _evaluate(capsys, *args, "--metric-weights", str(tmp_path / "empty"))
    assert code == 2 and "The metric weights folder" in err and str(tmp_path / "empty") in err
    assert not out.exists()  # nothing read past the test set, nothing written
    weights = tmp_path / "metric_weights"
    write_demo_metric_weights(weights, log=lambda _: None)
    (mini / "upper_body" / "label_maps" / "048001_4.png").write_bytes(b"")
    code, _, err = _evaluate(capsys, *args, "--metric-weights", str(weights), "--strict")
    assert code == 1, err
    assert "evaluate: unusable pair upper_body/048001_0: label map: " in err
    assert "1 problem(s) and --strict: nothing generated" in err
    assert not (out / "generated").exists() and not (out / "jobs.csv").exists()


def test_limit_takes_pairs_in_turn_from_each_category(mini):
    pairs = read_dresscode(mini, "paired", ALL, n_chunks=3).pairs
    assert [p.pair_id for p in limited(pairs, 4)] == ["052000_0", "051000_0", "048000_0", "052001_0"]
    assert len(limited(pairs, 100)) == 6 and limited(pairs, None) == pairs


def test_reference_retrieval_files_and_relevance(mini, tmp_path):
    folder = tmp_path / "retrieval"
    folder.mkdir()
    for category in ALL:
        first = {"dresses": "052000", "upper_body": "048000", "lower_body": "051000"}[category]
        files = [f"{category}/cleaned_inshop_imgs/{first}_1_cleaned.jpg",
                 f"{category}/images/{first[:-1]}1_1.jpg"]
        (folder / f"test_{category}_single.json").write_text(json.dumps(
            {"metrics": {}, "pred_files": {"some words": files}}))
    (mini / "dresses" / "cleaned_inshop_imgs" / "052000_1_cleaned.jpg").unlink()
    rankings = reference_rankings(folder, mini, ALL, 1)
    assert rankings.ranked[("dresses", "some words")] == ["052000_1", "052001_1"]
    # The shop photo stands in for a missing cleaned garment, as in the reference.
    assert rankings.images["052000_1"] == mini / "dresses" / "images" / "052000_1.jpg"
    (folder / "test_dresses_single.json").write_text(json.dumps({"pred_files": {"x": ["/etc/passwd"]}}))
    with pytest.raises(DatasetError, match="is not 'dresses/cleaned_inshop_imgs/<name>.jpg'"):
        reference_rankings(folder, mini, ALL, 1)
    with pytest.raises(DatasetError, match="test_dresses_triplet.json not found"):
        reference_rankings(folder, mini, ALL, 3)

    (mini / "coarse_captions.json").write_text(json.dumps({
        "052000": ["blue", "floral print", "maxi dress"], "052001": ["blue", "silk", "wrap dress"],
        "052002": ["blue", "floral print", "maxi dress"]}))
    gallery = read_dresscode(mini, "paired", ("dresses",), n_chunks=3).gallery
    assert relevant_garments(gallery, 1) == {("dresses", "blue"): {"052000_1", "052001_1", "052002_1"}}
    assert relevant_garments(gallery, 3) == {
        ("dresses", "blue, floral print, maxi dress"): {"052000_1", "052002_1"},
        ("dresses", "blue, silk, wrap dress"): {"052001_1"}}


def test_own_photos_table(tmp_path):
    draw_person().save(tmp_path / "anna.png")
    draw_person().resize((192, 256)).save(tmp_path / "small.png")
    Image.new("RGB", (300, 400), (200, 30, 40)).save(tmp_path / "top.png")
    (tmp_path / "anna.json").write_text(keypoints_json())
    # Plain pixel keypoints without a canvas: pixels of the photo they come with (here 192x256).
    (tmp_path / "small.json").write_text(json.dumps([[x / 2, y / 2] for x, y in KEYPOINTS]))
    mask = Image.new("L", (192, 256))
    mask.paste(255, (50, 60, 150, 200))
    mask.save(tmp_path / "drawn.png")
    (tmp_path / "pairs.csv").write_text(
        "id,person,garment,caption,category,keypoints,mask\n"
        "anna,anna.png,top.png,a red top,tops,anna.json,\n"
        "small,small.png,top.png,a red top,upper_body,small.json,drawn.png\n"
        "ghost,ghost.png,top.png,a red top,upper_body,anna.json,\n"
        "out,../anna.png,top.png,a red top,upper_body,anna.json,\n"
        "nothing,anna.png,top.png,a red top,upper_body,,\n")
    test_set = read_photo_table(tmp_path / "pairs.csv")
    assert [p.pair_id for p in test_set.pairs] == ["anna", "small"]
    assert test_set.pairs[0].category == "upper_body"  # "tops" understood
    problems = [str(p) for p in test_set.problems]
    assert problems[0] == f"upper_body/ghost: line 4: person file ghost.png not found in {tmp_path}"
    assert problems[1].startswith("upper_body/out: line 5: The person file '../anna.png' resolves to ")
    assert problems[2] == ("upper_body/nothing: line 6: give a mask or keypoints (the mask is built from "
                           "the keypoints)")
    anna = prepare_photo(test_set.pairs[0])
    # The pose node's mask rule on the demo person's keypoints: shoulders to hips with the arms.
    assert anna.mask[200, 192] and not anna.mask[60, 192] and not anna.mask[450, 192]
    assert json.loads(anna.keypoints_json)["people"][0]["pose_keypoints_2d"][:3] == [192.0, 72.0, 1.0]
    small = prepare_photo(test_set.pairs[1])
    # The drawn mask scaled from 192x256 to 384x512, the keypoints too.
    rows, cols = np.nonzero(small.mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (120, 399, 100, 299)
    assert json.loads(small.keypoints_json)["people"][0]["pose_keypoints_2d"][:3] == [192.0, 72.0, 1.0]
    no_pose = prepare_photo(replace(test_set.pairs[1], keypoints=None))
    assert json.loads(no_pose.keypoints_json)["people"] == []  # no keypoints: an empty pose
    assert test_set.gallery["anna-garment"].caption == "a red top"


def test_generation_graph_from_the_example_workflow(tmp_path):
    workflow = load_workflow(EXAMPLE)
    graph = evaluation_graph(workflow, 3, Sampling(seed=7, steps=2))
    nodes = graph.workflow
    by_class: dict[str, list[str]] = {}
    for nid, node in nodes.items():
        by_class.setdefault(node["class_type"], []).append(nid)
    # The retrieval, the keypoint mask and the other saves are gone; loaders, pose, inversion stay.
    assert sorted(by_class) == sorted([
        "FashionRAGCheckpointCLIPVAELoader", "FashionRAGCLIPVisionLoader", "FashionRAGAdapterLoader",
        "FashionRAGGarmentInversion", "FashionRAGUNetLoader", "LoadImage", "FashionRAGPoseFromKeypoints",
        "FashionRAGInpaint", "LoadImageMask", "ImageBatch", "SaveImage"])
    assert len(by_class["LoadImage"]) == 4 and len(by_class["ImageBatch"]) == 2
    inpaint = nodes[by_class["FashionRAGInpaint"][0]]["inputs"]
    assert inpaint["mask"] == [graph.mask, 0] and inpaint["seed"] == 7 and inpaint["steps"] == 2
    assert inpaint["cfg"] == 7.5 and inpaint["sampler_name"] == "fashion_rag_ddim"
    assert inpaint["paste_back"] is False and inpaint["denoise"] == 1.0
    inversion = nodes[graph.inversion]["inputs"]
    assert "garments" not in inversion and nodes[inversion["images"][0]]["class_type"] == "ImageBatch"
    assert nodes[by_class["SaveImage"][0]]["inputs"]["images"] == [by_class["FashionRAGInpaint"][0], 1]
    assert workflow == load_workflow(EXAMPLE)  # the user's workflow is untouched
    # The batch's job table maps every column onto the graph.
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(",".join(graph.columns()) + "\n" + "p1,a.png,m.png,g1.png,g2.png,g3.png,{},dresses\n")
    table = read_jobs(jobs, graph.workflow)
    assert len(table.columns) == 7 and table.jobs[0].id == "p1"

    del workflow["9"]  # no pose node
    workflow["11"]["inputs"].pop("pose")
    with pytest.raises(GraphError, match="must take its 'pose' from a FashionRAGPoseFromKeypoints node"):
        evaluation_graph(workflow, 1, Sampling())


def test_own_photos_rows_refused_and_the_prepared_person_and_mask(tmp_path):
    """A row repeating an earlier id, one with an empty caption and one naming a folder as its
    person are problems of their line; the person is resized to 384x512 as PIL's bicubic resize
    does; a drawn mask at 1/4 scale keeps a block of exactly 128 (white = repaint from 128 up)
    and leaves a block of 127 out, each source pixel a 4x4 block (nearest: next to 0, a bilinear
    resize pulls the 128 block's edge pixels below 128); normalised keypoints without a canvas
    stay normalised (not read as pixels of the photo).
    Mutation caught: duplicate ids accepted; empty caption accepted; is_file() loosened to
    exists(); the mask read with > 128 or resized bilinear; the person resized bilinear;
    normalised keypoints taken as photo pixels."""
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (128, 96, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    Image.new("RGB", (30, 40), (200, 30, 40)).save(tmp_path / "g.png")
    drawn = np.zeros((128, 96), dtype=np.uint8)
    drawn[40:90, 20:70] = 128
    drawn[100:120, 20:70] = 127
    Image.fromarray(drawn).save(tmp_path / "m.png")
    (tmp_path / "n.json").write_text(json.dumps([[x / 384, y / 512] for x, y in KEYPOINTS]))
    (tmp_path / "sub").mkdir()
    (tmp_path / "pairs.csv").write_text(
        "id,person,garment,caption,category,keypoints,mask\n"
        "a,p.png,g.png,a red top,upper_body,,m.png\n"
        "n,p.png,g.png,a red top,upper_body,n.json,\n"
        "a,p.png,g.png,a red top,upper_body,,m.png\n"
        "e,p.png,g.png,,upper_body,,m.png\n"
        "d,sub,g.png,a red top,upper_body,,m.png\n")
    test_set = read_photo_table(tmp_path / "pairs.csv")
    assert [p.pair_id for p in test_set.pairs] == ["a", "n"]
    assert [str(p) for p in test_set.problems] == [
        "upper_body/a: line 4: id 'a' is used by an earlier row",
        "upper_body/e: line 5: the caption is empty",
        f"upper_body/d: line 6: person file sub not found in {tmp_path}"]
    prepared = prepare_photo(test_set.pairs[0])
    expected = Image.open(tmp_path / "p.png").convert("RGB").resize((384, 512), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(np.asarray(prepared.person), np.asarray(expected))
    mask = np.zeros((512, 384), dtype=bool)
    mask[160:360, 80:280] = True
    np.testing.assert_array_equal(prepared.mask, mask)
    pose = json.loads(prepare_photo(test_set.pairs[1]).keypoints_json)["people"][0]["pose_keypoints_2d"]
    assert pose[:6] == pytest.approx([192.0, 72.0, 1.0, 192.0, 118.0, 1.0])


def test_reference_rankings_keep_the_top_20_of_the_files_own_category(mini, tmp_path):
    """A reference file listing 25 garments gives its first 20 (the rankings the metrics read);
    a garment path of another category in a category's file is refused.
    Mutation caught: the list not cut at 20; the category part of the path left unchecked."""
    folder = tmp_path / "retrieval"
    folder.mkdir()
    for category in ALL:
        files = [f"{category}/cleaned_inshop_imgs/{n:06d}_1_cleaned.jpg" for n in range(100, 125)]
        (folder / f"test_{category}_double.json").write_text(json.dumps({"pred_files": {"q": files}}))
    rankings = reference_rankings(folder, mini, ALL, 2)
    assert rankings.ranked[("upper_body", "q")] == [f"{n:06d}_1" for n in range(100, 120)]
    (folder / "test_lower_body_double.json").write_text(json.dumps(
        {"pred_files": {"q": ["upper_body/cleaned_inshop_imgs/048000_1_cleaned.jpg"]}}))
    with pytest.raises(DatasetError, match="is not 'lower_body/cleaned_inshop_imgs/<name>.jpg'"):
        reference_rankings(folder, mini, ALL, 2)
