"""The reference prompt that carries the garments' pseudo-words, and how many garments fit in it.

    "a photo of a model wearing {noun} made of " + " $ " * (16 * k)

Each `$` (CLIP BPE id 259) marks a position whose input token embedding is replaced by one
pseudo-word embedding (docs/method.md, "Prompt and injection"). Optional extra text goes *after* the
placeholders, so the pseudo-words keep the positions (and position embeddings) they were trained
at. Everything must fit one 77-token CLIP chunk, start and end tokens included.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from ..categories import CATEGORIES, PROMPT_NOUN

PLACEHOLDER = "$"
PLACEHOLDER_TOKEN_ID = 259  # "$</w>" in the CLIP BPE vocabulary, as the reference hard-codes
TOKENS_PER_GARMENT = 16
MAX_TOKENS = 77  # one CLIP chunk, including the start and end tokens
NEGATIVE_PROMPT = ""  # the reference's unconditional prompt

# text -> number of BPE tokens, without start/end tokens
TokenCounter = Callable[[str], int]


class PromptTooLongError(ValueError):
    """The pseudo-words and the text do not fit in one 77-token chunk."""


def _noun(category: str) -> str:
    try:
        return PROMPT_NOUN[category]
    except KeyError:
        choices = ", ".join(CATEGORIES)
        raise ValueError(f"unknown garment category {category!r}; use one of {choices}") from None


def prompt_prefix(category: str) -> str:
    """The words before the placeholders, e.g. 'a photo of a model wearing a dress made of'."""
    return f"a photo of a model wearing {_noun(category)} made of"


def build_prompt(
    category: str, num_garments: int, extra_text: str = "", tokens_per_garment: int = TOKENS_PER_GARMENT
) -> str:
    """The reference's prompt string (byte for byte when extra_text is empty)."""
    if num_garments < 1:
        raise ValueError("at least one garment is needed")
    placeholders = f" {PLACEHOLDER} " * (tokens_per_garment * num_garments)
    text = f"a photo of a model wearing {_noun(category)} made of {placeholders}"
    extra = extra_text.strip()
    return f"{text}{extra}" if extra else text


@lru_cache(maxsize=1)
def _open_clip_counter() -> TokenCounter:
    # open_clip bundles the CLIP BPE vocabulary (the same one ComfyUI's SD2 tokenizer uses);
    # imported lazily because importing open_clip takes seconds.
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer()
    return lambda text: len(tokenizer.encode(text))


def _budget(
    category: str, extra_text: str, count_tokens: TokenCounter | None, max_tokens: int
) -> tuple[int, int, int]:
    """(tokens left for pseudo-words, prefix tokens, extra-text tokens)."""
    count = count_tokens or _open_clip_counter()
    n_prefix = count(prompt_prefix(category))
    n_extra = count(extra_text.strip()) if extra_text.strip() else 0
    return max_tokens - 2 - n_prefix - n_extra, n_prefix, n_extra


def max_garments(
    category: str,
    extra_text: str = "",
    *,
    count_tokens: TokenCounter | None = None,
    tokens_per_garment: int = TOKENS_PER_GARMENT,
    max_tokens: int = MAX_TOKENS,
) -> int:
    """The largest k whose 16*k pseudo-words fit one chunk with this category and extra text
    (4 for dresses, 3 for upper/lower body with no extra text; 0 if none fits)."""
    room, _, _ = _budget(category, extra_text, count_tokens, max_tokens)
    return max(room, 0) // tokens_per_garment


def check_prompt_fits(
    category: str,
    num_garments: int,
    extra_text: str = "",
    *,
    count_tokens: TokenCounter | None = None,
    tokens_per_garment: int = TOKENS_PER_GARMENT,
    max_tokens: int = MAX_TOKENS,
) -> None:
    """Raise PromptTooLongError, saying what to change, when k garments do not fit."""
    room, n_prefix, n_extra = _budget(category, extra_text, count_tokens, max_tokens)
    need = tokens_per_garment * num_garments
    if need <= room:
        return
    fit = max(room, 0) // tokens_per_garment
    extra = f" + extra text ({n_extra} tokens)" if n_extra else ""
    if fit:
        advice = f"use at most {fit} garment(s) (retrieve fewer, or pass fewer images)"
        advice += " or shorten the extra text" if n_extra else ""
    else:
        advice = "no garment fits: shorten the extra text"
    raise PromptTooLongError(
        f"{num_garments} garment(s) need {need} pseudo-words, but a CLIP prompt holds {max_tokens} tokens: "
        f"start/end (2) + '{prompt_prefix(category)}' ({n_prefix}){extra} leave room for {max(room, 0)}. "
        f"With category {category}, {advice}."
    )


def placeholder_positions(ids: list, placeholder_id: int, count: int) -> list[int]:
    """Positions of the run of `count` placeholders in token ids (the first run: extra text comes
    after), or ValueError."""
    try:
        start = ids.index(placeholder_id)
    except ValueError:
        start = -1
    if start < 0 or ids[start : start + count] != [placeholder_id] * count:
        found = sum(1 for i in ids if i == placeholder_id)
        raise ValueError(f"expected {count} consecutive placeholder tokens in the prompt, found {found}")
    return list(range(start, start + count))
