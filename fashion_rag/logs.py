"""The pack's one logger (every message carries the same prefix in ComfyUI's console), and the
one line of an error that a report shows."""

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


def error_line(exc: BaseException, limit: int = 300) -> str:
    """The line of an error that says what went wrong (Ray's errors carry the worker's whole
    traceback), whitespace folded, cut at `limit` characters."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = " ".join((lines[-1] if lines else type(exc).__name__).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
