"""Writing files so that readers never see half a file, and hashing them."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path


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


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in chunks (weights files are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_hashes: dict[tuple[str, int, int, int], str] = {}
_hashes_lock = threading.Lock()


def cached_sha256(path: str | os.PathLike) -> str:
    """sha256_file, remembered per (path, size, mtime, inode): a large file is hashed once per process."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _hashes_lock:
        if key in _hashes:
            return _hashes[key]
    digest = sha256_file(path)
    with _hashes_lock:
        _hashes[key] = digest
    return digest
