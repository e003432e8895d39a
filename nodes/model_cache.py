"""The loaded models the pack's loader nodes share across prompts and workflows.

V3 nodes hold no state, and ComfyUI's own output cache keys on a node's inputs, so two
workflows (or two loader nodes) naming the same file would each build a copy. A `ModelCache`
keeps one loaded object per source, with one policy for every loader:
- a source is a file (its real path) plus the options it was loaded with;
- a source's entry is valid while its file keeps its mtime and size (and any version token
  the caller adds); a changed file replaces the stale entry instead of adding one;
- at most `max_entries` sources are kept, the least recently used is dropped first.
Dropping an entry only forgets it here: ComfyUI's memory manager still owns what it loaded.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


def file_version(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size


class ModelCache(Generic[T]):
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, tuple[Hashable, T]] = OrderedDict()
        self._lock = threading.RLock()

    def get(self, path: str, load: Callable[[], T], options: Hashable = (), token: Hashable = ()) -> T:
        """The object loaded from `path` with `options`, loading it (once) when missing or stale."""
        source = (os.path.realpath(path), options)
        version = (file_version(path), token)
        with self._lock:  # held while loading: two prompts must not build the same model twice
            entry = self._entries.get(source)
            if entry is not None and entry[0] == version:
                self._entries.move_to_end(source)
                return entry[1]
            self._entries.pop(source, None)  # stale: let it go before loading the new one
            value = load()
            self._entries[source] = (version, value)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return value

    def items(self) -> list[tuple[str, T]]:
        """(real path of the source file, loaded object), least recently used first."""
        with self._lock:
            return [(source[0], value) for source, (_, value) in self._entries.items()]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
