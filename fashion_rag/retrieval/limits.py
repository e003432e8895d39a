"""Bounds on what a request (a workflow, the CLI) can ask of retrieval, and how values are quoted.

A shared workflow is untrusted input: without bounds, 252 pinned ids returned 252 full-size
images (+567 MB of server memory) and a 1 MB id string came back in full in the error.
"""

from __future__ import annotations

MAX_K = 20  # garments per request, pins included (the retrieve node's maximum)
MAX_TEXT_CHARS = 2_000  # CLIP reads 77 tokens; BM25 needs no more than a paragraph either
MAX_ID_CHARS = 256  # one garment id
MAX_IDS = 1_000  # ids in one pin or exclude list (excluding a whole page of garments is fine)
MAX_ID_LIST_CHARS = 100_000  # the raw pin_ids / exclude_ids string
QUOTE_CHARS = 60  # how much of a value an error message repeats


def shorten(value: object, limit: int = QUOTE_CHARS) -> str:
    """repr() of a value, cut to `limit` characters with its full length said, for messages."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text):,} characters)"
