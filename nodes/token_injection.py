"""The pseudo-words in ComfyUI's own CLIP: the reference prompt with one embedding per `$`.

ComfyUI's sd1_clip.process_tokens takes any non-integer token entry as an embedding for its
position, so the PTEs enter the text encoder as input token embeddings, before the position
embeddings, exactly as in textual inversion (docs/method.md, "Prompt and injection").
"""

from __future__ import annotations

from typing import Any

import torch

from ..fashion_rag.inversion.prompt import (
    NEGATIVE_PROMPT,
    PLACEHOLDER,
    PromptTooLongError,
    build_prompt,
    check_prompt_fits,
    placeholder_positions,
)

CLIP_HINT = "Use the SD2 text encoder (stable-diffusion-2-inpainting's CLIP, 1024-wide) as the clip input."

Tokens = dict[str, list[list[tuple]]]


def _words(clip: Any, text: str) -> Tokens:
    return clip.tokenize(text, return_word_ids=True)


def count_tokens(clip: Any, text: str) -> int:
    """Tokens of `text` in this CLIP's tokenizer, without start/end/padding (word id 0)."""
    per_key = [sum(t[2] != 0 for chunk in chunks for t in chunk) for chunks in _words(clip, text).values()]
    return max(per_key, default=0)


def placeholder_token_id(clip: Any, key: str) -> int:
    """The id this tokenizer gives the placeholder (259 for CLIP's BPE)."""
    words = [t for chunk in _words(clip, PLACEHOLDER)[key] for t in chunk if t[2] != 0]
    if len(words) != 1 or not isinstance(words[0][0], int):
        raise ValueError(f"this CLIP's tokenizer does not make '{PLACEHOLDER}' one token. {CLIP_HINT}")
    return words[0][0]


def _text_width(clip: Any, key: str) -> int | None:
    """Width of the token embeddings of the text encoder behind tokenizer key `key`."""
    model = clip.cond_stage_model
    encoder = getattr(model, f"clip_{key}", None)
    if encoder is None and getattr(model, "clip_name", None) == key:
        encoder = getattr(model, getattr(model, "clip", ""), None)
    try:
        return int(encoder.transformer.get_input_embeddings().weight.shape[-1])
    except AttributeError:
        return None


def inject_embeddings(clip: Any, prompt: str, ptes: torch.Tensor) -> Tokens:
    """Tokenize `prompt` and put one PTE row (a 1-D vector) at each placeholder position; a 2-D
    entry would lengthen the sequence instead of filling the 77 positions."""
    rows = ptes.reshape(-1, ptes.shape[-1])
    tokens = _words(clip, prompt)
    for key, chunks in tokens.items():
        if len(chunks) != 1:
            raise PromptTooLongError(
                f"the prompt takes {len(chunks)} CLIP chunks; it must fit one (77 tokens)")
        width = _text_width(clip, key)
        if width is not None and width != rows.shape[-1]:
            raise ValueError(
                f"the adapter makes {rows.shape[-1]}-wide embeddings, but this CLIP's text encoder ('{key}') "
                f"is {width}-wide. {CLIP_HINT}"
            )
        chunk = chunks[0]
        placeholder = placeholder_token_id(clip, key)
        positions = placeholder_positions([t[0] for t in chunk], placeholder, rows.shape[0])
        for pos, row in zip(positions, rows, strict=True):
            chunk[pos] = (row, *chunk[pos][1:])
    return tokens


def check_fits(clip: Any, category: str, garments: int, tokens_per_garment: int,
               extra_text: str = "") -> None:
    """PromptTooLongError before any model runs when the garments cannot fit one prompt."""
    check_prompt_fits(category, garments, extra_text, count_tokens=lambda t: count_tokens(clip, t),
                      tokens_per_garment=tokens_per_garment)


def _encode_prompt(clip: Any, ptes: torch.Tensor, category: str, extra_text: str) -> list:
    """The reference prompt holding these PTEs (all of them), encoded."""
    k, num_tokens = ptes.shape[0], ptes.shape[1]
    check_fits(clip, category, k, num_tokens, extra_text)
    prompt = build_prompt(category, k, extra_text, tokens_per_garment=num_tokens)
    return clip.encode_from_tokens_scheduled(inject_embeddings(clip, prompt, ptes))


def _negative(clip: Any) -> list:
    return clip.encode_from_tokens_scheduled(clip.tokenize(NEGATIVE_PROMPT))


def encode_garments(clip: Any, ptes: torch.Tensor, category: str, extra_text: str = "") -> tuple[list, list]:
    """(positive, negative) CONDITIONING: the reference prompt with the PTEs, and the empty prompt."""
    return _encode_prompt(clip, ptes, category, extra_text), _negative(clip)


def batch_conditionings(conditionings: list[list]) -> list:
    """Several one-prompt CONDITIONINGs as one CONDITIONING with a prompt batch, in order.

    Entry by entry, the prompt tensors and the tensor extras of batch 1 (SD2's pooled_output)
    are concatenated; other extras are the first prompt's. The prompts all fill the same 77
    positions, so the tensors line up."""
    batched = []
    for entries in zip(*conditionings, strict=True):
        extras = {}
        for key, value in entries[0][1].items():
            values = [e[1].get(key) for e in entries]
            tensors = all(isinstance(v, torch.Tensor) and v.shape[0] == 1 for v in values)
            extras[key] = torch.cat(values) if tensors else value
        batched.append([torch.cat([e[0] for e in entries]), extras])
    return batched


def encode_each_garment(clip: Any, ptes: torch.Tensor, category: str, extra_text: str = ""
                        ) -> tuple[list, list]:
    """(positive, negative): one reference prompt per garment, as a prompt batch of k (candidates:
    each garment worn on its own), and the empty prompt."""
    positives = [_encode_prompt(clip, ptes[i : i + 1], category, extra_text) for i in range(ptes.shape[0])]
    return batch_conditionings(positives), _negative(clip)
