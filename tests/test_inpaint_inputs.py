"""The checks and forms of one inpainting run's inputs (fashion_rag/inpaint/inputs.py), on plain
tensors: no ComfyUI, no model."""

from __future__ import annotations

import pytest
import torch

from fashion_rag.inpaint.inputs import masked_pixels, one_person_per_prompt, paste_outside, prepare_inputs


def _mask(b: int, h: int = 16, w: int = 24) -> torch.Tensor:
    mask = torch.zeros(b, h, w)
    mask[:, 4:12, 8:16] = 1.0
    return mask


def test_height_alone_off_the_grid_is_refused():
    """An image 24 wide (divisible by 8) and 20 high: refused, with the crop that fits (24x16).
    Mutation caught: only the width checked."""
    with pytest.raises(ValueError, match=r"^The image is 24x20; the UNet needs .* \(e.g. to 24x16\)"):
        prepare_inputs(torch.rand(1, 20, 24, 3), _mask(1, 20, 24), None)


def test_rgba_image_keeps_its_rgb():
    """An RGBA IMAGE (a PNG with alpha) gives its 3 colour channels. Mutation caught: the alpha
    kept (4 channels into a 3-channel VAE)."""
    rgba = torch.rand(1, 16, 24, 4)
    pixels, _, _ = prepare_inputs(rgba, _mask(1), None)
    assert torch.equal(pixels, rgba[..., :3])


def test_mask_count_must_be_one_or_one_per_image():
    """2 masks for 3 images is refused (not only more masks than images). Mutation caught: the
    check reduced to mask count > image count."""
    with pytest.raises(ValueError, match="^2 masks for 3 images: give one mask or one per image"):
        prepare_inputs(torch.rand(3, 16, 24, 3), _mask(2), None)


def test_pose_count_must_be_one_or_one_per_image():
    """2 poses for 3 images: a message with both counts, in that order. Mutations caught: the
    check reduced to pose count > image count; the counts swapped in the message."""
    with pytest.raises(ValueError, match=r"^2 poses for 3 images: give one pose or one per image"):
        prepare_inputs(torch.rand(3, 16, 24, 3), _mask(1), torch.rand(2, 18, 16, 24))


def test_an_empty_mask_of_any_image_is_named():
    """Three images, the second one's mask empty (0.4999 everywhere, below the 0.5 threshold):
    refused naming image 1. Mutation caught: only the first image's mask checked."""
    mask = _mask(3)
    mask[1] = 0.4999
    with pytest.raises(ValueError, match=r"^The mask is empty \(no pixel >= 0.5\) for image\(s\) \[1\]"):
        prepare_inputs(torch.rand(3, 16, 24, 3), mask, None)


def test_mask_is_binarised_at_one_half_and_pose_made_float32():
    """Mask values 0.5 repaint, 0.4999 keep; a 2-D mask is one mask for the batch; a float16
    pose (one for two images) comes back float32 and expanded. Mutations caught: > 0.5; the
    pose left in float16."""
    mask = torch.full((16, 24), 0.4999)
    mask[0, 0], mask[5, 7] = 0.5, 1.0
    pose = torch.rand(1, 18, 8, 12).half()
    pixels, m, p = prepare_inputs(torch.rand(2, 16, 24, 3), mask, pose)
    want = torch.zeros(2, 1, 16, 24)
    want[:, 0, 0, 0] = want[:, 0, 5, 7] = 1.0
    assert torch.equal(m, want)
    assert p.dtype == torch.float32 and p.shape == (2, 18, 8, 12)
    assert torch.equal(p[1], pose[0].float())


def test_one_prompt_for_several_people_is_not_a_candidate_batch():
    """Two people and one prompt: the inputs unchanged, no shared noise (the prompt applies to
    both). Mutation caught: a single prompt treated as candidates (refused for two people)."""
    pixels, mask = torch.rand(2, 16, 24, 3), _mask(2)[:, None]
    out = one_person_per_prompt(pixels, mask, None, 1)
    assert out[0] is pixels and out[1] is mask and out[2] is None and out[3] is False


def test_masked_pixels_and_paste_outside_by_hand():
    """masked_pixels: the repaint region becomes 0.5 grey, the rest kept; paste_outside with a
    soft mask m: result * m + pixels * (1 - m). Values off the 8-bit grid."""
    pixels = torch.tensor([[[[0.1, 0.7, 0.33], [0.9, 0.2, 0.6]]]])  # [1, 1, 2, 3]
    mask = torch.tensor([[[[0.0, 1.0]]]])  # [1, 1, 1, 2]
    assert torch.allclose(masked_pixels(pixels, mask),
                          torch.tensor([[[[0.1, 0.7, 0.33], [0.5, 0.5, 0.5]]]]), atol=1e-7)
    result = torch.tensor([[[[0.4, 0.4, 0.4], [0.05, 0.95, 0.5]]]])
    soft = torch.tensor([[[[0.25, 0.8]]]])
    want = torch.tensor([[[[0.175, 0.625, 0.3475], [0.22, 0.8, 0.52]]]])
    assert torch.allclose(paste_outside(result, pixels, soft), want, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 18, 24), (1, 18, 16, 24, 1)])
def test_a_pose_of_another_rank_is_refused_even_with_18_channels(shape):
    """A 3-D pose [1, 18, 24] (a row of heatmaps) and a 5-D one [1, 18, 16, 24, 1]: dimension 1
    is 18 in both, yet neither is [B, 18, H, W]; refused with the shape given.
    Mutation caught: the rank check (pose.ndim != 4) dropped (the 3-D pose was taken and
    expanded to [1, 1, 18, 24])."""
    with pytest.raises(ValueError, match=r"^pose must be FASHION_RAG_POSE \[B, 18, H, W\], got "
                                         + r"\(" + ", ".join(map(str, shape)) + r"\)$"):
        prepare_inputs(torch.rand(1, 16, 24, 3), _mask(1), torch.rand(shape))


def test_fewer_prompts_than_people_is_refused():
    """2 prompts for 3 person images (neither one prompt, one per image, nor one person): refused
    with both counts, not passed on as a batch whose prompts and people do not pair up.
    Mutation caught: `prompts == b` made `prompts <= b` (2 prompts for 3 people went through)."""
    with pytest.raises(ValueError, match=r"^2 prompts \(one per garment\) for 3 person images: give one "):
        one_person_per_prompt(torch.rand(3, 16, 24, 3), _mask(3)[:, None], None, 2)
