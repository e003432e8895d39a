"""sha256 of files: image contents (what an incremental build reuses), weights, index data files."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

_cache: dict[tuple[str, int, int, int], str] = {}
_lock = threading.Lock()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (weights are 1.7 GB, embeddings of 1M garments 3 GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cached_sha256(path: str | os.PathLike[str]) -> str:
    """sha256_file, remembered per (path, size, mtime, inode): a large file is hashed once per process."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _lock:
        if key in _cache:
            return _cache[key]
    digest = sha256_file(path)
    with _lock:
        _cache[key] = digest
    return digest
