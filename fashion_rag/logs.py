"""The pack's one logger: every message carries the same prefix in ComfyUI's console."""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
from typing import Any

PREFIX = "[Fashion-RAG]"

LogFn = Callable[[str], None]  # where a long job says what it does (log.info, or a CLI's stderr)
ProgressFn = Callable[[int, int], None]  # (done, total)


class _Prefixed(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return f"{PREFIX} {msg}", kwargs


log = _Prefixed(logging.getLogger("fashion_rag"), {})
