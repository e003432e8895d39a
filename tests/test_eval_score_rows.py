"""score_images' checks and rows beyond test_eval_scoring: the mask's shape, every category's
test images and both LPIPS files checked before any network runs; the paired rows against
scikit-image's SSIM and the lpips package's LPIPS per image; a category's FID/KID compared
with its own test images only (a run with that category alone gives the same values).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fashion_rag.evaluation.metrics import ScoredImage, find_metric_weights, score_images

H, W = 64, 48


def _image(path: Path, seed: int, size=(H, W)) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _soft_mask(top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """A box of 1s with soft edges off the 8-bit grid and a row of exactly 0.5."""
    mask = np.zeros((H, W))
    mask[top:bottom, left:right] = 0.8137
    mask[top + 2 : bottom - 2, left + 2 : right - 2] = 1.0
    mask[bottom, left:right] = 0.5
    mask[top - 1, left:right] = 0.49999999999
    return mask


def test_a_mask_with_an_extra_axis_or_a_second_category_without_test_images_is_refused(
        tmp_path, metric_weights_dir):
    """A [1, H, W] mask is refused as not [H, W] (not as a size mismatch); with images of two
    categories, the second category's missing test images are named (every category checked,
    not only the first's). All before any network runs.
    Mutation caught: the mask's ndim check dropped (the message then a size mismatch); the
    test-image check run for the first image's category only (a KeyError later)."""
    weights = find_metric_weights(metric_weights_dir, paired=False)
    image = _image(tmp_path / "d0.png", 1)
    mask = _soft_mask(10, 50, 8, 40)
    with pytest.raises(ValueError) as err:
        score_images([ScoredImage("d0", "dresses", image, None, mask[None], "x", [])], {"dresses": [image]},
                     weights, paired=False, cache_dir=tmp_path / "cache")
    assert "pair 'd0': the mask must be [H, W] with values in [0, 1] (got shape (1, 64, 48)" in str(err.value)
    two = [ScoredImage("d0", "dresses", image, None, mask, "x", []),
           ScoredImage("u0", "upper_body", image, None, mask, "y", [])]
    with pytest.raises(ValueError, match="no test images of category 'upper_body'"):
        score_images(two, {"dresses": [image]}, weights, paired=False, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_paired_scoring_without_the_alexnet_file_is_refused(tmp_path, metric_weights_dir):
    """Paired scoring needs both LPIPS files: weights with alex.pth but no AlexNet backbone are
    refused before any network runs.
    Mutation caught: the check's `or` made `and` (only both files missing refused)."""
    from fashion_rag.evaluation.metrics import MetricWeights, MetricWeightsError

    found = find_metric_weights(metric_weights_dir, paired=True)
    weights = MetricWeights(inception=found.inception, lpips=found.lpips, clip=found.clip, alexnet=None)
    image = _image(tmp_path / "d0.png", 1)
    item = ScoredImage("d0", "dresses", image, image, _soft_mask(10, 50, 8, 40), "x", [])
    with pytest.raises(MetricWeightsError, match="paired scoring needs the LPIPS files"):
        score_images([item], {"dresses": [image]}, weights, paired=True, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_lpips_and_ssim_rows_are_per_image_values_against_the_ground_truth_averaged(
        tmp_path, metric_weights_dir):
    """Generated images against distinct ground truths (same size, no resize): each row's SSIM is
    the mean of scikit-image's per-image values, its LPIPS the mean of the lpips package's (the
    same random weight files), over the row's images.
    Mutation caught: SSIM or LPIPS computed against the generated image itself (SSIM 1, LPIPS 0);
    a row's mean over its first image only."""
    import lpips
    import torchvision
    from skimage.metrics import structural_similarity

    weights = find_metric_weights(metric_weights_dir, paired=True)
    theirs = lpips.LPIPS(net="alex", pnet_rand=True, model_path=str(weights.lpips), verbose=False)
    alexnet = torchvision.models.alexnet()
    alexnet.load_state_dict(torch.load(weights.alexnet, weights_only=True))
    for block in range(1, 6):
        for index, layer in getattr(theirs.net, f"slice{block}").named_children():
            layer.load_state_dict(alexnet.features[int(index)].state_dict())
    # Ground truths close to the generated images (noise), so SSIM is well inside (0, 1).
    cats = ["dresses", "dresses", "upper_body"]
    images, ss, lp = [], [], []
    for n, cat in enumerate(cats):
        gen = _image(tmp_path / f"g{n}.png", 70 + n)
        g = np.asarray(Image.open(gen), dtype=np.float64)
        noise = np.random.default_rng(80 + n).integers(-60 - 40 * n, 60 + 40 * n, g.shape)
        t = np.clip(g + noise, 0, 255).astype(np.uint8)
        Image.fromarray(t).save(tmp_path / f"t{n}.png")
        mask = _soft_mask(10, 50, 8, 40)
        images.append(ScoredImage(f"p{n}", cat, gen, tmp_path / f"t{n}.png", mask, "x", []))
        ss.append(structural_similarity(g / 255.0, t / 255.0, channel_axis=2, gaussian_weights=True,
                                        sigma=1.5, use_sample_covariance=False, data_range=1.0))
        a, b = (torch.from_numpy(x / 255.0).permute(2, 0, 1)[None].float() for x in (g, t))
        with torch.inference_mode():
            lp.append(float(theirs(a, b, normalize=True)))
    assert len({round(s, 3) for s in ss}) == 3 and all(0.05 < s < 0.95 for s in ss)
    assert all(v > 1e-4 for v in lp) and len({round(v, 6) for v in lp}) == 3
    real = {cat: [images[0].generated, images[2].generated] for cat in set(cats)}
    rows = score_images(images, real, weights, paired=True, cache_dir=tmp_path / "cache")
    expected = {"upper_body": [2], "dresses": [0, 1], "all": [0, 1, 2]}
    assert [r["category"] for r in rows] == list(expected)
    for row in rows:
        idx = expected[row["category"]]
        assert row["SSIM"] == pytest.approx(np.mean([ss[i] for i in idx]), abs=2e-6)
        assert row["LPIPS"] == pytest.approx(np.mean([lp[i] for i in idx]), rel=1e-5)


def test_a_categorys_fid_and_kid_are_its_own_images_against_its_own_test_images(tmp_path, metric_weights_dir):
    """The dresses row of a run with dresses and upper-body images equals the dresses row (and
    the "all" row) of a run with the dresses alone: a category's FID and KID compare its own
    generated images with its own test images, whatever else the run holds; "all" compares
    every generated image with every category's test images (differs here).
    Mutation caught: a category's FID/KID against every category's test images; KID of every
    generated image instead of the category's."""
    weights = find_metric_weights(metric_weights_dir, paired=False)
    mask = _soft_mask(10, 50, 8, 40)
    dresses = [ScoredImage(f"d{i}", "dresses", _image(tmp_path / f"d{i}.png", 90 + i), None, mask, "x", [])
               for i in range(3)]
    tops = [ScoredImage(f"u{i}", "upper_body", _image(tmp_path / f"u{i}.png", 95 + i), None, mask, "x", [])
            for i in range(3)]
    real = {"dresses": [_image(tmp_path / f"rd{i}.png", 100 + i) for i in range(3)],
            "upper_body": [_image(tmp_path / f"ru{i}.png", 110 + i) for i in range(3)]}
    mixed = {r["category"]: r for r in score_images(dresses + tops, real, weights, paired=False,
                                                     cache_dir=tmp_path / "cache")}
    alone = {r["category"]: r for r in score_images(dresses, {"dresses": real["dresses"]}, weights,
                                                    paired=False, cache_dir=tmp_path / "cache")}
    for key in ("FID", "KID"):
        assert mixed["dresses"][key] == pytest.approx(alone["dresses"][key], rel=1e-9)
        assert alone["all"][key] == pytest.approx(alone["dresses"][key], rel=1e-9)
        assert mixed["all"][key] != pytest.approx(mixed["dresses"][key], rel=1e-6)
