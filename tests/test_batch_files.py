"""Which local files a batch job table may upload, and as what, without a server (fast)."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from fashion_rag.cli.batch_files import FileCellError, ImageUploads, as_png, cell_path


def _black_png(width: int, height: int) -> bytes:
    """A black greyscale PNG of that size, written by hand (zlib stream of zero rows)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(bytes((width + 1) * height), 1)  # filter byte 0 and black pixels, each row
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _image_bytes(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


class Uploads:
    """What ImageUploads hands to the server (a plain recorder: no server here)."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, str]] = []

    def __call__(self, png: bytes, name: str) -> str:
        self.sent.append((png, name))
        return name


def test_pixel_limit_is_inclusive():
    """8000x8000 = 64,000,000 pixels is allowed; one row more is refused.

    Mutation caught: `width * height > MAX_IMAGE_PIXELS` tightened to `>=`."""
    with Image.open(io.BytesIO(as_png(_black_png(8000, 8000), "exact.png"))) as img:
        assert img.size == (8000, 8000)
    with pytest.raises(FileCellError, match="is 8000x8001 pixels, more than the 64,000,000 allowed"):
        as_png(_black_png(8000, 8001), "big.png")


def test_exif_rotation_is_applied():
    """A 4x2 JPEG whose EXIF says 'rotate 90' arrives as a 2x4 PNG, as ComfyUI's LoadImage shows it.

    Mutation caught: ImageOps.exif_transpose dropped."""
    exif = Image.Exif()
    exif[0x0112] = 6
    png = as_png(_image_bytes(Image.new("RGB", (4, 2), (200, 10, 10)), "JPEG", exif=exif), "rot.jpg")
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.size == (2, 4)


def test_cmyk_jpeg_becomes_rgb_png():
    """A CMYK JPEG (PNG cannot store CMYK) is uploaded as an RGB PNG rather than failing.

    Mutation caught: the conversion of modes PNG cannot store dropped."""
    png = as_png(_image_bytes(Image.new("CMYK", (3, 2), (0, 255, 255, 0)), "JPEG"), "cmyk.jpg")
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.mode == "RGB" and img.size == (3, 2)


def test_only_files_inside_the_tables_folder(tmp_path):
    """`../secret.png` and a link inside the folder to it are refused (after resolving); with
    allow_outside the same photo goes through.

    Mutation caught: the folder check made on the unresolved path (`..` and links pass)."""
    tmp_path = tmp_path.resolve()
    folder = tmp_path / "table"
    folder.mkdir()
    Image.new("RGB", (2, 2)).save(tmp_path / "secret.png")
    (folder / "link.png").symlink_to(tmp_path / "secret.png")
    uploads = Uploads()
    strict = ImageUploads(folder, False, uploads)
    for cell in ("../secret.png", "link.png"):
        with pytest.raises(FileCellError, match=f"is outside the job table's folder {folder}"):
            strict.server_name(folder / cell)
    assert uploads.sent == []
    assert ImageUploads(folder, True, uploads).server_name(folder / "../secret.png").endswith("_secret.png")
    assert len(uploads.sent) == 1


def test_a_same_size_file_rewritten_in_place_is_uploaded_again(tmp_path):
    """Same inode, same byte size, new content and mtime: a new upload, not the cached name.

    Mutation caught: the mtime left out of the cache key."""
    photo = tmp_path.resolve() / "me.bmp"
    uploads = Uploads()
    files = ImageUploads(tmp_path, False, uploads)
    Image.new("RGB", (2, 2), (1, 2, 3)).save(photo)
    os.utime(photo, ns=(10**18, 10**18))
    first = files.server_name(photo)
    assert files.server_name(photo) == first and len(uploads.sent) == 1  # unchanged: cached
    size, inode = photo.stat().st_size, photo.stat().st_ino
    with open(photo, "r+b") as f:  # rewrite in place: same inode and size
        f.write(_image_bytes(Image.new("RGB", (2, 2), (9, 8, 7)), "BMP"))
    os.utime(photo, ns=(2 * 10**18, 2 * 10**18))
    assert (photo.stat().st_size, photo.stat().st_ino) == (size, inode)
    second = files.server_name(photo)
    assert second != first and len(uploads.sent) == 2
    with Image.open(io.BytesIO(uploads.sent[1][0])) as img:
        assert img.getpixel((0, 0)) == (9, 8, 7)


def test_upload_name_is_content_hash_and_a_safe_stem(tmp_path):
    """The uploaded name is the PNG's sha256 prefix and the stem with unsafe characters as '_'.

    Mutation caught: the stem sent unsanitised ('my photo #1')."""
    photo = tmp_path.resolve() / "my photo #1.png"
    Image.new("L", (3, 3), 7).save(photo)
    uploads = Uploads()
    name = ImageUploads(tmp_path, False, uploads).server_name(photo)
    png = uploads.sent[0][0]
    assert name == f"{hashlib.sha256(png).hexdigest()[:12]}_my_photo__1.png"
    assert Path(name).name == name


def test_unreadable_cells_fail_their_row_with_file_cell_error(tmp_path):
    """A device (even with --allow-outside), a FIFO and a missing file each give FileCellError
    (the row fails, the run goes on), and nothing is uploaded.

    Mutations caught: the file opened with plain open() instead of open_regular (a device is
    read); UnreadableFileError not turned into FileCellError; OSError (a missing file) not
    turned into FileCellError."""
    folder = tmp_path.resolve()
    os.mkfifo(folder / "pipe.png")
    uploads = Uploads()
    with pytest.raises(FileCellError, match="is not a regular file"):
        ImageUploads(folder, True, uploads).server_name(Path("/dev/null"))
    files = ImageUploads(folder, False, uploads)
    with pytest.raises(FileCellError, match="is not a regular file"):
        files.server_name(folder / "pipe.png")
    with pytest.raises(FileCellError, match="cannot read .*gone.png: No such file"):
        files.server_name(folder / "gone.png")
    assert uploads.sent == []


def test_cell_paths_relative_absolute_and_home(tmp_path, monkeypatch):
    """Mutation caught: `~` not expanded (read as a folder named '~' in the table's folder)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder = tmp_path / "table"
    assert cell_path("a/me.png", folder) == folder / "a" / "me.png"
    assert cell_path("/x/me.png", folder) == Path("/x/me.png")
    assert cell_path("~/me.png", folder) == tmp_path / "home" / "me.png"
    assert cell_path("~nosuchuser_fashion_rag/me.png", folder) is None


def test_a_table_folder_reached_through_a_symlink_keeps_its_own_files(tmp_path):
    """A job table opened through a symlinked folder: its own photos are inside, not refused.

    Mutation caught: ImageUploads keeping the folder unresolved (then every file, resolved, lies
    'outside' it)."""
    real = tmp_path.resolve() / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    Image.new("RGB", (2, 2)).save(real / "me.png")
    uploads = Uploads()
    name = ImageUploads(tmp_path / "link", False, uploads).server_name(tmp_path / "link" / "me.png")
    assert name.endswith("_me.png") and len(uploads.sent) == 1
