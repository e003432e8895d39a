"""SSIM of non-square images at the smallest sizes: the short side decides whether a window fits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fashion_rag.evaluation.perceptual import ssim


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(2, 0, 1)[None].float()


@pytest.mark.parametrize("shape", [(11, 40), (40, 11)])
def test_ssim_of_a_thin_image_equals_scikit_image_and_one_pixel_thinner_is_refused(shape):
    """11 x 40 and 40 x 11 (values off the 8-bit grid) leave one row or column of windows inside:
    SSIM is scikit-image's; 10 x 40 and 40 x 10 leave none and are refused, however long the other
    side.
    Mutation caught: the size check on the longer side (max) instead of the shorter (nan)."""
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(sum(shape))
    a, b = rng.random((*shape, 3)), rng.random((*shape, 3))
    expected = structural_similarity(a.astype(np.float32), b.astype(np.float32), channel_axis=2,
                                     gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=1.0)
    assert ssim(_tensor(a), _tensor(b)) == pytest.approx(expected, abs=1e-5)
    thin = tuple(s - 1 if s == 11 else s for s in shape)
    with pytest.raises(ValueError, match="SSIM needs images larger than 10x10 pixels"):
        ssim(_tensor(a[: thin[0], : thin[1]]), _tensor(b[: thin[0], : thin[1]]))
