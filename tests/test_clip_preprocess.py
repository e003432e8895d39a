"""Reference-exact CLIP preprocessing of garment images (docs/method.md, "Garment → pseudo-words", step 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil

from fashion_rag.inversion.clip_preprocess import (
    preprocess_garments,
    resize_shape,
    to_uint8_rgb,
)

# OpenAI CLIP's normalisation, as published (not the module's constants).
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def processor() -> CLIPImageProcessorPil:
    # transformers' PIL-backed CLIP processor on uint8 input: the computation the reference ran
    # (transformers 4.26 on uint8). Default config = OpenAI CLIP's: shortest edge 224, bicubic.
    return CLIPImageProcessorPil()


def _garment(h: int = 512, w: int = 384, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Smooth content plus noise, so resampling differences would show.
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 / w), (yy * 255 / h), ((xx + yy) % 64) * 4], axis=-1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def test_geometry_truncates_long_side():
    assert resize_shape(512, 384) == (298, 224)  # int(224 * 512 / 384) = int(298.67)
    assert resize_shape(384, 512) == (224, 298)
    assert resize_shape(1024, 768) == (298, 224)
    assert resize_shape(224, 224) == (224, 224)


@pytest.mark.parametrize("shape", [(512, 384), (1024, 768), (300, 500), (224, 224), (100, 90)])
def test_matches_transformers_pil_processor_on_uint8(processor, shape):
    img = _garment(*shape)
    want = processor(images=img, return_tensors="pt").pixel_values
    got = preprocess_garments(img)
    assert got.shape == (1, 3, 224, 224) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_centre_crop_takes_rows_37_to_260():
    """Read back with OpenAI's published mean/std. Mutation caught: CLIP_MEAN changed in the
    module (the former read-back with the module's own constants cancelled it; failed: yes)."""
    # A 224x298 image (already at the target scale) is only cropped: rows 37..260.
    img = np.zeros((298, 224, 3), np.uint8)
    img[:, :, 0] = np.arange(298)[:, None] % 256
    got = preprocess_garments(img)[0, 0]
    rows = torch.round((got[:, 0] * OPENAI_STD[0] + OPENAI_MEAN[0]) * 255).long()
    assert rows.tolist() == [r % 256 for r in range(37, 261)]


def test_float_image_gives_the_same_pixels_as_uint8(processor):
    img = _garment()
    # ComfyUI IMAGE: [N, H, W, 3] float32 holding k/255.
    as_comfy = torch.from_numpy(img).float().div(255.0)[None]
    torch.testing.assert_close(preprocess_garments(as_comfy), preprocess_garments(img), atol=0, rtol=0)
    assert np.array_equal(to_uint8_rgb(as_comfy)[0], img)
    # The trap this guards against: a modern processor given floats divides by 255 twice.
    trap = processor(images=as_comfy[0].numpy(), return_tensors="pt").pixel_values
    assert (trap - preprocess_garments(img)).abs().max() > 0.5


def test_float_between_8bit_levels_rounds_to_the_nearest_level(processor):
    """A float image whose values lie between levels (a decoded or resized IMAGE): each value goes
    to its nearest byte (floor(255 x + 0.5), written out here), then as uint8 through transformers.
    Mutation caught: truncation (astype(uint8) without rint) in _float_to_uint8 (failed: yes)."""
    img = _garment(seed=3)
    rng = np.random.default_rng(4)
    offsets = rng.choice([0.3, 0.7], size=img.shape)
    floats = np.minimum(img.astype(np.float64) + offsets, 255.0) / 255.0
    nearest = np.floor(floats * 255 + 0.5).astype(np.uint8)
    assert (nearest != img).mean() > 0.4  # the 0.7 offsets round up: truncation would differ
    as_comfy = torch.from_numpy(floats).float()[None]
    assert np.array_equal(to_uint8_rgb(as_comfy)[0], nearest)
    want = processor(images=nearest, return_tensors="pt").pixel_values
    torch.testing.assert_close(preprocess_garments(as_comfy), want, atol=1e-6, rtol=0)


def test_float_in_0_255_is_rejected():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        preprocess_garments(torch.from_numpy(_garment()).float()[None])


def test_batch_list_pil_alpha_and_grey_inputs():
    a, b = _garment(seed=1), _garment(seed=2)
    batch = preprocess_garments(torch.from_numpy(np.stack([a, b])).float() / 255)
    assert batch.shape == (2, 3, 224, 224)
    single = preprocess_garments([Image.fromarray(a), b])
    torch.testing.assert_close(batch, single, atol=0, rtol=0)
    rgba = np.concatenate([a, np.full(a.shape[:2] + (1,), 7, np.uint8)], axis=-1)
    torch.testing.assert_close(preprocess_garments(rgba), batch[:1], atol=0, rtol=0)
    grey = preprocess_garments(Image.fromarray(a[:, :, 0]))
    assert grey.shape == (1, 3, 224, 224)


@pytest.mark.parametrize("shape", [(513, 384), (384, 513)])
def test_odd_crop_margins_match_the_processor(processor, shape):
    """513x384 resizes to 299x224 (75 rows to crop: 37 above, 38 below), and 384x513 to 224x299
    likewise in columns: an odd margin is where rounding the crop's top or left shows. Mutation
    caught: top = (new_h - size + 1) // 2 (the 298-row garments of the other tests crop 74 rows,
    where both agree)."""
    img = _garment(*shape, seed=3)
    want = processor(images=img, return_tensors="pt").pixel_values
    torch.testing.assert_close(preprocess_garments(img), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(56, 61), (61, 56)])
