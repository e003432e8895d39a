"""Garment conditioning at the SD2 text encoder's real depth, against an independent reference.

ComfyUI side: an SD2 text encoder *file* of 24 layers (reduced width, the real 49408-token vocabulary
and 77 positions), loaded by ComfyUI's own `comfy.sd.load_clip` (what CLIPLoader does): ComfyUI
detects it as CLIP-H from its layer count and builds its SD2 CLIP, which takes the penultimate
layer and applies the final LayerNorm. The pack then encodes the garment prompt with the PTEs in it
(`encode_garments`, the conditioning step of FashionRAGGarmentInversion).

Reference side, written here without the pack: the prompt from the literal template
    "a photo of a model wearing {noun} made of " + " $ " * (16 * k)
tokenized by transformers' CLIPTokenizer (SD2 pads with "!", id 0), the PTEs put in place of the
token embeddings at the `$` (id 259) positions, and transformers' CLIPTextModel with 23 layers
(SD2-inpainting's diffusers text_encoder: the 24-layer model minus its last layer) and its final
LayerNorm. The negative is the empty prompt through the same model.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from test_inpaint_parity import pack_module
from test_inversion_parity import randomize

from tools.harness import comfy_path

WIDTH = dict(hidden_size=64, intermediate_size=256, num_attention_heads=4)
LAYERS = 24  # SD2's OpenCLIP-H text tower (ComfyUI takes layer 23 of 24 + final LN)
PLACEHOLDER_ID = 259  # "$</w>" in the CLIP BPE vocabulary
TOKENS_PER_GARMENT = 16
NOUNS = {"dresses": "a dress", "upper_body": "an upper body garment", "lower_body": "a lower body garment"}
# (category, k): the most garments each prompt holds (4 dresses fill 76 of 77 tokens) and one.
CASES = [("dresses", 4), ("upper_body", 3), ("lower_body", 3), ("dresses", 1)]


def literal_prompt(category: str, k: int) -> str:
    return "a photo of a model wearing " + NOUNS[category] + " made of " + " $ " * (TOKENS_PER_GARMENT * k)


class Encoders:
    def __init__(self, harness, tmp_path) -> None:
        import comfy.sd
        import folder_paths
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        config = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, num_hidden_layers=LAYERS - 1,
                                hidden_act="gelu", layer_norm_eps=1e-5, bos_token_id=49406,
                                eos_token_id=49407, pad_token_id=0, **WIDTH)
        self.reference = CLIPTextModel(config).eval()
        self.reference.load_state_dict(randomize(self.reference.state_dict(), 1))
        # The file: the reference's 23 layers, a 24th only ComfyUI runs (it must not matter),
        # the final LN and a text projection, under the transformers names CLIP-H files use.
        sd = {f"text_model.{k}": v for k, v in self.reference.state_dict().items()}
        top = {k.replace("layers.0.", f"layers.{LAYERS - 1}."): v for k, v in sd.items()
               if k.startswith("text_model.encoder.layers.0.")}
        sd.update(randomize(top, 2))
        sd["text_projection.weight"] = torch.randn(WIDTH["hidden_size"], WIDTH["hidden_size"]) * 0.1
        path = tmp_path / "sd2_text_encoder_24_layers.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))

        self.clip = comfy.sd.load_clip(
            ckpt_paths=[str(path)], embedding_directory=folder_paths.get_folder_paths("embeddings"),
            clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION,
            model_options={"clip_h_model_config": WIDTH},  # the width only: depth is ComfyUI's SD2 config
        )
        encoder = self.clip.cond_stage_model.clip_h
        assert encoder.num_layers == LAYERS and encoder.layer == "hidden" and encoder.layer_idx == -2
        missing, unexpected = self.clip.load_sd(sd)
        assert not missing and not unexpected, (missing, unexpected)

        tokenizer_dir = comfy_path() / "comfy" / "sd1_tokenizer"  # the CLIP BPE files
        self.tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), pad_token="!")
        self.inversion = pack_module(harness, "nodes.token_injection")

    def ids(self, text: str) -> torch.Tensor:
        return self.tokenizer(text, padding="max_length", max_length=77, truncation=True,
                              return_tensors="pt").input_ids

    @torch.no_grad()
    def reference_encode(self, text: str, ptes: torch.Tensor | None = None) -> torch.Tensor:
        """last_hidden_state with the PTE rows (rank order) as the `$` positions' input embeddings."""
        ids = self.ids(text)
        if ptes is None:
            return self.reference(input_ids=ids).last_hidden_state
        positions = (ids[0] == PLACEHOLDER_ID).nonzero()[:, 0]
        rows = ptes.reshape(-1, ptes.shape[-1])
        assert len(positions) == len(rows)

        def replace(_module, _inputs, embeds):
            embeds = embeds.clone()
            embeds[0, positions] = rows.to(embeds.dtype)
            return embeds

        hook = self.reference.embeddings.token_embedding.register_forward_hook(replace)
        try:
            return self.reference(input_ids=ids).last_hidden_state
        finally:
            hook.remove()

    def pack_encode(self, ptes: torch.Tensor, category: str):
        """The pack's conditioning step: prompt, injection, ComfyUI encode -> (positive, negative)."""
        with torch.inference_mode():
            positive, negative = self.inversion.encode_garments(self.clip, ptes, category)
        return positive[0][0], negative[0][0]


