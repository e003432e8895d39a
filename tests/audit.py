"""Which files this process opens: Python's audit hooks see open() and os.open(), which is how
the library reads images, manifests, embeddings and index files (and hashes .faiss files
before FAISS opens them)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

_opened: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _opened is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # once per process (hooks cannot be removed): a list check when idle


@contextlib.contextmanager
def opened_files() -> Iterator[list[str]]:
    """The paths opened inside the with block, as given to open()."""
    global _opened
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None
