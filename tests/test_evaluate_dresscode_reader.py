"""Details of the Dress Code reader (fashion_rag/evaluation/dresscode.py) on the mini Dress Code:
category order, the gallery's queries and captions, malformed pair lines and label maps, each
with expected values written out by hand."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from fashion_rag.evaluation.dresscode import prepare_dresscode, read_dresscode


def test_categories_are_read_in_sorted_order_whatever_order_they_are_given(mini):
    """Mutation caught: the categories read in the order given (the reference sorts them)."""
    test_set = read_dresscode(mini, "paired", ("upper_body", "lower_body", "dresses"), n_chunks=3)
    assert [p.pair_id for p in test_set.pairs] == [
        "052000_0", "052001_0", "051000_0", "051001_0", "048000_0", "048001_0"]
    assert [p.name for p in test_set.real["all"]][::3] == ["052000_0.jpg", "051000_0.jpg", "048000_0.jpg"]


def test_the_gallery_has_each_garments_sorted_caption_and_queries_of_1_to_3_chunks(mini):
    """Mutations caught: the gallery's 3-chunk queries left out; its caption in file order."""
    (mini / "coarse_captions.json").write_text(json.dumps({
        "052000": ["zebra print", "a-line", "midi dress", "belted"], "052001": ["silk", "dress"]}))
    (mini / "fine_captions.json").write_text("{}")
    gallery = read_dresscode(mini, "paired", ("dresses",), n_chunks=1).gallery
    four = gallery["052000_1"]
    assert four.caption == "a-line, belted, midi dress, zebra print"
    assert four.queries == {1: "a-line", 2: "a-line, belted", 3: "a-line, belted, midi dress"}
    assert gallery["052001_1"].caption == "dress, silk"
    assert gallery["052001_1"].queries == {1: "dress", 2: "dress, silk"}
    assert gallery["052002_1"].caption == "" and gallery["052002_1"].queries == {}


def test_a_pair_line_with_three_names_is_a_problem(mini):
    """Mutation caught: lines with more than two names accepted (the third ignored)."""
    with open(mini / "dresses" / "test_pairs_paired.txt", "a") as f:
        f.write("052001_0.jpg 052001_1.jpg 052000_1.jpg\n")
    test_set = read_dresscode(mini, "paired", ("dresses",), n_chunks=3)
    assert [str(p) for p in test_set.problems] == [
        "dresses/test_pairs_paired.txt line 4: expected '<person>.jpg <garment>.jpg', got "
        "'052001_0.jpg 052001_1.jpg 052000_1.jpg'"]


def test_a_smaller_grey_label_map_is_resized_without_new_label_ids(mini):
    """A one-channel (mode L) label map at half size gives the mask of the same map scaled up by
    repeating each pixel twice each way (the reference's nearest-neighbour resize). Mutation
    caught: a bilinear resize (mixing ids 0 and 4 at the top's edges into 1-3: hat, hair,
    sunglasses, all fixed)."""
    pairs = read_dresscode(mini, "paired", ("upper_body",), 3).pairs
    pair = next(p for p in pairs if p.pair_id == "048000_0")
    full = np.asarray(Image.open(pair.label_map))
    small = full[::2, ::2]
    Image.fromarray(np.ascontiguousarray(small)).save(pair.label_map)
    from_small = prepare_dresscode(pair, "mask").mask
    Image.fromarray(small.repeat(2, 0).repeat(2, 1)).save(pair.label_map)
    assert np.array_equal(np.asarray(prepare_dresscode(pair, "mask").mask), np.asarray(from_small))


def test_keypoint_rows_of_x_and_y_alone_are_read(mini):
    """[x, y] rows without score and id (the mask rule reads x and y only). Mutation caught: rows
    of fewer than 3 values refused."""
    pairs = read_dresscode(mini, "paired", ("dresses",), 3).pairs
    pair = next(p for p in pairs if p.pair_id == "052000_0")
    rows = json.loads(pair.keypoints.read_text())["keypoints"]
    pair.keypoints.write_text(json.dumps({"keypoints": [[x + 0.25, y] for x, y, *_ in rows]}))
    pose = json.loads(prepare_dresscode(pair, "bounding_box").keypoints_json)["keypoints"]
    assert pose[0] == [rows[0][0] + 0.25, rows[0][1]] and len(pose) == 18


def test_blank_lines_are_skipped_and_a_missing_paired_list_gives_no_real_photos(mini):
    """Mutations caught: blank pair lines reported as problems; a category without any paired list
    (and no top-level one) stopping the read instead of giving no real photos."""
    pairs_file = mini / "dresses" / "test_pairs_unpaired.txt"
    lines = pairs_file.read_text().splitlines()
    pairs_file.write_text(lines[0] + "\n\n   \n" + "\n".join(lines[1:]) + "\n\n")
    (mini / "test_pairs_paired.txt").unlink()
    (mini / "dresses" / "test_pairs_paired.txt").unlink()
    test_set = read_dresscode(mini, "unpaired", ("dresses", "lower_body"), 3)
    assert not test_set.problems
    assert [p.pair_id for p in test_set.pairs] == ["052000_0", "052002_0", "051000_0", "051002_0"]
    assert test_set.real["dresses"] == []
    assert [p.name for p in test_set.real["all"]] == ["051000_0.jpg", "051001_0.jpg", "051002_0.jpg"]