@pytest.fixture(scope="module")
def encoders(comfy_runtime, tmp_path_factory) -> Encoders:
    return Encoders(comfy_runtime, tmp_path_factory.mktemp("conditioning_depth"))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def test_literal_prompt_tokens(encoders):
    """The template's placeholders are one run of 16k `$` tokens right after the words."""
    for category, k in CASES:
        ids = encoders.ids(literal_prompt(category, k))[0].tolist()
        words = len(encoders.tokenizer(literal_prompt(category, k).split(" made of ")[0] + " made of")
                    .input_ids) - 1  # start token + words
        assert ids[words:words + 16 * k] == [PLACEHOLDER_ID] * (16 * k), (category, k, ids)
        assert ids.count(PLACEHOLDER_ID) == 16 * k
        assert ids[words + 16 * k] == 49407  # end token: all fit one 77-token chunk


@pytest.mark.parametrize("category,k", CASES)
def test_conditioning_matches_reference_at_real_depth(encoders, category, k):
    """Pack conditioning (24-layer ComfyUI SD2 CLIP) == reference (23-layer CLIPTextModel + final LN).

    Mutations caught (each tried once): the pack's template changed ("made of" -> "made from");
    the PTEs one position late (placeholder_positions start + 1); the PTEs in reverse rank order;
    the last layer instead of the penultimate (clip_layer(-1)); the penultimate layer hard-coded
    as the absolute index a 3-layer model has (clip_layer(1), which test_inversion_parity's
    3-layer model accepts); a non-empty negative prompt.
    """
    g = torch.Generator().manual_seed(10 + k)
    ptes = 0.3 * torch.randn(k, TOKENS_PER_GARMENT, WIDTH["hidden_size"], generator=g)
    positive, negative = encoders.pack_encode(ptes, category)
    reference = encoders.reference_encode(literal_prompt(category, k), ptes)
    pos_err = rel_err(positive, reference)
    neg_err = rel_err(negative, encoders.reference_encode(""))
    print(f"\n{category} k={k}: positive rel err {pos_err:.2e}, negative rel err {neg_err:.2e}")
    assert positive.shape == negative.shape == (1, 77, WIDTH["hidden_size"])
    assert pos_err < 1e-5 and neg_err < 1e-5
    # The PTEs are really in it: the plain prompt (the `$` token rows) gives another conditioning.
    assert rel_err(positive, encoders.reference_encode(literal_prompt(category, k))) > 1e-2


