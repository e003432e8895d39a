"""GarmentInversion through ComfyUI's own CLIP / CLIP_VISION vs the reference computation.

Same random weights on both sides, tiny configs of the real architectures, fp32:
reference = transformers CLIPImageProcessor (PIL, uint8) -> CLIPVisionModel.last_hidden_state
-> the adapter built from transformers' CLIP layers -> the SD2-style transformers CLIPTextModel
(ComfyUI's layer -2 + final LN == a text model one layer shorter) with the PTEs replacing the
input token embeddings at the `$` positions (the reference's encode_text_word_embedding).
"""

from __future__ import annotations

import importlib
import json
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_adapter import ReferenceAdapter
from transformers import (
    CLIPImageProcessorPil,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
)

from fashion_rag.inversion.adapter import AdapterConfig, expected_shapes
from fashion_rag.inversion.prompt import build_prompt
from fashion_rag.retrieval.garments import Garment, Garments
from tools.harness import comfy_path

TEXT = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4)
TEXT_LAYERS = 3  # ComfyUI's model; the reference text model has one layer fewer (SD2's 23 of 24)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5)
# heads=16: the loader reads sizes off the file, and heads (not visible in shapes) default to 16.
ADAPTER = AdapterConfig(vision_width=32, heads=16, mlp_dim=64, hidden_dim=48, num_tokens=16, text_width=64)
ADAPTER_FILE = "parity_tiny_adapter.safetensors"
# The reference's prompt, f'a photo of a model wearing {category_text} made of {" $ " * 16 * n}',
# with its category words written out: the reference side never takes the pack's build_prompt.
NOUNS = {"dresses": "a dress", "upper_body": "an upper body garment", "lower_body": "a lower body garment"}


def reference_prompt(category: str, garments: int) -> str:
    return f"a photo of a model wearing {NOUNS[category]} made of {' $ ' * (16 * garments)}"


def randomize(sd: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Seeded values that keep activations in range (every tensor random, norms around 1)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        r = torch.randn(v.shape, generator=g)
        if v.ndim == 1:
            out[k] = (1.0 + 0.1 * r) if "norm" in k and k.endswith("weight") else 0.05 * r
        elif "embedding" in k:
            out[k] = 0.3 * r
        else:
            out[k] = r / np.sqrt(np.prod(v.shape[1:]))
    return out


def smooth_garment(seed: int, h: int = 512, w: int = 384) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, ((xx * (seed + 1) + yy) % 97) * 2.6], axis=-1)
    return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


