"""The reference prompt, its placeholders and the one-chunk token budget."""

from __future__ import annotations

import pytest
from transformers import CLIPTokenizer

from fashion_rag.inversion.prompt import (
    PLACEHOLDER_TOKEN_ID,
    PromptTooLongError,
    build_prompt,
    check_prompt_fits,
    max_garments,
    placeholder_positions,
    prompt_prefix,
)
from tools.harness import comfy_path


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    # The CLIP BPE files ComfyUI ships (the vocabulary of SD2's tokenizer; SD2 pads with "!" = 0).
    return CLIPTokenizer.from_pretrained(str(comfy_path() / "comfy" / "sd1_tokenizer"), pad_token="!")


@pytest.fixture(scope="module")
def count(tokenizer):
    return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)


def test_prompt_is_the_reference_string():
    # The reference: f'a photo of a model wearing {category_text} made of {" $ " * num_vstar * n}'
    assert build_prompt("dresses", 1) == "a photo of a model wearing a dress made of " + " $ " * 16
    two = build_prompt("upper_body", 2)
    assert two.startswith("a photo of a model wearing an upper body garment made of  $ ")
    assert build_prompt("lower_body", 1, "  red  ").endswith(" $ red")
    assert prompt_prefix("lower_body") == "a photo of a model wearing a lower body garment made of"


def test_placeholders_are_token_259_right_after_the_prefix(tokenizer, count):
    ids = tokenizer(build_prompt("dresses", 2, "with buttons"), padding="max_length", max_length=77).input_ids
    n_prefix = count(prompt_prefix("dresses"))
    assert PLACEHOLDER_TOKEN_ID == 259
    assert ids[1 + n_prefix : 1 + n_prefix + 32] == [259] * 32
    assert ids.count(259) == 32
    assert ids[-1] == 0  # SD2 pads with id 0


def test_a_dollar_in_the_extra_text_is_not_a_pseudo_word(tokenizer, count):
    """Extra text comes after the placeholders and may hold its own "$" (a price): the pseudo-words
    go into the first run, right after the prefix. Mutations caught: the run searched from the
    end (failed: yes); the check that the whole run is placeholders dropped (failed: yes)."""
    ids = tokenizer(build_prompt("dresses", 1, "under $ 50")).input_ids
    assert ids.count(259) == 17
    start = 1 + count(prompt_prefix("dresses"))
    assert placeholder_positions(ids, 259, 16) == list(range(start, start + 16))
    message = "expected 17 consecutive placeholder tokens in the prompt, found 17"
    with pytest.raises(ValueError, match=message):
        placeholder_positions(ids, 259, 17)


@pytest.mark.parametrize("category, k", [("dresses", 4), ("upper_body", 3), ("lower_body", 3)])
def test_max_garments_per_category(count, tokenizer, category, k):
    assert max_garments(category, count_tokens=count) == k
    n = len(tokenizer(build_prompt(category, k)).input_ids)
    assert n <= 77 < n + 16  # k fits, k + 1 would not


def test_extra_text_takes_room(count):
    assert max_garments("dresses", "red", count_tokens=count) == 4  # 1 + 10 + 64 + 1 + 1 = 77
    assert max_garments("dresses", "red silk", count_tokens=count) == 3
    assert max_garments("dresses", "word " * 70, count_tokens=count) == 0


def test_too_many_garments_is_a_clear_error(count):
    check_prompt_fits("upper_body", 3, count_tokens=count)
    with pytest.raises(PromptTooLongError, match="use at most 3 garment"):
        check_prompt_fits("upper_body", 4, count_tokens=count)
    with pytest.raises(PromptTooLongError, match="shorten the extra text"):
        check_prompt_fits("dresses", 1, "word " * 70, count_tokens=count)


def test_unknown_category():
    with pytest.raises(ValueError, match="upper_body, lower_body, dresses"):
        build_prompt("shoes", 1)


def test_default_counter_agrees_with_clip_tokenizer(count):
    text = "a (red) floral-print midi dress, puff sleeves & buttons"
    from fashion_rag.inversion.prompt import _open_clip_counter

    assert _open_clip_counter()(text) == count(text)
    assert max_garments("upper_body") == 3


def test_zero_garments_is_refused():
    """A prompt with no placeholder would condition on the bare words. Mutation caught: the check
    weakened to num_garments < 0 (build_prompt(..., 0) returned the prefix alone)."""
    with pytest.raises(ValueError, match="at least one garment is needed"):
        build_prompt("dresses", 0)
    assert build_prompt("dresses", 1).count("$") == 16


def test_four_dresses_fill_the_chunk_exactly(count, tokenizer):
    """4 dresses: start + 10 words + 64 pseudo-words + end = 76 of 77 tokens, 64 = the room left
    (77 - 2 - 10 - 1 for "red"): it fits, a 1-token extra text too; a 2-token one does not.
    Mutation caught: `need < room` for `need <= room` (a prompt that fills the room refused)."""
    assert len(tokenizer(build_prompt("dresses", 4, "red")).input_ids) == 77
    check_prompt_fits("dresses", 4, "red", count_tokens=count)
    check_prompt_fits("dresses", 4, count_tokens=count)
    with pytest.raises(PromptTooLongError):
        check_prompt_fits("dresses", 4, "red silk", count_tokens=count)


def test_too_long_messages_word_for_word(count):
    """The whole message, numbers worked by hand (77 - 2 - prefix - extra): an upper body prefix
    is 12 tokens (63 left, 3 garments of 16), a dress prefix 10, "red silk" 2, "word " * 70 70
    tokens (room -5, shown as 0, and no garment fits).
    Mutations caught: the room shown negative (`{room}`); the fit computed from the negative room
    (-1 garment: "use at most -1"); the extra text's count shown for the prefix; the advice to
    shorten the extra text dropped when some garments fit; the garment count shown as the need."""
    cases = [
        (("upper_body", 4, ""),
         "4 garment(s) need 64 pseudo-words, but a CLIP prompt holds 77 tokens: start/end (2) + "
         "'a photo of a model wearing an upper body garment made of' (12) leave room for 63. "
         "With category upper_body, use at most 3 garment(s) (retrieve fewer, or pass fewer images)."),
        (("dresses", 4, "red silk"),
         "4 garment(s) need 64 pseudo-words, but a CLIP prompt holds 77 tokens: start/end (2) + "
         "'a photo of a model wearing a dress made of' (10) + extra text (2 tokens) leave room for 63. "
         "With category dresses, use at most 3 garment(s) (retrieve fewer, or pass fewer images) or "
         "shorten the extra text."),
        (("dresses", 1, "word " * 70),
         "1 garment(s) need 16 pseudo-words, but a CLIP prompt holds 77 tokens: start/end (2) + "
         "'a photo of a model wearing a dress made of' (10) + extra text (70 tokens) leave room for 0. "
         "With category dresses, no garment fits: shorten the extra text."),
    ]
    for (category, k, extra), message in cases:
        with pytest.raises(PromptTooLongError) as err:
            check_prompt_fits(category, k, extra, count_tokens=count)
        assert str(err.value) == message
