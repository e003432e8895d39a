"""Garment image loading that never crashes a batch job on one bad file.

Every garment enters the pipeline in one canonical form: RGB, 384x512 (WxH) as the reference
feeds Dress Code garments, the original aspect kept and the rest padded white (the in-shop
background), so a square or landscape product photo is not stretched.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

GARMENT_SIZE: tuple[int, int] = (384, 512)  # (W, H), the reference's garment resolution
PAD_COLOR: tuple[int, int, int] = (255, 255, 255)
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
)


class ImageLoadError(ValueError):
    """An image file that cannot be decoded (truncated, corrupt, not an image, too large)."""


def decode_image(data: bytes, name: str = "<bytes>") -> Image.Image:
    """Decode fully (not lazily, so truncated files fail here) to RGB, EXIF rotation applied."""
    try:
        with warnings.catch_warnings():
            # A decompression-bomb *warning* would pass silently; make it an error like the hard limit.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
            img = ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"cannot read image {name}: {exc}") from exc
    return _to_rgb(img)


def load_image(path: str | Path) -> Image.Image:
    """Read and decode one image file; ImageLoadError names the file and the reason."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageLoadError(f"cannot read image {path}: {exc}") from exc
    return decode_image(data, str(path))


def _to_rgb(img: Image.Image) -> Image.Image:
    # Transparent product cut-outs go onto white, the catalog background, not onto black.
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, PAD_COLOR + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def fit_garment(img: Image.Image, size: tuple[int, int] = GARMENT_SIZE) -> Image.Image:
    """Resize to fit inside `size` (W, H) keeping the aspect ratio, centred on white padding."""
    width, height = size
    if img.size == size:
        return img.convert("RGB")
    scale = min(width / img.width, height / img.height)
    new_w = max(1, min(width, round(img.width * scale)))
    new_h = max(1, min(height, round(img.height * scale)))
    resized = img.convert("RGB").resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    canvas = Image.new("RGB", size, PAD_COLOR)
    canvas.paste(resized, ((width - new_w) // 2, (height - new_h) // 2))
    return canvas


def load_garment(path: str | Path, size: tuple[int, int] = GARMENT_SIZE) -> Image.Image:
    """load_image + fit_garment: the canonical 384x512 garment image."""
    return fit_garment(load_image(path), size)


def to_image_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL RGB images of one size -> [N, H, W, 3] float32 in [0, 1] (ComfyUI's IMAGE layout)."""
    if not images:
        w, h = GARMENT_SIZE
        return torch.zeros((0, h, w, 3), dtype=torch.float32)
    arrays = np.stack([np.asarray(img.convert("RGB"), dtype=np.uint8) for img in images])
    return torch.from_numpy(arrays).float().div_(255.0)