class Models:
    """The same weights as ComfyUI objects (clip, clip_vision, adapter patcher) and as references."""

    def __init__(self, harness, tmp_path) -> None:
        import comfy.clip_vision
        import comfy.sd
        import comfy.text_encoders.sd2_clip as sd2_clip
        import folder_paths

        torch.manual_seed(0)
        # -- text: transformers reference (layers - 1) and ComfyUI's SD2 CLIP (all layers)
        tcfg = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, num_hidden_layers=TEXT_LAYERS - 1,
                              hidden_act="gelu", layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407,
                              pad_token_id=0, **TEXT)
        self.ref_text = CLIPTextModel(tcfg).eval()
        self.ref_text.load_state_dict(randomize(self.ref_text.state_dict(), 1))
        last = CLIPTextModel(CLIPTextConfig(**{**tcfg.to_dict(), "num_hidden_layers": TEXT_LAYERS}))
        comfy_sd = {f"text_model.{k}": v for k, v in self.ref_text.state_dict().items()}
        top = f"layers.{TEXT_LAYERS - 1}."
        extra = randomize({k: v for k, v in last.state_dict().items() if top in k}, 2)
        comfy_sd.update({f"text_model.{k}": v for k, v in extra.items()})
        comfy_sd["text_projection.weight"] = torch.randn(TEXT["hidden_size"], TEXT["hidden_size"]) * 0.1

        class Target:
            params: dict = {}
            clip = sd2_clip.SD2ClipModel
            tokenizer = sd2_clip.SD2Tokenizer

        self.clip = comfy.sd.CLIP(
            Target(),
            embedding_directory=folder_paths.get_folder_paths("embeddings"),
            model_options={"dtype": torch.float32,
                           "clip_h_model_config": {**TEXT, "num_hidden_layers": TEXT_LAYERS}},
        )
        missing, unexpected = self.clip.load_sd(comfy_sd)
        assert not missing and not unexpected, (missing, unexpected)
        tok_dir = comfy_path() / "comfy" / "sd1_tokenizer"  # CLIP BPE; SD2 pads with "!" (id 0)
        self.tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), pad_token="!")

        # -- vision: transformers reference and ComfyUI's CLIP_VISION from a json config
        self.ref_vision = CLIPVisionModel(CLIPVisionConfig(**VISION)).eval()
        self.ref_vision.load_state_dict(randomize(self.ref_vision.state_dict(), 3))
        cfg_path = tmp_path / "tiny_clip_vision.json"
        cfg_path.write_text(json.dumps({**VISION, "num_channels": 3, "model_type": "clip_vision_model",
                                        "projection_dim": 16}))
        self.clip_vision = comfy.clip_vision.ClipVisionModel(str(cfg_path))
        vsd = {f"vision_model.{k}": v for k, v in self.ref_vision.state_dict().items()}
        vsd["visual_projection.weight"] = torch.randn(16, VISION["hidden_size"]) * 0.1
        missing, unexpected = self.clip_vision.load_sd(vsd)
        assert not missing and not unexpected, (missing, unexpected)
        assert self.clip_vision.dtype == torch.float32

        # -- adapter: a file in ComfyUI's models folder, loaded by the pack's loader node
        asd = randomize({k: torch.empty(s) for k, s in expected_shapes(ADAPTER).items()}, 4)
        folder = harness.base / "models" / "fashion_rag" / "adapter"
        folder.mkdir(parents=True, exist_ok=True)
        save_file(asd, str(folder / ADAPTER_FILE))
        self.ref_adapter = ReferenceAdapter(ADAPTER).eval()
        self.ref_adapter.load_state_dict(asd)

        nodes = harness.nodes.NODE_CLASS_MAPPINGS
        self.inversion = nodes["FashionRAGGarmentInversion"]
        pack = sys.modules[self.inversion.__module__].__name__.rsplit(".", 2)[0]
        self.pseudo_words = sys.modules[f"{pack}.nodes.pseudo_words"]
        self.token_injection = sys.modules[f"{pack}.nodes.token_injection"]
        loader = nodes["FashionRAGAdapterLoader"]
        self.adapter = loader.execute(adapter_name=ADAPTER_FILE).result[0]

    # ---------------------------------------------------------------- the reference computation

    def ref_ids(self, text: str) -> torch.Tensor:
        return self.tokenizer(text, padding="max_length", max_length=77, truncation=True,
                              return_tensors="pt").input_ids

    @torch.no_grad()
    def ref_ptes(self, garments: list[np.ndarray]) -> torch.Tensor:
        pixels = CLIPImageProcessorPil()(images=garments, return_tensors="pt").pixel_values
        feats = self.ref_vision(pixel_values=pixels).last_hidden_state
        return self.ref_adapter(feats).reshape(1, ADAPTER.num_tokens * len(garments), -1)

    @torch.no_grad()
    def ref_encode(self, text: str, ptes: torch.Tensor | None = None) -> torch.Tensor:
        ids = self.ref_ids(text)

        def replace(_module, _inputs, embeds):
            if ptes is None:
                return embeds
            embeds = embeds.clone()
            pos = (ids[0] == 259).nonzero()[:, 0][: ptes.shape[1]]
            embeds[0, pos] = ptes[0].to(embeds.dtype)
            return embeds

        hook = self.ref_text.embeddings.token_embedding.register_forward_hook(replace)
        try:
            return self.ref_text(input_ids=ids).last_hidden_state
        finally:
            hook.remove()