def test_long_side_is_computed_as_size_times_long_over_short(processor, shape):
    """224 * 61 / 56 = 244 exactly, but 224 * (61 / 56) = 243.99999999999997 in floats: the
    reference (and transformers: int(size * long / short)) multiplies first and gets 244.
    Mutation caught: int(size * (width / height)) (243 columns, a shifted crop)."""
    h, w = shape
    assert resize_shape(h, w) == ((224, 244) if h < w else (244, 224))
    img = _garment(h, w, seed=5)
    want = processor(images=img, return_tensors="pt").pixel_values
    torch.testing.assert_close(preprocess_garments(img), want, atol=1e-6, rtol=0)


def test_float_overshoots_are_clipped_to_the_8bit_range():
    """Values a little outside [0, 1] (1.02, 1.5 and -0.02, -0.4, as some image nodes give) become
    255 and 0; 1.9 and -0.49 are still accepted, 2.5 and -0.6 refused.
    Mutations caught: the upper limit at 1.0 (a 1.02 overshoot refused); np.clip dropped
    (1.02 * 255 = 260 wrapped to 4 in uint8)."""
    x = np.array([[[1.02, 1.5, 1.9], [-0.02, -0.4, -0.49], [0.5, 1 / 255, 254.6 / 255]]], np.float32)
    assert to_uint8_rgb(x)[0].tolist() == [[[255, 255, 255], [0, 0, 0], [128, 1, 255]]]
    for bad in (2.5, -0.6):
        with pytest.raises(ValueError, match=r"float images must hold values in \[0, 1\]"):
            to_uint8_rgb(np.full((2, 2, 3), bad, np.float32))


def test_minus_one_to_one_images_are_refused():
    """A [-1, 1] image (a VAE-style tensor) would turn every negative value black. Mutation
    caught: the lower bound check dropped."""
    img = np.linspace(-1, 1, 48, dtype=np.float32).reshape(4, 4, 3)
    with pytest.raises(ValueError, match=r"got range \[-1, 1\]"):
        preprocess_garments(img)


def test_no_images_is_a_clear_error():
    """An empty IMAGE batch ([0, H, W, 3] float) and an empty list: "no images to preprocess".
    Mutations caught: the `x.size and` guard dropped (numpy's zero-size max error instead); the
    empty-list check dropped (np.stack's error instead)."""
    with pytest.raises(ValueError, match="no images to preprocess"):
        preprocess_garments(torch.zeros(0, 8, 8, 3))
    with pytest.raises(ValueError, match="no images to preprocess"):
        preprocess_garments([])


def test_uint8_tensor_grey_and_single_channel_inputs(processor):
    """A uint8 torch tensor is taken as bytes (not as floats 0-255); a 2-D grey array and an
    HxWx1 array become three equal channels, as transformers' processor does with a grey image
    repeated to RGB; a PIL RGBA image loses its alpha.
    Mutations caught: uint8 tensors converted to float (then refused as 0-255 floats); the 2-D
    branch dropped; the 1-channel repeat dropped; PIL images not converted to RGB."""
    img = _garment(seed=6)
    want = processor(images=img, return_tensors="pt").pixel_values
    torch.testing.assert_close(preprocess_garments(torch.from_numpy(img)), want, atol=1e-6, rtol=0)
    grey = img[:, :, 1]
    want_grey = processor(images=np.repeat(grey[:, :, None], 3, axis=-1), return_tensors="pt").pixel_values
    torch.testing.assert_close(preprocess_garments(grey), want_grey, atol=1e-6, rtol=0)
    torch.testing.assert_close(preprocess_garments(grey[:, :, None]), want_grey, atol=1e-6, rtol=0)
    rgba = Image.fromarray(np.concatenate([img, np.full(img.shape[:2] + (1,), 9, np.uint8)], axis=-1))
    assert rgba.mode == "RGBA"
    torch.testing.assert_close(preprocess_garments(rgba), want, atol=1e-6, rtol=0)


def test_integer_arrays_other_than_uint8_are_refused():
    """int64 0-255 (or 0-65535) arrays are neither bytes nor [0, 1] floats. Mutation caught: any
    number type accepted as floats (then misread as out of range, or 16-bit levels as floats)."""
    with pytest.raises(TypeError, match="images must be uint8 or float in \\[0, 1\\], got int64"):
        to_uint8_rgb(np.zeros((4, 4, 3), np.int64))
