"""The inversion nodes inside real ComfyUI: validation, the in-process executor, files, errors.

The real-size demo weights are not needed: two test-only nodes registered for this module hand
the executor tiny ComfyUI CLIP / CLIP_VISION objects (built in test_inversion_parity.Models from
the same weights as the transformers reference) and capture the CONDITIONING outputs. Everything
else is stock ComfyUI (LoadImage, ImageBatch, RepeatImageBatch) and the pack's nodes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_inversion_parity import ADAPTER_FILE, Models, reference_prompt, rel_err, smooth_garment

from comfy_harness import PromptFailed
from fashion_rag.inversion.prompt import build_prompt
from probe_nodes import FRTestCapture, probe_nodes

EMBEDDING = "fr_test_garments"


def _captured(tag: str) -> tuple:
    got = FRTestCapture.RESULTS[tag]
    return got["positive"], got["negative"]


@pytest.fixture(scope="module")
def env(comfy, tmp_path_factory):
    models = Models(comfy, tmp_path_factory.mktemp("nodes_inversion"))
    garments = [smooth_garment(11), smooth_garment(12), smooth_garment(13)]
    for i, g in enumerate(garments):
        Image.fromarray(g).save(comfy.base / "input" / f"fr_garment_{i}.png")
    with probe_nodes(comfy, tiny=(models.clip, models.clip_vision)):
        yield comfy, models, garments


def graph(images: dict | None = None, inversion: dict | None = None, save: dict | None = None,
          tag: str = "x") -> dict:
    g = {
        "models": {"class_type": "FRTestObjects", "inputs": {"key": "tiny"}},
        "adapter": {"class_type": "FashionRAGAdapterLoader", "inputs": {"adapter_name": ADAPTER_FILE}},
        "img0": {"class_type": "LoadImage", "inputs": {"image": "fr_garment_0.png"}},
        "img1": {"class_type": "LoadImage", "inputs": {"image": "fr_garment_1.png"}},
        "batch": {"class_type": "ImageBatch", "inputs": {"image1": ["img0", 0], "image2": ["img1", 0]}},
    }
    common = {"clip_vision": ["models", 1], "adapter": ["adapter", 0]}
    if inversion is not None:
        inputs = {"clip": ["models", 0], **common, "images": ["batch", 0], "category": "dresses",
                  "extra_text": "", **inversion}
        inputs = {k: v for k, v in inputs.items() if v}  # None/"" drop an input
        g["inv"] = {"class_type": "FashionRAGGarmentInversion", "inputs": inputs}
        g["cap"] = {"class_type": "FRTestCapture",
                    "inputs": {"positive": ["inv", 0], "negative": ["inv", 1], "tag": tag}}
    if save is not None:
        inputs = {**common, "images": ["batch", 0], "name": EMBEDDING, "overwrite": False, **save}
        g["save"] = {"class_type": "FashionRAGSaveGarmentEmbedding", "inputs": inputs}
    g.update(images or {})
    return g


def test_inversion_runs_in_comfyui_and_matches_reference(env):
    comfy, models, garments = env
    comfy.run(graph(inversion={}, tag="ref"))
    positive, negative = _captured("ref")
    ref = models.ref_encode(reference_prompt("dresses", 2), models.ref_ptes(garments[:2]))
    assert rel_err(positive[0][0], ref) < 1e-4
    assert rel_err(negative[0][0], models.ref_encode("")) < 1e-4
    assert "pooled_output" in positive[0][1]


def test_saved_embedding_reproduces_the_conditioning(env):
    comfy, models, _ = env
    out = comfy.run(graph(inversion={}, save={}, tag="emb"))
    path = comfy.base / "models" / "embeddings" / f"{EMBEDDING}.safetensors"
    sd = load_file(str(path))
    assert list(sd) == ["clip_h"] and sd["clip_h"].shape == (32, 64)
    assert "saved" in str(out["save"]) and f"embedding:{EMBEDDING}" in str(out["save"])
    # ComfyUI's own `embedding:` syntax with the file gives the node's conditioning.
    text = f"a photo of a model wearing a dress made of embedding:{EMBEDDING}"
    via_file = models.clip.encode_from_tokens_scheduled(models.clip.tokenize(text))[0][0]
    positive, _ = _captured("emb")
    torch.testing.assert_close(via_file, positive[0][0], atol=1e-6, rtol=0)


def test_save_refuses_to_overwrite_a_different_embedding(env):
    comfy, _, _ = env
    comfy.run(graph(save={"name": "fr_test_overwrite"}))
    path = comfy.base / "models" / "embeddings" / "fr_test_overwrite.safetensors"
    before = load_file(str(path))["clip_h"]
    other = {"img1": {"class_type": "LoadImage", "inputs": {"image": "fr_garment_2.png"}}}
    with pytest.raises(PromptFailed, match="already exists"):
        comfy.run(graph(images=other, save={"name": "fr_test_overwrite"}))
    assert torch.equal(load_file(str(path))["clip_h"], before)
    comfy.run(graph(images=other, save={"name": "fr_test_overwrite", "overwrite": True}))
    assert not torch.equal(load_file(str(path))["clip_h"], before)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_bad_embedding_name_fails_validation(env):
    comfy, _, _ = env
    with pytest.raises(PromptFailed, match="no spaces") as err:
        comfy.run(graph(save={"name": "my garment"}))
    assert err.value.kind == "validation"


def test_too_many_garments_is_a_clear_error(env):
    comfy, _, _ = env
    five = {"rep": {"class_type": "RepeatImageBatch", "inputs": {"image": ["img0", 0], "amount": 5}}}
    with pytest.raises(PromptFailed, match="use at most 4 garment"):
        comfy.run(graph(images=five, inversion={"images": ["rep", 0]}))
    with pytest.raises(PromptFailed, match="use at most 3 garment"):
        comfy.run(graph(images=five, inversion={"images": ["rep", 0], "category": "upper_body"}))


def test_per_garment_gives_one_reference_prompt_per_garment(env):
    """per_garment: a CONDITIONING batch of k, prompt i = the reference prompt with garment i
    alone; not bound by the 77 tokens (5 garments of an upper body). Mutation caught: all
    pseudo-words in every prompt, or pooled outputs left at batch 1."""
    comfy, models, garments = env
    comfy.run(graph(inversion={"per_garment": True}, tag="each"))
    positive, negative = _captured("each")
    ((cond, extras),) = positive
    assert cond.shape[0] == 2 and extras["pooled_output"].shape[0] == 2
    for i in range(2):
        ref = models.ref_encode(reference_prompt("dresses", 1), models.ref_ptes(garments[i : i + 1]))
        assert rel_err(cond[i : i + 1], ref) < 1e-4, i
    assert rel_err(negative[0][0], models.ref_encode("")) < 1e-4
    five = {"rep": {"class_type": "RepeatImageBatch", "inputs": {"image": ["img0", 0], "amount": 5}}}
    comfy.run(graph(images=five, inversion={"images": ["rep", 0], "category": "upper_body",
                                            "per_garment": True}, tag="five"))
    assert _captured("five")[0][0][0].shape[0] == 5


def test_missing_garments_and_auto_category_errors(env):
    comfy, _, _ = env
    with pytest.raises(PromptFailed, match="connect 'garments'"):
        comfy.run(graph(inversion={"images": None}))
    with pytest.raises(PromptFailed, match="choose one of upper_body, lower_body, dresses"):
        comfy.run(graph(inversion={"category": "auto"}))


def test_missing_adapter_file_names_folder_and_source(env):
    comfy, _, _ = env
    g = graph(inversion={})
    g["adapter"]["inputs"]["adapter_name"] = "inversion_adapter_120000.pth"
    with pytest.raises(PromptFailed) as err:
        comfy.run(g)
    msg = str(err.value)
    assert err.value.kind == "validation"
    assert "furio19/fashion-rag" in msg and "CC BY-NC 4.0" in msg
    assert str(comfy.base / "models" / "fashion_rag" / "adapter") in msg
    loader = comfy.nodes.NODE_CLASS_MAPPINGS["FashionRAGAdapterLoader"]
    with pytest.raises(FileNotFoundError, match="inversion_adapter_120000.pth"):
        loader.execute(adapter_name="nope.pth")


def test_adapter_loader_caches_and_wraps_for_memory_manager(env):
    harness, models, _ = env
    import comfy.model_patcher

    nodes = harness.nodes.NODE_CLASS_MAPPINGS
    a = nodes["FashionRAGAdapterLoader"].execute(adapter_name=ADAPTER_FILE).result[0]
    b = nodes["FashionRAGAdapterLoader"].execute(adapter_name=ADAPTER_FILE).result[0]
    assert a is b is models.adapter
    assert isinstance(a, comfy.model_patcher.ModelPatcher)
    assert type(a.model).__name__ == "InversionAdapter"
    assert next(a.model.parameters()).dtype == torch.float32  # CPU: fp32
    assert a.model_size() > 0


def test_node_schemas_have_tooltips(env):
    comfy, _, _ = env
    ids = ("FashionRAGAdapterLoader", "FashionRAGGarmentInversion", "FashionRAGSaveGarmentEmbedding")
    for node_id in ids:
        schema = comfy.nodes.NODE_CLASS_MAPPINGS[node_id].GET_SCHEMA()
        assert schema.category.startswith("fashion_rag/") and schema.description
        assert all(i.tooltip for i in schema.inputs), node_id


def test_pixels_of_load_image_are_8bit_levels(env):
    # LoadImage gives k/255 floats: the node's round() brings back the PNG's bytes exactly.
    comfy, _, garments = env
    from fashion_rag.inversion.clip_preprocess import to_uint8_rgb

    image = torch.from_numpy(np.array(Image.open(comfy.base / "input" / "fr_garment_0.png"))).float() / 255.0
    assert np.array_equal(to_uint8_rgb(image[None])[0], garments[0])


def test_text_width_mismatch_is_a_clear_error(env):
    _, models, _ = env
    with pytest.raises(ValueError, match="48-wide embeddings, but this CLIP's text encoder .* is 64-wide"):
        prompt = build_prompt("dresses", 1)
        models.token_injection.inject_embeddings(models.clip, prompt, torch.zeros(1, 16, 48))


@pytest.mark.slow
def test_full_size_demo_models_through_stock_loaders(env):
    """Real sizes end to end: the demo SD2 checkpoint's CLIP (24 layers, 1024 wide), the demo
    ViT-H/14 CLIP_VISION via CLIPVisionLoader, the full-size demo adapter; 3 upper-body garments."""
    from tools.demo.weights import ADAPTER, CHECKPOINT, CLIP_VISION

    comfy, _, _ = env
    g = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "cv": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": CLIP_VISION}},
        "adapter": {"class_type": "FashionRAGAdapterLoader", "inputs": {"adapter_name": ADAPTER}},
        "img": {"class_type": "LoadImage", "inputs": {"image": "fr_garment_0.png"}},
        "rep": {"class_type": "RepeatImageBatch", "inputs": {"image": ["img", 0], "amount": 3}},
        "inv": {"class_type": "FashionRAGGarmentInversion",
                "inputs": {"clip": ["ckpt", 1], "clip_vision": ["cv", 0], "adapter": ["adapter", 0],
                           "images": ["rep", 0], "category": "upper_body"}},
        "empty": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
        "cap": {"class_type": "FRTestCapture", "inputs": {"positive": ["inv", 0], "negative": ["inv", 1],
                                                          "tag": "full"}},
        "cap_empty": {"class_type": "FRTestCapture", "inputs": {"positive": ["empty", 0],
                                                                "negative": ["empty", 0], "tag": "empty"}},
    }
    comfy.run(g)
    positive, negative = _captured("full")
    assert positive[0][0].shape == (1, 77, 1024) and torch.isfinite(positive[0][0]).all()
    # The negative is exactly what a stock CLIPTextEncode of the empty prompt gives.
    torch.testing.assert_close(negative[0][0], _captured("empty")[0][0][0], atol=0, rtol=0)
    assert not torch.allclose(positive[0][0], negative[0][0])


def test_saved_embedding_records_its_sources(env):
    """The file's metadata names what the pseudo-words came from: no retrieved garment, the 2
    extra images of the batch, 16 tokens each (read back with safetensors' safe_open).
    Mutation caught: the extra images' count recorded as 0."""
    import json

    from safetensors import safe_open

    comfy, _, _ = env
    comfy.run(graph(save={"name": "fr_test_metadata"}))
    path = comfy.base / "models" / "embeddings" / "fr_test_metadata.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["fashion_rag"])
    assert meta == {"garments": [], "extra_images": 2, "tokens_per_garment": 16}


def test_too_many_garments_in_one_image_batch_fail_before_the_vision_tower(env):
    """Five garments in ONE IMAGE batch (one tensor) for an upper body: refused from the prompt's
    length before the vision tower runs (here there is none: clip_vision None). Mutation caught:
    the garments counted as the number of batches (1), so the vision tower runs first."""
    from test_inpaint_parity import pack_module

    comfy, models, _ = env
    PromptTooLongError = pack_module(comfy, "fashion_rag.inversion.prompt").PromptTooLongError  # noqa: N806
    nodes = comfy.nodes.NODE_CLASS_MAPPINGS
    adapter = nodes["FashionRAGAdapterLoader"].execute(ADAPTER_FILE).result[0]
    with pytest.raises(PromptTooLongError, match="use at most 3 garment"):
        nodes["FashionRAGGarmentInversion"].execute(models.clip, None, adapter, category="upper_body",
                                                    images=torch.rand(5, 32, 32, 3))