@pytest.fixture(scope="module")
def models(comfy, tmp_path_factory) -> Models:
    return Models(comfy, tmp_path_factory.mktemp("parity"))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def test_token_ids_and_padding_match_reference(models):
    for text in (build_prompt("dresses", 2), build_prompt("upper_body", 3, "red silk"), ""):
        ours = [t[0] for t in models.clip.tokenize(text)["h"][0]]
        assert ours == models.ref_ids(text)[0].tolist()
    assert models.ref_ids("")[0, 2:].eq(0).all()  # SD2 pads with 0 after the end token


def test_plain_text_encoder_parity(models):
    text = "a photo of a model wearing a dress"
    cond = models.clip.encode_from_tokens_scheduled(models.clip.tokenize(text))[0][0]
    assert rel_err(cond, models.ref_encode(text)) < 1e-5


def test_garment_inversion_matches_reference(models):
    """Against the reference computation on the reference's own prompt string. Mutation caught: a
    word dropped from build_prompt's template (the reference side used build_prompt before, so it
    passed; failed now: yes)."""
    garments = [smooth_garment(1), smooth_garment(2)]
    image = torch.from_numpy(np.stack(garments)).float() / 255.0  # a ComfyUI IMAGE
    out = models.inversion.execute(
        clip=models.clip, clip_vision=models.clip_vision, adapter=models.adapter, images=image,
        category="dresses",
    )
    positive, negative = out.result
    ref_ptes = models.ref_ptes(garments)
    ref_pos = models.ref_encode(reference_prompt("dresses", 2), ref_ptes)
    ref_neg = models.ref_encode("")
    pos_err = rel_err(positive[0][0], ref_pos)
    neg_err = rel_err(negative[0][0], ref_neg)
    print(f"\nparity: positive rel err {pos_err:.2e}, negative rel err {neg_err:.2e}")
    assert positive[0][0].shape == (1, 77, TEXT["hidden_size"])
    assert pos_err < 1e-4 and neg_err < 1e-4
    # The PTEs themselves (ComfyUI CLIP_VISION + our preprocessing + our adapter).
    ptes = models.pseudo_words.garment_embeddings(models.clip_vision, models.adapter, [image])
    pte_err = rel_err(ptes.reshape(ref_ptes.shape), ref_ptes)
    print(f"parity: PTE rel err {pte_err:.2e}")
    assert pte_err < 1e-4
    # The PTEs really are in the conditioning: without them it differs.
    plain = models.ref_encode(reference_prompt("dresses", 2))
    assert rel_err(positive[0][0], plain) > 1e-2


def test_garments_input_with_auto_category(models):
    garments = [smooth_garment(3)]
    items = (Garment(id="g1", score=0.9, category="upper", path="/x/g1.jpg"),)
    retrieved = Garments(items=items, images=torch.from_numpy(np.stack(garments)).float() / 255.0)
    positive, _ = models.inversion.execute(
        clip=models.clip, clip_vision=models.clip_vision, adapter=models.adapter, garments=retrieved,
        category="auto", extra_text="",
    ).result
    ref = models.ref_encode(reference_prompt("upper_body", 1), models.ref_ptes(garments))
    assert rel_err(positive[0][0], ref) < 1e-4


def test_pte_equal_to_token_row_reproduces_plain_prompt(models):
    prompt = build_prompt("lower_body", 1)
    row = models.clip.cond_stage_model.clip_h.transformer.get_input_embeddings().weight[259]
    tokens = models.token_injection.inject_embeddings(models.clip, prompt, row.expand(1, 16, -1).clone())
    assert sum(not isinstance(t[0], int) for t in tokens["h"][0]) == 16
    injected = models.clip.encode_from_tokens_scheduled(tokens)[0][0]
    plain = models.clip.encode_from_tokens_scheduled(models.clip.tokenize(prompt))[0][0]
    assert torch.equal(injected, plain)


