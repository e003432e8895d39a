"""Garment image loading that never crashes a batch job on one bad file.

Every garment enters the pipeline in one canonical form: RGB, 384x512 (WxH) as the reference
feeds Dress Code garments, the original aspect kept and the rest padded white (the in-shop
background), so a square or landscape product photo is not stretched.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .files import MAX_IMAGE_BYTES, UnreadableFileError, open_regular

GARMENT_SIZE: tuple[int, int] = (384, 512)  # (W, H), the reference's garment resolution
PAD_COLOR: tuple[int, int, int] = (255, 255, 255)
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
)


# Limits on one garment image, so one planted file cannot exhaust memory: 64 megapixels is
# more than any product photo (a decoded RGB image of that size is ~190 MB) and far below
# what a decompression bomb asks for; the byte limit (files.MAX_IMAGE_BYTES) stops a huge
# file before it is read.
MAX_IMAGE_PIXELS = 64_000_000

# Why an image was refused (ImageLoadError.reason): the words build reports count by.
MISSING, UNREADABLE, NOT_AN_IMAGE, TOO_LARGE = "missing", "unreadable", "not an image", "too large"
NOT_REGULAR = "not a regular file"  # a FIFO, device, socket or folder under an image's name


class ImageLoadError(ValueError):
    """An image file that cannot be used: missing, unreadable, not an image, or too large."""

    def __init__(self, message: str, reason: str = UNREADABLE) -> None:
        super().__init__(message)
        self.reason = reason


def decode_image(data: bytes, name: str = "<bytes>", rgb: bool = True) -> Image.Image:
    """Decode fully (not lazily, so truncated files fail here) to RGB, EXIF rotation applied.

    The pixel count is checked from the header, before any pixel is decoded. `rgb=False` keeps
    the stored mode (a label map's palette indices are its labels, not colours).
    """
    try:
        with warnings.catch_warnings():
            # A decompression-bomb *warning* would pass silently; make it an error like the hard limit.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageLoadError(f"image {name} is too large: {width}x{height} pixels, more than "
                                     f"{MAX_IMAGE_PIXELS:,}", TOO_LARGE)
            img.load()
            img = ImageOps.exif_transpose(img)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"image {name} is too large: {exc}", TOO_LARGE) from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(f"{name} is not an image (no image format recognised)", NOT_AN_IMAGE) from exc
    except Exception as exc:  # any decoder failure on untrusted bytes is a bad file, not a bug
        raise ImageLoadError(f"cannot read image {name}: {exc}", UNREADABLE) from exc
    return _to_rgb(img) if rgb else img


def open_image(path: str | Path) -> BinaryIO:
    """An image file opened for reading: a regular file (a FIFO would block the reader for
    good) of at most MAX_IMAGE_BYTES; else ImageLoadError with the reason."""
    path = Path(path)
    try:
        f = open_regular(path, what="image")
    except UnreadableFileError as exc:
        raise ImageLoadError(str(exc), NOT_REGULAR) from exc
    except FileNotFoundError as exc:
        raise ImageLoadError(f"image {path} not found", MISSING) from exc
    except OSError as exc:
        raise ImageLoadError(f"cannot read image {path}: {exc}", UNREADABLE) from exc
    size = os.fstat(f.fileno()).st_size
    if size > MAX_IMAGE_BYTES:
        f.close()
        raise ImageLoadError(f"image {path} is too large: {size:,} bytes, more than {MAX_IMAGE_BYTES:,}",
                             TOO_LARGE)
    return f


def read_image_bytes(path: str | Path) -> bytes:
    """The bytes of an image file, refusing files above MAX_IMAGE_BYTES before reading them."""
    with open_image(path) as f:
        try:
            # Sized by the file (read(n) allocates n bytes up front), on to EOF if it grew.
            size = os.fstat(f.fileno()).st_size
            data = f.read(size + 1)
            if len(data) > size:
                data += f.read(MAX_IMAGE_BYTES + 1 - len(data))
        except OSError as exc:
            raise ImageLoadError(f"cannot read image {path}: {exc}", UNREADABLE) from exc
    if len(data) > MAX_IMAGE_BYTES:  # grew while read
        raise ImageLoadError(f"image {path} is too large: more than {MAX_IMAGE_BYTES:,} bytes", TOO_LARGE)
    return data


def image_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 of an image file's bytes (read as read_image_bytes reads them), without decoding."""
    digest, read = hashlib.sha256(), 0
    with open_image(path) as f:
        try:
            while block := f.read(min(chunk, MAX_IMAGE_BYTES + 1 - read)):
                digest.update(block)
                read += len(block)
        except OSError as exc:
            raise ImageLoadError(f"cannot read image {path}: {exc}", UNREADABLE) from exc
    if read > MAX_IMAGE_BYTES:
        raise ImageLoadError(f"image {path} is too large: more than {MAX_IMAGE_BYTES:,} bytes", TOO_LARGE)
    return digest.hexdigest()


def load_image(path: str | Path) -> Image.Image:
    """Read and decode one image file; ImageLoadError names the file and the reason."""
    return decode_image(read_image_bytes(path), str(path))


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit greyscale: PIL's convert() clips at 255 (a white garment); keep the top 8 bits.
        levels = np.clip(np.asarray(img, dtype=np.int64), 0, 65535) >> 8
        img = Image.fromarray(levels.astype(np.uint8), "L")
    # Transparent product cut-outs go onto white, the catalog background, not onto black.
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, PAD_COLOR + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def fit_garment(img: Image.Image, size: tuple[int, int] = GARMENT_SIZE) -> Image.Image:
    """Resize to fit inside `size` (W, H) keeping the aspect ratio, centred on white padding."""
    return ImageOps.pad(img.convert("RGB"), size, Image.Resampling.BICUBIC, color=PAD_COLOR)


def load_garment(path: str | Path, size: tuple[int, int] = GARMENT_SIZE) -> Image.Image:
    """load_image + fit_garment: the canonical 384x512 garment image."""
    return fit_garment(load_image(path), size)


def to_image_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL RGB images of one size -> [N, H, W, 3] float32 in [0, 1] (ComfyUI's IMAGE layout)."""
    if not images:
        w, h = GARMENT_SIZE
        return torch.zeros((0, h, w, 3), dtype=torch.float32, device="cpu")  # as from_numpy's below
    arrays = np.stack([np.asarray(img.convert("RGB"), dtype=np.uint8) for img in images])
    return torch.from_numpy(arrays).float().div_(255.0)
