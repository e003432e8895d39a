"""score_images' rows, retrieval R@k / P@k and the report files.

CLIP-T / CLIP-I rows are checked against the score node's own per-image functions (scores.py)
averaged by hand; the sanity run scores images against themselves; R@k / P@k are hand counts on
a labelled toy catalog; the report is read back with the csv module.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fashion_rag.evaluation.metrics import (
    ScoredImage,
    find_metric_weights,
    retrieval_scores,
    score_images,
    write_report,
)
from fashion_rag.evaluation.scores import clip_i_scores, clip_t_scores
from fashion_rag.openclip_encoder import GarmentEncoder
from tools.demo.encoder import TINY_ARCH

H, W = 64, 48


def _image(path: Path, seed: int, size=(H, W)) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _pixels(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)


def _soft_mask(top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """A box of 1s with soft edges: a row of exactly 0.5 (in, as the UNet binarises), a row just
    under 0.5 that float32 would round up to 0.5, and values off the 8-bit grid."""
    mask = np.zeros((H, W))
    mask[top:bottom, left:right] = 0.8137
    mask[top + 2 : bottom - 2, left + 2 : right - 2] = 1.0
    mask[bottom, left:right] = 0.5
    mask[top - 1, left:right] = 0.49999999999
    mask[top:bottom, right] = 0.3337
    return mask


def test_images_scored_against_themselves(tmp_path, metric_weights_dir):
    """FID 0, LPIPS 0, SSIM 1 for images scored against themselves, the test photos listed twice.
    Mutation caught: the test photos not deduplicated before FID/KID."""
    weights = find_metric_weights(metric_weights_dir, paired=True)
    files = {cat: [_image(tmp_path / f"{cat}{i}.png", hash((cat, i)) % 1000) for i in range(2)]
             for cat in ("dresses", "upper_body")}
    mask = _soft_mask(10, 50, 8, 40)
    images = [ScoredImage(f"{cat}{i}", cat, f, f, mask, "a dress", []) for cat, fs in files.items()
              for i, f in enumerate(fs)]
    seen: dict[str, tuple[int, int]] = {}
    # Each test photo listed twice: taken once (twice would shrink the covariance, FID > 0).
    real = {cat: fs + fs for cat, fs in files.items()}
    rows = score_images(images, real, weights, paired=True, cache_dir=tmp_path / "cache",
                        progress=lambda stage, done, total: seen.__setitem__(stage, (done, total)))
    assert seen == {"generated features": (4, 4), "test-set features": (4, 4), "LPIPS/SSIM": (4, 4),
                    "CLIP": (4, 4)}
    assert [r["category"] for r in rows] == ["upper_body", "dresses", "all"]
    assert [r["n"] for r in rows] == [2, 2, 4]
    for row in rows:
        assert list(row) == ["category", "n", "FID", "KID", "CLIP-T", "CLIP-I", "LPIPS", "SSIM"]
        assert row["FID"] == pytest.approx(0, abs=1e-9)
        assert row["LPIPS"] == 0.0
        assert row["SSIM"] == pytest.approx(1.0, abs=1e-6)
        assert row["CLIP-I"] is None  # made without garments


def test_clip_rows_are_scores_py_per_image_values_averaged(tmp_path, metric_weights_dir):
    weights = find_metric_weights(metric_weights_dir, paired=False)
    garment = [_image(tmp_path / f"g{i}.jpg", 40 + i, size=(64, 48)) for i in range(3)]
    wide = _image(tmp_path / "wide.jpg", 50, size=(40, 56))  # garments of two sizes for one image
    images = [
        ScoredImage("d0", "dresses", _image(tmp_path / "d0.png", 1), None, _soft_mask(10, 50, 8, 40),
                    "a red floral dress", [garment[0], garment[1]]),
        ScoredImage("d1", "dresses", _image(tmp_path / "d1.png", 2), None, _soft_mask(5, 30, 10, 30),
                    "a black dress", []),
        ScoredImage("l0", "lower_body", _image(tmp_path / "l0.png", 3), None, _soft_mask(30, 60, 4, 44),
                    "blue denim trousers", [garment[2], wide]),
    ]
    real = {cat: [_image(tmp_path / f"r_{cat}{i}.png", 60 + i) for i in range(2)]
            for cat in ("dresses", "lower_body")}
    rows = score_images(images, real, weights, paired=False, cache_dir=tmp_path / "cache")

    encoder = GarmentEncoder(weights.clip, TINY_ARCH)
    t, i = {}, {}
    for item in images:
        pixels, mask = _pixels(item.generated)[None], torch.from_numpy(item.mask)
        t[item.pair_id] = float(clip_t_scores(encoder, pixels, mask, item.caption)[0])
        each = [clip_i_scores(encoder, pixels, mask, _pixels(g)[None], item.category)[0]
                for g in item.garments]
        i[item.pair_id] = float(np.mean(each)) if each else None
    expected = [
        ("lower_body", 1, t["l0"], i["l0"]),
        ("dresses", 2, (t["d0"] + t["d1"]) / 2, i["d0"]),
        ("all", 3, (t["d0"] + t["d1"] + t["l0"]) / 3, (i["d0"] + i["l0"]) / 2),
    ]
    assert [(r["category"], r["n"]) for r in rows] == [(c, n) for c, n, _, _ in expected]
    for row, (_, _, clip_t, clip_i) in zip(rows, expected, strict=True):
        assert row["CLIP-T"] == pytest.approx(clip_t, abs=1e-4)
        assert row["CLIP-I"] == pytest.approx(clip_i, abs=1e-4)
        assert "LPIPS" not in row and "SSIM" not in row
    assert rows[0]["FID"] is None and rows[0]["KID"] is None  # one image: no covariance
    assert rows[1]["FID"] > 0 and rows[2]["KID"] is not None


@pytest.mark.parametrize("change,message", [
    (lambda m: np.zeros_like(m), "pair 'd0': the mask is empty (no pixel >= 0.5)"),
    (lambda m: m[:, :40], "pair 'd0': the mask is 40x64 but the image is 48x64"),
    (lambda m: m * 2, "pair 'd0': the mask must be [H, W] with values in [0, 1]"),
])
def test_a_bad_mask_names_its_pair(tmp_path, metric_weights_dir, change, message):
    weights = find_metric_weights(metric_weights_dir, paired=False)
    image = _image(tmp_path / "d0.png", 1)
    item = ScoredImage("d0", "dresses", image, None, change(_soft_mask(10, 50, 8, 40)), "a dress", [])
    with pytest.raises(ValueError) as err:
        score_images([item], {"dresses": [image]}, weights, paired=False, cache_dir=tmp_path / "cache")
    assert message in str(err.value)
    assert not (tmp_path / "cache").exists()  # refused before any network ran


def test_inputs_that_cannot_be_scored_are_refused_by_pair(tmp_path, metric_weights_dir):
    weights = find_metric_weights(metric_weights_dir, paired=False)
    image = _image(tmp_path / "d0.png", 1)
    mask = _soft_mask(10, 50, 8, 40)
    with pytest.raises(ValueError, match="pair 'd0' has no ground-truth image"):
        score_images([ScoredImage("d0", "dresses", image, None, mask, "x", [])], {"dresses": [image]},
                     weights, paired=True, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="pair 'd0': category 'shoes'"):
        score_images([ScoredImage("d0", "shoes", image, None, mask, "x", [])], {"shoes": [image]},
                     weights, paired=False, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="no test images of category 'dresses'"):
        score_images([ScoredImage("d0", "dresses", image, None, mask, "x", [])], {"upper_body": [image]},
                     weights, paired=False, cache_dir=tmp_path)


def test_retrieval_recall_and_precision_are_hand_counts():
    ranked = {
        "a floral dress": ["d3", "d1", "d7", "d2", "d9"],  # relevant d1, d2: found 0, 1, 2 at k 1, 3, 5
        "a black dress": ["d5", "d6", "d4"],  # relevant d8: never found
        "a white shirt": ["u1", "u5", "u4", "u6", "u9", "u2"],  # relevant u1, u4, u9: 1, 2, 3
    }
    relevant = {"a floral dress": {"d1", "d2"}, "a black dress": {"d8"}, "a white shirt": {"u1", "u4", "u9"}}
    categories = {"a floral dress": "dresses", "a black dress": "dresses", "a white shirt": "upper_body"}
    rows = retrieval_scores(ranked, relevant, categories, ks=(1, 3, 5))
    expected = [
        {"category": "upper_body", "queries": 1, "R@1": 1.0, "P@1": 1 / 3, "R@3": 1.0, "P@3": 2 / 3,
         "R@5": 1.0, "P@5": 1.0},
        {"category": "dresses", "queries": 2, "R@1": 0.0, "P@1": 0.0, "R@3": 0.5, "P@3": 0.25,
         "R@5": 0.5, "P@5": 0.5},
        {"category": "all", "queries": 3, "R@1": 1 / 3, "P@1": 1 / 9, "R@3": 2 / 3, "P@3": 7 / 18,
         "R@5": 2 / 3, "P@5": 2 / 3},
    ]
    assert rows == [pytest.approx(row) for row in expected]
    default = retrieval_scores(ranked, relevant, categories)
    assert [k for k in default[0] if "@" in k] == ["R@1", "P@1", "R@3", "P@3", "R@5", "P@5", "R@10", "P@10",
                                                  "R@20", "P@20"]
    assert default[2]["R@20"] == pytest.approx(2 / 3) and default[2]["P@20"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="'a black dress' has no relevant garment"):
        retrieval_scores(ranked, {**relevant, "a black dress": set()}, categories)


def test_report_and_csv(tmp_path):
    rows = [{"category": "dresses", "n": 2, "FID": 12.3456, "KID": 0.0012345, "CLIP-T": 30.5, "CLIP-I": None,
             "LPIPS": 0.25, "SSIM": 0.875},
            {"category": "all", "n": 2, "FID": None, "KID": None, "CLIP-T": 30.5, "CLIP-I": 70.25,
             "LPIPS": 0.25, "SSIM": 0.875}]
    retrieval = [{"category": "all", "captions": "triplet", "queries": 4, "R@1": 0.5, "P@1": 0.25}]
    settings = {"seed": "1234", "steps": "50", "weights | unet": "unet_120000.pth sha256 ab12"}
    write_report(tmp_path, rows, retrieval, settings)

    with open(tmp_path / "metrics.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table == [["category", "n", "FID", "KID", "CLIP-T", "CLIP-I", "LPIPS", "SSIM"],
                     ["dresses", "2", "12.3456", "0.0012345", "30.5", "", "0.25", "0.875"],
                     ["all", "2", "", "", "30.5", "70.25", "0.25", "0.875"]]
    with open(tmp_path / "retrieval.csv", newline="") as f:
        assert list(csv.reader(f)) == [["category", "captions", "queries", "R@1", "P@1"],
                                       ["all", "triplet", "4", "0.5", "0.25"]]
    report = (tmp_path / "report.md").read_text()
    assert "| seed | 1234 |" in report and "| weights \\| unet | unet_120000.pth sha256 ab12 |" in report
    assert "| dresses | 2 | 12.35 | 0.00123 | 30.50 | – | 0.2500 | 0.8750 |" in report
    assert "| all | 2 | – | – | 30.50 | 70.25 | 0.2500 | 0.8750 |" in report
    assert "| all | triplet | 4 | 50.0 | 25.0 |" in report
    assert "docs/metrics.md of the Fashion-RAG node pack." in report and "**P@k**" in report
    assert "file://" not in report  # no docs file given (a library install): cited by name only

    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match="no metric rows"):
        write_report(tmp_path, [], None, settings)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    docs = tmp_path / "docs" / "metrics.md"
    for present in (False, True):  # a link only to a file that is there
        if present:
            docs.parent.mkdir()
            docs.write_text("# metrics\n")
        write_report(tmp_path, rows, retrieval, settings, docs=docs)
        cited = f"docs/metrics.md of the Fashion-RAG node pack ({docs.as_uri()})."
        assert (cited in (tmp_path / "report.md").read_text()) == present


def test_mask_bounds_and_repeated_pairs_are_checked_before_scoring(tmp_path, metric_weights_dir):
    """A mask with a negative value is refused; a mask whose repainted pixels are exactly 0.5
    passes the mask checks (and the run stops at the next check: no test images); a pair listed
    twice is refused. All before any network runs.
    Mutation caught: the lower bound 0 <= mask dropped; the empty-mask check at > 0.5 instead of
    >= 0.5; the repeated-pair check dropped."""
    weights = find_metric_weights(metric_weights_dir, paired=False)
    image = _image(tmp_path / "d0.png", 1)
    negative = _soft_mask(10, 50, 8, 40)
    negative[0, 0] = -0.001
    half = np.where(_soft_mask(10, 50, 8, 40) >= 0.5, 0.5, 0.0)
    mask = _soft_mask(10, 50, 8, 40)
    cases = [
        ([ScoredImage("d0", "dresses", image, None, negative, "x", [])], {"dresses": [image]},
         "pair 'd0': the mask must be [H, W] with values in [0, 1]"),
        ([ScoredImage("d0", "dresses", image, None, half, "x", [])], {"upper_body": [image]},
         "no test images of category 'dresses'"),
        ([ScoredImage("d0", "dresses", image, None, mask, "x", []),
          ScoredImage("d0", "dresses", image, None, mask, "y", [])], {"dresses": [image]},
         "pair 'd0' is listed twice"),
    ]
    for images, real, message in cases:
        with pytest.raises(ValueError) as err:
            score_images(images, real, weights, paired=False, cache_dir=tmp_path / "cache")
        assert message in str(err.value)
    assert not (tmp_path / "cache").exists()


def test_retrieval_scores_refuse_what_they_cannot_count():
    """No queries, a k below 1 and a query of an unknown category are refused with a message.
    Mutation caught: the empty check dropped (ZeroDivisionError); k = 0 allowed; the category
    check loosened to a missing category only (the query then counted in "all" alone)."""
    ranked, relevant = {"q": ["a", "b"]}, {"q": {"a"}}
    with pytest.raises(ValueError, match="no retrieval results to score"):
        retrieval_scores({}, {}, {})
    with pytest.raises(ValueError, match=r"k must be at least 1: \[0, 1\]"):
        retrieval_scores(ranked, relevant, {"q": "dresses"}, ks=(0, 1))
    with pytest.raises(ValueError, match="query 'q' has category 'shoes'; expected one of"):
        retrieval_scores(ranked, relevant, {"q": "shoes"}, ks=(1,))
    assert retrieval_scores(ranked, relevant, {"q": "dresses"}, ks=(1,))[-1] == {
        "category": "all", "queries": 1, "R@1": 1.0, "P@1": 1.0}


def test_a_garment_listed_twice_in_a_ranking_is_found_once():
    """A ranking may name one garment twice (a reference file listing it by its cleaned photo and
    by its shop photo gives the same id twice); it is one relevant garment found, so P@k stays a
    share of the relevant garments, at most 1. Hand count, relevant {g1, g2}, ranked g1 g1 x g2:
    found 1, 1, 1, 2 at k = 1..4 -> P@k 0.5, 0.5, 0.5, 1.0; R@k 1 throughout.
    Mutation caught: found counted over the ranked list, not the set of its ids (P@2 = 1.0,
    P@4 = 1.5)."""
    ranked = {"q": ["g1", "g1", "x", "g2"], "r": ["y", "h1", "h1"]}
    relevant = {"q": {"g1", "g2"}, "r": {"h1"}}
    rows = retrieval_scores(ranked, relevant, {"q": "dresses", "r": "dresses"}, ks=(1, 2, 3, 4))
    assert rows[-1] == pytest.approx({
        "category": "all", "queries": 2, "R@1": 0.5, "P@1": 0.25, "R@2": 1.0, "P@2": 0.75,
        "R@3": 1.0, "P@3": 0.75, "R@4": 1.0, "P@4": 1.0})
    assert all(0.0 <= v <= 1.0 for row in rows for key, v in row.items() if "@" in key)