def test_comfy_clip_preprocess_is_not_reference_exact(models):
    """Why the node preprocesses itself: ComfyUI's clip_preprocess rounds 298.67 up to 299 rows
    and uses torch's antialiased bicubic; our pixels equal the reference processor's."""
    import comfy.clip_vision

    garment = smooth_garment(4)
    image = torch.from_numpy(garment[None]).float() / 255.0
    ref = CLIPImageProcessorPil()(images=[garment], return_tensors="pt").pixel_values
    comfy_pixels = comfy.clip_vision.clip_preprocess(image)
    from fashion_rag.inversion.clip_preprocess import preprocess_garments

    assert rel_err(preprocess_garments(image), ref) < 1e-6
    diff = rel_err(comfy_pixels, ref)
    print(f"\nComfyUI clip_preprocess vs reference pixels: rel err {diff:.2e}")
    assert diff > 1e-2


def test_retrieved_garments_come_before_extra_images(models):
    """garments and images together: the retrieved garment's 16 pseudo-words first, then the extra
    image's, as the reference computes them for [retrieved, extra] in that order (dresses, 2).
    Mutation caught: the extra images' pseudo-words put before the retrieved garments'."""
    retrieved, extra = smooth_garment(5), smooth_garment(6)
    items = (Garment(id="g5", score=0.9, category="dresses", path="/x/g5.jpg"),)
    garments = Garments(items=items, images=torch.from_numpy(retrieved[None]).float() / 255.0)
    positive, _ = models.inversion.execute(
        clip=models.clip, clip_vision=models.clip_vision, adapter=models.adapter, garments=garments,
        images=torch.from_numpy(extra[None]).float() / 255.0, category="auto",
    ).result
    ref = models.ref_encode(reference_prompt("dresses", 2), models.ref_ptes([retrieved, extra]))
    swapped = models.ref_encode(reference_prompt("dresses", 2), models.ref_ptes([extra, retrieved]))
    assert rel_err(swapped, ref) > 1e-2  # the order matters
    assert rel_err(positive[0][0], ref) < 1e-4


def test_injection_refuses_a_prompt_of_more_than_one_chunk(models):
    """A prompt over 77 tokens (16 placeholders, then 70 more words: two CLIP chunks) cannot hold
    the pseudo-words at fixed positions: PromptTooLongError, before any encoding.
    Mutation caught: two chunks accepted (len(chunks) > 2)."""
    prompt = "a photo of a model wearing a dress made of " + " $ " * 16 + " red" * 70
    assert len(models.ref_ids(prompt)[0]) == 77  # truncated by the reference: it does not fit
    assert len(models.tokenizer(prompt).input_ids) > 77
    with pytest.raises(Exception, match="CLIP chunks; it must fit one") as err:
        models.token_injection.inject_embeddings(models.clip, prompt, torch.zeros(1, 16, TEXT["hidden_size"]))
    assert type(err.value).__name__ == "PromptTooLongError"


def test_empty_retrieval_is_an_error_even_with_extra_images(models):
    """A connected garments input holding no garment (retrieval found nothing) is a clear error,
    also when extra images are connected too: the prompt would silently lose the retrieved part.
    Mutation caught: the empty-garments check dropped."""
    empty = Garments(items=(), images=torch.zeros(0, 512, 384, 3))
    extra = torch.from_numpy(smooth_garment(7)[None]).float() / 255.0
    with pytest.raises(ValueError, match=r"the garments input holds no garment \(did retrieval return"):
        models.inversion.execute(clip=models.clip, clip_vision=models.clip_vision, adapter=models.adapter,
                                 garments=empty, images=extra, category="dresses")


