"""The reference's retrieval files read by fashion_rag/evaluation/rankings.py: refusals of garments
from another category and of malformed entries, on the mini Dress Code."""

from __future__ import annotations

import json

import pytest

from fashion_rag.evaluation.pairs import DatasetError
from fashion_rag.evaluation.rankings import reference_rankings


def _files(folder, dresses_files):
    folder.mkdir(exist_ok=True)
    (folder / "test_dresses_double.json").write_text(json.dumps({"pred_files": {"a b": dresses_files}}))
    return folder


def test_a_garment_of_another_category_is_refused(mini, tmp_path):
    """The dresses file ranks dresses only. Mutation caught: the path's category not checked."""
    ok = _files(tmp_path / "r", ["dresses/cleaned_inshop_imgs/052001_1_cleaned.jpg",
                                 "dresses/images/052000_1.jpg"])
    got = reference_rankings(ok, mini, ("dresses",), 2)
    assert got.ranked == {("dresses", "a b"): ["052001_1", "052000_1"]}
    assert got.images == {"052001_1": mini / "dresses" / "cleaned_inshop_imgs" / "052001_1_cleaned.jpg",
                          "052000_1": mini / "dresses" / "images" / "052000_1.jpg"}
    _files(tmp_path / "r", ["upper_body/cleaned_inshop_imgs/048000_1_cleaned.jpg"])
    wrong = "garment path 'upper_body/cleaned_inshop_imgs/048000_1_cleaned.jpg' is not 'dresses/"
    with pytest.raises(DatasetError, match=wrong):
        reference_rankings(tmp_path / "r", mini, ("dresses",), 2)


@pytest.mark.parametrize("data,message", [
    ({"pred_files": {"q": "dresses/images/052000_1.jpg"}}, "the garments of 'q' are not a list of paths"),
    ({"pred_files": ["q"]}, "has no 'pred_files' object"),
    ([1, 2], "has no 'pred_files' object"),
    ({"pred_files": {"q": ["dresses/label_maps/052000_4.png"]}}, "is not 'dresses/cleaned_inshop_imgs"),
    ({"pred_files": {"q": ["dresses/cleaned_inshop_imgs/sub/052000_1_cleaned.jpg"]}},
     "is not 'dresses/cleaned_inshop_imgs"),
])
def test_malformed_retrieval_files_are_refused(mini, tmp_path, data, message):
    """Mutation caught (the path one level deeper): the part count checked as at least 3, not
    exactly 3 (garment "sub" accepted)."""
    (tmp_path / "test_dresses_single.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=message):
        reference_rankings(tmp_path, mini, ("dresses",), 1)


def test_a_garment_name_with_a_dot_keeps_it_in_its_id(mini, tmp_path):
    """Only the extension is cut: "052000.v2_1_cleaned.jpg" is garment "052000.v2_1". Mutation
    caught: the name cut at its first dot."""
    folder = _files(tmp_path / "r", ["dresses/cleaned_inshop_imgs/052000.v2_1_cleaned.jpg"])
    got = reference_rankings(folder, mini, ("dresses",), 2)
    assert got.ranked == {("dresses", "a b"): ["052000.v2_1"]}
    assert got.images == {"052000.v2_1": mini / "dresses" / "images" / "052000.v2_1.jpg"}


def test_only_a_trailing_cleaned_is_cut_from_the_id(mini, tmp_path):
    """"<id>_cleaned.jpg" is garment <id>; a "_cleaned" inside the name stays in the id
    ("052000_cleaned_1.jpg" in images/ is garment "052000_cleaned_1", read from that file).
    Mutation caught: every "_cleaned" removed from the name (garment "052000_1")."""
    folder = _files(tmp_path / "r", ["dresses/images/052000_cleaned_1.jpg",
                                     "dresses/cleaned_inshop_imgs/052001_1_cleaned.jpg"])
    got = reference_rankings(folder, mini, ("dresses",), 2)
    assert got.ranked == {("dresses", "a b"): ["052000_cleaned_1", "052001_1"]}
    assert got.images["052000_cleaned_1"] == mini / "dresses" / "images" / "052000_cleaned_1.jpg"
