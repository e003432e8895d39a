"""The pack's three models under ComfyUI's memory manager, across prompts (CPU, in-process).

One workflow uses the retrieval encoder (retrieve in `image` mode), the inversion adapter and the
Fashion-RAG UNet; it runs several times with ComfyUI's output cache cleared, each run followed by
a different kind of offload. Every run must load each model exactly once into ComfyUI's list of
loaded models, reuse the same weights in memory (no second copy, no re-read from disk) and give
bit-identical results.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from test_inpaint_parity import pack_module, tiny_unet, tiny_vaes
from test_inversion_parity import ADAPTER_FILE, Models

from probe_nodes import FRTestCapture, probe_nodes
from tools.demo.catalog import TINY_WEIGHTS_NAME

UNET_FILE = "fr_test_memory_unet.pth"
H, W = 64, 48

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env(comfy, tmp_path_factory):
    models = Models(comfy, tmp_path_factory.mktemp("memory"))
    unet_dir = comfy.base / "models" / "fashion_rag" / "unet"
    unet_dir.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_unet(seed=11).state_dict(), unet_dir / UNET_FILE)
    Image.new("RGB", (W, H), (180, 90, 60)).save(comfy.base / "input" / "fr_memory_person.png")
    try:
        with probe_nodes(comfy, tiny=(models.clip, models.clip_vision, tiny_vaes()[1])):
            yield comfy
    finally:
        # Cached outputs would hide the next module's output nodes from history on 0.3.75.
        comfy.executor.reset()


def workflow(tag: str) -> dict:
    return {
        "idx": {"class_type": "FashionRAGGarmentIndexLoader",
                "inputs": {"index": "demo", "encoder_weights": TINY_WEIGHTS_NAME}},
        "ret": {"class_type": "FashionRAGTextGarmentRetrieve",
                "inputs": {"index": ["idx", 0], "text": "a blue dress", "k": 2, "category": "dresses",
                           "mode": "image", "pin_ids": "", "exclude_ids": ""}},
        "obj": {"class_type": "FRTestObjects", "inputs": {"key": "tiny"}},
        "adapter": {"class_type": "FashionRAGAdapterLoader", "inputs": {"adapter_name": ADAPTER_FILE}},
        "inv": {"class_type": "FashionRAGGarmentInversion",
                "inputs": {"clip": ["obj", 0], "clip_vision": ["obj", 1], "adapter": ["adapter", 0],
                           "garments": ["ret", 1], "category": "auto"}},
        "unet": {"class_type": "FashionRAGUNetLoader",
                 "inputs": {"unet_name": UNET_FILE, "weight_dtype": "fp32"}},
        "person": {"class_type": "LoadImage", "inputs": {"image": "fr_memory_person.png"}},
        "mask": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": W, "height": H}},
        "inp": {"class_type": "FashionRAGInpaint",
                "inputs": {"model": ["unet", 0], "positive": ["inv", 0], "negative": ["inv", 1],
                           "vae": ["obj", 2], "image": ["person", 0], "mask": ["mask", 0], "seed": 5,
                           "steps": 2, "cfg": 7.5, "sampler_name": "fashion_rag_ddim", "scheduler": "normal",
                           "denoise": 1.0, "paste_back": False}},
        "cap": {"class_type": "FRTestCapture",
                "inputs": {"latent": ["inp", 0], "positive": ["inv", 0], "tag": tag}},
    }


def the_packs_models(harness) -> dict[str, torch.nn.Module]:
    """The torch modules behind the pack's patchers, from the loaders' own caches."""
    unet = pack_module(harness, "nodes.unet_loader")._UNETS.items()
    adapter = pack_module(harness, "nodes.adapter_loader")._ADAPTERS.items()
    encoders = pack_module(harness, "nodes.index_loader")._ENCODERS.items()
    assert len(unet) == 1, "the UNet loader keeps one model"
    ((_, unet_patcher),) = unet
    (adapter_patcher,) = [p for path, p in adapter if path.endswith(ADAPTER_FILE)]
    # One encoder per weights file, however many indexes were loaded with it.
    (encoder,) = [e for path, e in encoders if path.endswith(TINY_WEIGHTS_NAME)]
    return {"unet": unet_patcher.model, "adapter": adapter_patcher.model, "encoder": encoder.module}


def loaded_counts(modules: dict[str, torch.nn.Module]) -> dict[str, int]:
    import comfy.model_management as mm

    loaded = [lm.model.model for lm in mm.current_loaded_models if lm.model is not None]
    return {name: sum(m is module for m in loaded) for name, module in modules.items()}


def weight_pointers(modules: dict[str, torch.nn.Module]) -> dict[str, list[int]]:
    return {name: [p.data_ptr() for p in m.parameters()] for name, m in modules.items()}


def offload(how: str | None) -> None:
    import comfy.model_management as mm

    if how == "unload_all_models":
        mm.unload_all_models()
    elif how == "free_memory":  # what a big model asking for room does
        mm.free_memory(1e30, mm.get_torch_device())


def test_models_load_offload_and_reload_across_prompts(env):
    harness = env
    runs = {}
    modules = None
    pointers = None
    for i, after in enumerate(["unload_all_models", "free_memory", None, "unload_all_models"]):
        harness.executor.reset()  # a cold output cache: every node runs again
        out = harness.run(workflow(f"run{i}"))
        got = FRTestCapture.RESULTS[f"run{i}"]
        latent, positive = got["latent"]["samples"].clone(), got["positive"][0][0].clone()
        runs[i] = (latent, positive, out["ret"]["fashion_rag_garments"])

        now = the_packs_models(harness)
        if modules is None:
            modules, pointers = now, weight_pointers(now)
        # The same module objects and weights: nothing rebuilt, re-read or copied.
        assert all(now[k] is modules[k] for k in modules)
        assert weight_pointers(now) == pointers
        assert loaded_counts(modules) == {"unet": 1, "adapter": 1, "encoder": 1}, f"run {i}"
        assert modules["encoder"].visual is None, "text retrieval loaded the encoder's image tower"

        offload(after)
        if after is not None:
            assert loaded_counts(modules) == {"unet": 0, "adapter": 0, "encoder": 0}, after

    first_latent, first_positive, first_listing = runs[0]
    assert first_latent.shape == (1, 4, H // 8, W // 8) and torch.isfinite(first_latent).all()
    for i, (latent, positive, listing) in runs.items():
        assert torch.equal(latent, first_latent), f"run {i} latent differs"
        assert torch.equal(positive, first_positive), f"run {i} conditioning differs"
        assert listing == first_listing, f"run {i} retrieval differs"