def test_garment_embeddings_preprocess_at_the_vision_models_image_size(comfy_runtime, tmp_path, one_thread):
    """A CLIP_VISION of another input size (112 here; the tiny parity model and ViT-H use 224, the
    default) gets pixels of its own size, as transformers' processor makes them for that model.
    Mutation caught: garment_embeddings ignoring clip_vision.image_size (always 224)."""
    import comfy.clip_vision

    vision = {**VISION, "image_size": 112}
    ref_vision = CLIPVisionModel(CLIPVisionConfig(**vision)).eval()
    ref_vision.load_state_dict(randomize(ref_vision.state_dict(), 5))
    cfg_path = tmp_path / "tiny_clip_vision_112.json"
    cfg_path.write_text(json.dumps({**vision, "num_channels": 3, "model_type": "clip_vision_model",
                                    "projection_dim": 16}))
    clip_vision = comfy.clip_vision.ClipVisionModel(str(cfg_path))
    vsd = {f"vision_model.{k}": v for k, v in ref_vision.state_dict().items()}
    vsd["visual_projection.weight"] = torch.zeros(16, vision["hidden_size"])
    missing, unexpected = clip_vision.load_sd(vsd)
    assert not missing and not unexpected, (missing, unexpected)
    # The adapter through the pack's own loader, from a file; the reference from transformers' layers.
    cfg = AdapterConfig(vision_width=32, heads=16, mlp_dim=64, hidden_dim=48, num_tokens=16, text_width=8)
    asd = randomize({k: torch.empty(s) for k, s in expected_shapes(cfg).items()}, 6)
    save_file(asd, str(tmp_path / "adapter_112.safetensors"))
    ref_adapter = ReferenceAdapter(cfg).eval()
    ref_adapter.load_state_dict(asd)
    pack = importlib.import_module(f"{comfy_runtime.pack.__name__}.nodes.pseudo_words")
    loader = importlib.import_module(f"{comfy_runtime.pack.__name__}.nodes.adapter_loader")
    adapter = loader.load_adapter_patcher(str(tmp_path / "adapter_112.safetensors"))

    garment = smooth_garment(8)
    ptes = pack.garment_embeddings(clip_vision, adapter, [torch.from_numpy(garment[None]).float() / 255.0])
    processor = CLIPImageProcessorPil(size={"shortest_edge": 112}, crop_size={"height": 112, "width": 112})
    pixels = processor(images=[garment], return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, 112, 112)
    with torch.no_grad():
        ref = ref_adapter(ref_vision(pixel_values=pixels).last_hidden_state)
    assert ptes.shape == (1, 16, 8)
    assert rel_err(ptes, ref.reshape(1, 16, 8)) < 1e-4


def test_adapter_is_fp32_where_the_device_has_no_fast_fp16(comfy_runtime, monkeypatch):
    """ComfyUI started with --fp16-text-enc keeps text encoders in fp16, but the plain-torch
    adapter computes in the dtype it is stored in: on a device without fast fp16 (a CPU) the
    loader keeps it in fp32. (The test harness starts ComfyUI with --fp32-text-enc; this test
    sets the fp16 flag of ComfyUI's own parsed arguments instead.) Mutation caught: fp16 taken
    whenever text_encoder_dtype says fp16 (the should_use_fp16 check dropped)."""
    import comfy.model_management as mm
    from comfy.cli_args import args

    monkeypatch.setattr(args, "fp32_text_enc", False)
    monkeypatch.setattr(args, "fp16_text_enc", True)
    cpu = torch.device("cpu")
    assert mm.text_encoder_dtype(cpu) == torch.float16 and not mm.should_use_fp16(cpu)  # the premise
    loader = importlib.import_module(f"{comfy_runtime.pack.__name__}.nodes.adapter_loader")
    assert loader._adapter_dtype(cpu) == torch.float32
    monkeypatch.setattr(args, "bf16_text_enc", True)
    monkeypatch.setattr(args, "fp16_text_enc", False)
    assert mm.text_encoder_dtype(cpu) == torch.bfloat16 and not mm.should_use_bf16(cpu)
    assert loader._adapter_dtype(cpu) == torch.float32


