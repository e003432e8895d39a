"""Garment image -> CLIP pixels, exactly as the reference preprocesses them.

The reference pins transformers 4.26, whose CLIP processor, on an 8-bit RGB image, resizes the
shortest side to 224 with PIL's bicubic filter (long side `int(224 * long / short)`, truncated),
centre-crops 224x224 (top = (h - 224) // 2), divides by 255 and normalises with the OpenAI CLIP
mean/std. Two traps this module avoids (METHOD.md): a float [0, 1] image must become 8-bit with
round() exactly once (modern processors given floats divide by 255 twice), and torch's
antialiased bicubic / rounded geometry (ComfyUI's clip_preprocess) moves the PTEs by about 2 %.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ..reference import CLIP_MEAN, CLIP_STD

ImageLike = np.ndarray | torch.Tensor | Image.Image


def resize_shape(height: int, width: int, size: int = 224) -> tuple[int, int]:
    """(height, width) after the shortest side goes to `size`; the long side is truncated."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def _float_to_uint8(x: np.ndarray) -> np.ndarray:
    # Small overshoots (some image nodes return 1.02) are clipped; a 0-255 or [-1, 1] float
    # image is a caller's mistake that would silently give wrong garments, so it is an error.
    if x.size and (np.nanmax(x) > 2.0 or np.nanmin(x) < -0.5):
        raise ValueError(
            f"float images must hold values in [0, 1] (ComfyUI's IMAGE), got range "
            f"[{float(np.nanmin(x)):.3g}, {float(np.nanmax(x)):.3g}]; pass 0-255 images as uint8"
        )
    # The one and only scaling by 255 (see the module docstring), rounded: a ComfyUI IMAGE of an
    # 8-bit source holds k/255, and round() brings back exactly k.
    return np.clip(np.rint(np.nan_to_num(x) * 255.0), 0, 255).astype(np.uint8)


def to_uint8_rgb(images: ImageLike | Sequence[ImageLike]) -> list[np.ndarray]:
    """Split any supported input into a list of HxWx3 uint8 arrays.

    Accepted: a PIL image; a uint8 array/tensor HxWxC or NxHxWxC; a float array/tensor in
    [0, 1] (ComfyUI's IMAGE, [N, H, W, C]); or a list of those. Extra channels (alpha) are dropped.
    """
    if isinstance(images, (list, tuple)):
        return [a for im in images for a in to_uint8_rgb(im)]
    if isinstance(images, Image.Image):
        return [np.asarray(images.convert("RGB"), dtype=np.uint8)]
    if isinstance(images, torch.Tensor):
        images = images.detach().to("cpu")
        images = images.numpy() if images.dtype == torch.uint8 else images.float().numpy()
    if not isinstance(images, np.ndarray):
        raise TypeError(f"unsupported image type {type(images).__name__}")
    arr = images
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected HxWxC or NxHxWxC images (C = 1, 3 or 4), got shape {images.shape}")
    if arr.dtype == np.uint8:
        pass
    elif np.issubdtype(arr.dtype, np.floating):
        arr = _float_to_uint8(arr)
    else:
        raise TypeError(f"images must be uint8 or float in [0, 1], got {arr.dtype}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return [np.ascontiguousarray(a[..., :3]) for a in arr]


def preprocess_uint8(image: np.ndarray, size: int = 224) -> np.ndarray:
    """One HxWx3 uint8 image -> 3 x size x size float32, normalised."""
    h, w = image.shape[:2]
    new_h, new_w = resize_shape(h, w, size)
    # PIL's BICUBIC (a=-0.5, support widened when reducing) is what the reference runs.
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), resample=Image.Resampling.BICUBIC))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    crop = resized[top : top + size, left : left + size].astype(np.float32) / np.float32(255.0)
    mean = np.asarray(CLIP_MEAN, dtype=np.float32)
    std = np.asarray(CLIP_STD, dtype=np.float32)
    return ((crop - mean) / std).transpose(2, 0, 1)


def preprocess_garments(images: ImageLike | Sequence[ImageLike], size: int = 224) -> torch.Tensor:
    """Garment images -> [N, 3, size, size] float32 pixel values for the CLIP vision tower."""
    arrays = to_uint8_rgb(images)
    if not arrays:
        raise ValueError("no images to preprocess")
    return torch.from_numpy(np.stack([preprocess_uint8(a, size) for a in arrays]))
