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


# Dress Code's label ids (its dataset README): 0 background, 2 hair, 4 upper clothes, 6 pants,
# 7 dress, 11 head, 13 right leg. Points on the drawn person (tools/demo/person.py, 384x512).
_LABELS_AT = {  # (x, y) -> label id for the top-and-trousers person, and for the dress
    (20, 20): (0, 0), (192, 40): (2, 2), (192, 72): (11, 11), (192, 200): (4, 7),
    (192, 320): (6, 7), (160, 420): (6, 13),
}
_SILHOUETTES = {"upper_body": ("top",), "lower_body": ("trousers", "shorts", "skirt"), "dresses": ("dress",)}


def test_the_mini_label_maps_and_captions_say_what_each_category_wears(mini):
    """The label maps (read with PIL as palette indices) carry Dress Code's ids where the person
    wears them; the first pair of each category has coarse captions only, the second fine ones,
    the third none; each caption's first chunk names a garment of its own category.

    Mutations caught: the dress labelled with the upper-clothes id; the torso labelled as pants;
    the coarse and fine caption files swapped; every category's garment drawn from the tops."""
    for category, number, dress in (("upper_body", "048000", False), ("lower_body", "051000", False),
                                    ("dresses", "052000", True)):
        labels = np.asarray(Image.open(mini / category / "label_maps" / f"{number}_4.png"))
        assert labels.shape == (512, 384)
        got = {xy: int(labels[xy[1], xy[0]]) for xy in _LABELS_AT}
        assert got == {xy: ids[dress] for xy, ids in _LABELS_AT.items()}, category
    coarse = json.loads((mini / "coarse_captions.json").read_text())
    fine = json.loads((mini / "fine_captions.json").read_text())
    assert sorted(coarse) == ["048000", "051000", "052000"]
    assert sorted(fine) == ["048001", "051001", "052001"]
    for number, chunks in {**coarse, **fine}.items():
        category = {"048": "upper_body", "051": "lower_body", "052": "dresses"}[number[:3]]
        assert chunks[0].split(" ", 1)[1].endswith(_SILHOUETTES[category]), (number, chunks)
