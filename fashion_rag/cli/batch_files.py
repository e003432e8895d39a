"""The image cells of a batch job table: which local files may go to the server, and in what form.

A cell naming a local file is the user's photo, but the job table may come from anyone: it must
not turn `fashion-rag batch` into a way to copy `/etc/passwd` or `~/.ssh/id_rsa` into a server's
input folder, where `/view` hands it to whoever asks. So a file is uploaded only if it lies inside
the job table's folder (after resolving symlinks; `--allow-outside` lifts this), is a regular
file of at most MAX_IMAGE_BYTES, and decodes as an image; what is uploaded is that image
re-encoded as PNG, never the file's own bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageOps

from ..files import MAX_IMAGE_BYTES, UnreadableFileError, open_regular
from .batch_jobs import JobError

# As fashion_rag.images' limit (not imported: it pulls in torch, which this HTTP-only command never
# needs): more than any photo, far below what a decompression bomb asks for.
MAX_IMAGE_PIXELS = 64_000_000
# Modes PNG stores as they are; others (CMYK JPEG, float TIFF) become RGB or RGBA.
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


class FileCellError(JobError):
    """A cell names a local file that may not or cannot be uploaded (the row fails, the run goes on)."""


def cell_path(value: str, folder: Path) -> Path | None:
    """The local path a cell names (absolute, `~`, or relative to the job table's folder); None
    when the cell cannot be a path at all (`~nosuchuser/x`)."""
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # ~user of an unknown user
        return None
    return path if path.is_absolute() else folder / path


def as_png(data: bytes, name: str) -> bytes:
    """Decode the whole image (a truncated or disguised file fails here, not on the server) and
    re-encode it as PNG, EXIF rotation applied as ComfyUI's LoadImage would, first frame only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size  # from the header: refuse a bomb before decoding it
                if width * height > MAX_IMAGE_PIXELS:
                    raise FileCellError(f"{name} is {width}x{height} pixels, more than the "
                                        f"{MAX_IMAGE_PIXELS:,} allowed")
                img.load()
                img = ImageOps.exif_transpose(img)
                if img.mode not in _PNG_MODES:
                    img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
                buffer = io.BytesIO()
                img.save(buffer, "PNG", compress_level=1)  # fast: the server re-reads it once
    except FileCellError:
        raise
    except Exception as exc:  # any decoder failure on untrusted bytes is a bad file, not a bug
        raise FileCellError(f"{name} is not an image PIL can read ({exc})") from exc
    return buffer.getvalue()


class ImageUploads:
    """Local image files of the job table -> names in the server's input folder, each distinct
    unchanged file read, checked and uploaded once."""

    def __init__(self, folder: Path, allow_outside: bool, upload: Callable[[bytes, str], str]) -> None:
        self.folder = folder.resolve()
        self.allow_outside = allow_outside
        self.upload = upload  # (PNG bytes, file name) -> the value for the LoadImage input
        self.names: dict[tuple[int, int, int, int], str] = {}

    def server_name(self, path: Path) -> str:
        try:
            real = path.resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            raise FileCellError(f"cannot resolve {path}: {exc}") from None
        if not self.allow_outside and not real.is_relative_to(self.folder):
            shown = str(path) if real == path else f"{path} (= {real})"
            raise FileCellError(f"{shown} is outside the job table's folder {self.folder}: copy it "
                                "there, or pass --allow-outside")
        try:
            # Non-blocking open and fstat: a FIFO or device fails at once instead of hanging.
            f = open_regular(real, MAX_IMAGE_BYTES, "image")
        except UnreadableFileError as exc:
            raise FileCellError(str(exc)) from None
        except OSError as exc:
            raise FileCellError(f"cannot read {path}: {exc.strerror or exc}") from None
        with f:
            st = os.fstat(f.fileno())
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if key in self.names:
                return self.names[key]
            data = f.read(MAX_IMAGE_BYTES + 1)
        if len(data) > MAX_IMAGE_BYTES:
            raise FileCellError(f"{path} grew past the {MAX_IMAGE_BYTES} bytes allowed while read")
        png = as_png(data, str(path))
        # Named by content: re-uploads are idempotent and two local files never collide.
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem)
        self.names[key] = self.upload(png, f"{hashlib.sha256(png).hexdigest()[:12]}_{stem}.png")
        return self.names[key]