def test_adapter_of_another_vision_width_is_named_with_the_clip_vision_hint(models, tmp_path):
    """A 48-wide adapter on the 32-wide CLIP_VISION: the error says both widths and which vision
    model to load, before the adapter runs. Mutation caught: the width check in garment_embeddings
    dropped (the adapter's own shape error, with no word about CLIP_VISION)."""
    pack = models.pseudo_words.__name__.rsplit(".", 2)[0]
    loader = sys.modules[f"{pack}.nodes.adapter_loader"]
    cfg = AdapterConfig(vision_width=48, heads=16, mlp_dim=64, hidden_dim=48, num_tokens=16, text_width=64)
    save_file(randomize({k: torch.empty(s) for k, s in expected_shapes(cfg).items()}, 7),
              str(tmp_path / "adapter_48.safetensors"))
    adapter = loader.load_adapter_patcher(str(tmp_path / "adapter_48.safetensors"))
    image = torch.from_numpy(smooth_garment(9, 64, 48)[None]).float() / 255.0
    with pytest.raises(ValueError, match=r"the adapter expects 48-wide vision features, this CLIP_VISION "
                                         r"gives 32\. Load the .* with a Load CLIP Vision node"):
        models.pseudo_words.garment_embeddings(models.clip_vision, adapter, [image])


def test_ptes_are_float32_from_a_bfloat16_adapter(models, tmp_path):
    """An adapter stored in bfloat16 (ComfyUI's --bf16-text-enc on a device with fast bf16) gives
    float32 PTEs, within bfloat16's precision of the reference's. Mutation caught: the .float()
    cast dropped (bf16 PTEs into the fp32 text encoder's embedding table)."""
    import comfy.model_patcher

    from fashion_rag.inversion.adapter import load_adapter

    # The test adapter's weights, rounded to bfloat16, as a file.
    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in models.adapter.model.state_dict().items()}
    save_file(sd, str(tmp_path / "a.safetensors"))
    net = load_adapter(tmp_path / "a.safetensors", dtype=torch.bfloat16)
    cpu = torch.device("cpu")
    patcher = comfy.model_patcher.ModelPatcher(net, load_device=cpu, offload_device=cpu)
    garment = smooth_garment(10)
    image = torch.from_numpy(garment[None]).float() / 255.0
    ptes = models.pseudo_words.garment_embeddings(models.clip_vision, patcher, [image])
    assert ptes.dtype == torch.float32 and ptes.shape == (1, 16, TEXT["hidden_size"])
    assert rel_err(ptes, models.ref_ptes([garment]).reshape(1, 16, -1)) < 3e-2


def test_auto_category_is_the_top_ranked_garments(models):
    """Two retrieved garments, an upper-body one ranked first and a dress second, with category
    "auto": the prompt is the upper-body one (the top garment's), holding both garments'
    pseudo-words in rank order. Mutation caught: the category taken from the last garment."""
    a, b = smooth_garment(14), smooth_garment(15)
    items = (Garment(id="g14", score=0.9, category="upper", path="/x/g14.jpg"),
             Garment(id="g15", score=0.8, category="dresses", path="/x/g15.jpg"))
    retrieved = Garments(items=items, images=torch.from_numpy(np.stack([a, b])).float() / 255.0)
    positive, _ = models.inversion.execute(
        clip=models.clip, clip_vision=models.clip_vision, adapter=models.adapter, garments=retrieved,
        category="auto",
    ).result
    ref = models.ref_encode(reference_prompt("upper_body", 2), models.ref_ptes([a, b]))
    assert rel_err(positive[0][0], ref) < 1e-4
