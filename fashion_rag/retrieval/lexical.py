"""BM25 over garment captions (bm25s), the lexical half of fusion retrieval.

Built from the manifest's captions when first needed rather than stored: it takes well under
a second for tens of thousands of captions, and a derived file that cannot go stale is one
less thing for an incremental rebuild to get wrong.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+")
# Words that say nothing about which garment is meant (kept small: "top", "short" matter).
_STOPWORDS = frozenset(
    "a an and the of in on with for to by from at or is are be this that it its as "
    "made wearing model photo picture image".split()
)


def _stem(word: str) -> str:
    """A light English stemmer so 'stripes'/'striped', 'dresses'/'dress' and 'dots'/'dotted' meet."""
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            word = word[: -len(suffix)]
            if suffix in ("ing", "ed") and len(word) >= 4 and word[-1] == word[-2]:
                word = word[:-1]  # dotted -> dott -> dot
            break
    if len(word) > 4 and word.endswith("e"):
        word = word[:-1]  # stripe -> strip, matching striped -> strip
    return word


def tokenize_all(texts: Sequence[str]) -> list[list[str]]:
    """bm25s.tokenize with this module's words, stopwords and stemmer (lower-cased first)."""
    import bm25s

    return bm25s.tokenize(list(texts), lower=True, token_pattern=_TOKEN.pattern, stopwords=list(_STOPWORDS),
                          stemmer=lambda words: [_stem(w) for w in words], return_ids=False,
                          show_progress=False)


def tokenize(text: str) -> list[str]:
    return tokenize_all([text])[0]


class CaptionIndex:
    """BM25 scores of every caption for a query; captions without words simply never match."""

    def __init__(self, captions: Sequence[str]) -> None:
        import logging

        import bm25s

        # bm25s sets its own logger to DEBUG on import, which floods ComfyUI's console.
        logging.getLogger("bm25s").setLevel(logging.WARNING)
        self.size = len(captions)
        docs = tokenize_all(captions) if len(captions) else []
        self.has_text = any(docs)
        self._bm25 = None
        if self.has_text:
            self._bm25 = bm25s.BM25()
            # bm25s needs one token per document; "" is its own empty token, matched by no query.
            self._bm25.index([d or [""] for d in docs], show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """[N] float32 BM25 scores (0 for captions sharing no word with the query)."""
        if self._bm25 is None:
            return np.zeros(self.size, dtype=np.float32)
        tokens = [t for t in tokenize(query) if t in self._bm25.vocab_dict]
        if not tokens:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self._bm25.get_scores(tokens), dtype=np.float32)
