"""Reading files only when they are regular files of a bounded size; writing them so that readers
never see half a file; hashing them; float32 matrices as .npy files, memory-mapped both ways."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

# Ceilings for files read whole into memory (the size of a real one is far below each).
MAX_JSON_BYTES = 64 << 20  # manifests, workflows, keypoint and caption files
MAX_TABLE_BYTES = 256 << 20  # metadata and job tables (CSV, JSON Lines)
MAX_IMAGE_BYTES = 256 << 20  # one photo or garment image as stored


class UnreadableFileError(ValueError):
    """A path that is not a regular file (FIFO, device, socket, folder) or is larger than allowed."""


def open_regular(path: str | os.PathLike, max_bytes: int | None = None, what: str = "file") -> BinaryIO:
    """Open `path` for binary reading only if it is a regular file of at most `max_bytes` bytes.

    Opened with O_NONBLOCK so that a FIFO in its place returns at once instead of waiting for a
    writer (which would hang a server's whole prompt queue), then checked with fstat on the open
    descriptor (no window between the check and the read). Raises UnreadableFileError, or
    FileNotFoundError / PermissionError as open() does.
    """
    flags = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
             | getattr(os, "O_BINARY", 0))
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (6, 21):  # ENXIO: a socket; EISDIR: a folder
            raise UnreadableFileError(f"{what} {path} is not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableFileError(f"{what} {path} is not a regular file (a FIFO, device, socket or "
                                      "folder cannot be read)")
        if max_bytes is not None and st.st_size > max_bytes:
            raise UnreadableFileError(f"{what} {path} is {st.st_size} bytes, more than the {max_bytes} "
                                      "allowed")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `max_bytes` (a file that grows while read is cut
    off at the bound and refused, never read without end)."""
    with open_regular(path, max_bytes, what) as f:
        # Sized by the file, not by the bound: read(n) allocates n bytes up front, and an 8 GB
        # bound must not cost 8 GB for a 1 kB file. Then on to EOF (a file that grew, or one
        # that reports no size, like those in /proc) in blocks, never past the bound.
        parts = [f.read(os.fstat(f.fileno()).st_size + 1)]
        total = len(parts[0])
        while total <= max_bytes and (block := f.read(min(1 << 20, max_bytes + 1 - total))):
            parts.append(block)
            total += len(block)
    if total > max_bytes:
        raise UnreadableFileError(f"{what} {path} grew past the {max_bytes} bytes allowed while read")
    return b"".join(parts) if len(parts) > 1 else parts[0]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], mode: int = 0o644,
                 durable: bool = False) -> Path:
    """Call write(tmp) on a temp file beside `path`, then rename it over `path`.

    The temp file has an unpredictable name in the target folder (same file system, so the
    rename is atomic); it is removed on any failure. `mode` replaces mkstemp's private 0600:
    model files and indexes are meant to be read by a ComfyUI running as another user.
    `durable`: the file's bytes and the rename reach the disk before returning, so a power cut
    leaves the old file or the new one, never a name pointing at unwritten data.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        if durable:
            fsync_path(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if durable:
        fsync_path(path.parent)
    return path


def is_atomic_temp(name: str, target: str) -> bool:
    """Whether `name` is a temp file atomic_write leaves for `target` when killed mid-write
    (exactly mkstemp's pattern, so no file of a user's is ever taken for one)."""
    return re.fullmatch(rf"\.{re.escape(target)}\.[a-z0-9_]{{8}}\.tmp", name) is not None


def fsync_path(path: Path) -> None:
    """Flush a file or folder to disk (a folder: the names in it, e.g. a rename)."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0))
    except OSError:  # Windows cannot open folders; its renames are journaled anyway
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22, max_bytes: int | None = None,
                what: str = "file") -> str:
    """Hex sha256 of a regular file's bytes, read in chunks (weights files are gigabytes);
    UnreadableFileError past `max_bytes` (also when the file grows past it while read)."""
    digest = hashlib.sha256()
    read = 0
    with open_regular(path, max_bytes, what) as f:
        while block := f.read(chunk if max_bytes is None else min(chunk, max_bytes + 1 - read)):
            digest.update(block)
            read += len(block)
            if max_bytes is not None and read > max_bytes:
                raise UnreadableFileError(f"{what} {path} grew past the {max_bytes} bytes allowed while read")
    return digest.hexdigest()