def test_one_prompt_per_garment_is_a_batch_of_the_reference_prompts(encoders):
    """encode_each_garment with k=2: prompt i of the batch is the one-garment reference prompt with
    garment i's PTEs, and SD2's pooled output is batched with it. Mutations caught: every prompt
    built from the first garment (ptes[:1] instead of ptes[i:i+1]); the pooled output left as the
    first prompt's instead of concatenated (batch 1 beside a prompt batch of 2)."""
    g = torch.Generator().manual_seed(21)
    ptes = 0.3 * torch.randn(2, TOKENS_PER_GARMENT, WIDTH["hidden_size"], generator=g)
    with torch.inference_mode():
        positive, negative = encoders.inversion.encode_each_garment(encoders.clip, ptes, "upper_body")
    (cond, extras), = positive
    assert cond.shape == (2, 77, WIDTH["hidden_size"])
    for i in range(2):
        reference = encoders.reference_encode(literal_prompt("upper_body", 1), ptes[i:i + 1])
        assert rel_err(cond[i:i + 1], reference) < 1e-5, i
    pooled = extras["pooled_output"]
    assert pooled.shape[0] == 2 and (pooled[0] - pooled[1]).abs().max() > 1e-4
    assert negative[0][0].shape == (1, 77, WIDTH["hidden_size"])


def test_injection_refuses_other_widths_and_a_second_chunk(encoders):
    """Mutations caught: the text-encoder width check dropped (32-wide PTEs into a 64-wide CLIP
    would be padded or fail deep inside ComfyUI with no remedy); a prompt of two 77-token chunks
    accepted (`len(chunks) < 1` for `!= 1`), where the PTEs could not all sit in one chunk."""
    inject = encoders.inversion.inject_embeddings
    with pytest.raises(ValueError, match=r"32-wide embeddings, but this CLIP's text encoder \('h'\) is "
                                         r"64-wide\. Use the SD2 text encoder"):
        inject(encoders.clip, literal_prompt("dresses", 1), torch.zeros(1, TOKENS_PER_GARMENT, 32))
    long_prompt = "a photo of " + "very " * 70 + literal_prompt("dresses", 1)
    with pytest.raises(Exception, match=r"takes 2 CLIP chunks; it must fit one \(77 tokens\)") as info:
        inject(encoders.clip, long_prompt, torch.zeros(1, TOKENS_PER_GARMENT, WIDTH["hidden_size"]))
    assert type(info.value).__name__ == "PromptTooLongError"


def test_injection_into_a_clip_whose_width_cannot_be_read(encoders, monkeypatch):
    """A CLIP whose text encoder is not where the pack looks for it (a layout it does not know:
    here the SD2 CLIP with its `clip_h` attribute gone) gets no width check, and the PTE rows still
    go, in rank order, to the positions transformers' tokenizer gives the `$` tokens; ComfyUI's
    own encoding is then what meets any mismatch. Mutation caught: the width check without
    `width is not None` (every such CLIP refused as "None-wide")."""
    monkeypatch.delattr(encoders.clip.cond_stage_model, "clip_h")
    text = literal_prompt("upper_body", 1)
    ptes = torch.arange(TOKENS_PER_GARMENT * 8, dtype=torch.float32).reshape(1, TOKENS_PER_GARMENT, 8) + 0.25
    (key, chunks), = encoders.inversion.inject_embeddings(encoders.clip, text, ptes).items()
    assert key == "h" and len(chunks) == 1
    expected = (encoders.ids(text)[0] == PLACEHOLDER_ID).nonzero()[:, 0].tolist()
    placed = [i for i, entry in enumerate(chunks[0]) if isinstance(entry[0], torch.Tensor)]
    assert placed == expected and len(placed) == TOKENS_PER_GARMENT
    for rank, i in enumerate(placed):
        assert torch.equal(chunks[0][i][0], ptes[0, rank])


def test_pseudo_word_count_per_garment_comes_from_the_ptes(encoders):
    """An adapter of 4 pseudo-words per garment: 5 dresses are 20 `$` (fits; 5 x 16 = 80 would not),
    and the conditioning is the reference's for the literal prompt with 20 placeholders.
    Mutations caught: the fit checked with the default 16 tokens per garment (refused); the prompt
    built with 16 placeholders per garment (80 `$`, two chunks)."""
    g = torch.Generator().manual_seed(31)
    ptes = 0.3 * torch.randn(5, 4, WIDTH["hidden_size"], generator=g)
    positive, _ = encoders.pack_encode(ptes, "dresses")
    text = "a photo of a model wearing a dress made of " + " $ " * 20
    assert encoders.ids(text)[0].tolist().count(PLACEHOLDER_ID) == 20
    assert rel_err(positive, encoders.reference_encode(text, ptes)) < 1e-5
