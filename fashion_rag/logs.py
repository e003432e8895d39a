"""The pack's one logger: every message carries the same prefix in ComfyUI's console."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

PREFIX = "[Fashion-RAG]"


class _Prefixed(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return f"{PREFIX} {msg}", kwargs


log = _Prefixed(logging.getLogger("fashion_rag"), {})