_hashes: dict[tuple[str, int, int, int], str] = {}
_hashes_lock = threading.Lock()


def cached_sha256(path: str | os.PathLike, max_bytes: int | None = None, what: str = "file") -> str:
    """sha256_file, remembered per (path, size, mtime, inode): a large file is hashed once per process."""
    path = Path(path).resolve()
    st = path.stat()
    if max_bytes is not None and st.st_size > max_bytes:  # before the cache: a remembered hash is no pass
        raise UnreadableFileError(f"{what} {path} is {st.st_size} bytes, more than the {max_bytes} allowed")
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _hashes_lock:
        if key in _hashes:
            return _hashes[key]
    digest = sha256_file(path, max_bytes=max_bytes, what=what)
    with _hashes_lock:
        _hashes[key] = digest
    return digest


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """Give an OSError raised without a file name (a failed write: a full disk, EIO) that of `path`."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


@dataclasses.dataclass
class HashingWriter:
    """A binary file that hashes what is written to it (so a 30 GB file is not read back)."""

    f: BinaryIO
    digest: Any = dataclasses.field(default_factory=hashlib.sha256)

    def write(self, data: bytes | memoryview) -> int:
        self.digest.update(data)
        return self.f.write(data)


@contextlib.contextmanager
def hashed_file(path: Path) -> Iterator[HashingWriter]:
    """A new file, hashed while written and synced; a failed write (a full disk) names the file."""
    with naming(path), open(path, "wb") as f:
        out = HashingWriter(f)
        yield out
        f.flush()
        os.fsync(f.fileno())


def write_npy(path: Path, n: int, dim: int, blocks: Iterable[np.ndarray]) -> str:
    """Write a .npy file holding one [n, dim] float32 array from row blocks, never all in memory
    (numpy writes the header: the bytes are np.save's); returns their sha256."""
    with hashed_file(path) as out:
        np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False, "shape": (n, dim)})
        written = 0
        for block in blocks:
            data = np.ascontiguousarray(block, dtype="<f4")
            if data.ndim != 2 or data.shape[1] != dim or written + len(data) > n:
                raise ValueError(f"embedding block of shape {data.shape} does not fit a [{n}, {dim}] file")
            out.write(memoryview(data).cast("B"))
            written += len(data)
        if written != n:
            raise ValueError(f"{written} embedding rows written where {n} were expected")
    return out.digest.hexdigest()


def map_npy(f: BinaryIO, n: int, dim: int) -> np.ndarray:
    """The [n, dim] float32 array of an open .npy file mapped read-only (3 GB cost page cache, not
    process memory), its header parsed by numpy (no pickle); ValueError saying what else it holds."""
    try:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
    except Exception as exc:  # noqa: BLE001 numpy's parser raises ValueError, SyntaxError, TokenError, ...
        raise ValueError(f"is not a .npy file ({str(exc)[:80]})") from exc
    if dtype != np.dtype("<f4") or fortran or shape != (n, dim):
        order = "Fortran-ordered " if fortran else ""
        raise ValueError(f"holds a {order}{str(dtype)[:10]} array of shape {str(shape)[:40]}, not {n} x "
                         f"{dim} float32")
    offset = f.tell()
    if offset + n * dim * 4 != os.fstat(f.fileno()).st_size:
        raise ValueError("is truncated, or longer than its header says")
    if n == 0:
        return np.zeros((0, dim), dtype=np.float32)
    # The map holds its own reference to the file: closing `f` leaves it valid.
    return np.memmap(f, dtype=np.float32, mode="r", offset=offset, shape=(n, dim))
