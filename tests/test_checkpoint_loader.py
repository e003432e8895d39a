"""'Fashion-RAG SD2 CLIP + VAE Loader': the checkpoint's text encoder and VAE, its UNet never built."""

from __future__ import annotations

import gc

import torch
from test_inpaint_parity import pack_module


def _base_models() -> int:
    import comfy.model_base

    return sum(issubclass(type(o), comfy.model_base.BaseModel) for o in gc.get_objects())


def test_same_clip_and_vae_as_the_stock_loader_without_the_unet(comfy, demo_models):
    """The CLIP and VAE equal the stock Load Checkpoint's (same conditioning, same latents), and
    no diffusion model is built. Mutations caught: a key prefix filter that drops text-encoder
    or VAE keys (different outputs or a load error), loading the checkpoint with its UNet (one
    more BaseModel alive)."""
    import nodes as comfy_nodes

    from tools.demo.weights import CHECKPOINT

    loader = pack_module(comfy, "nodes.checkpoint_loader")
    loader._LOADED.clear()
    gc.collect()
    before = _base_models()
    clip, vae = loader.FashionRAGCheckpointCLIPVAELoader.execute(CHECKPOINT).result
    gc.collect()
    assert _base_models() == before  # no UNet built

    model, stock_clip, stock_vae = comfy_nodes.CheckpointLoaderSimple().load_checkpoint(CHECKPOINT)
    gc.collect()
    assert _base_models() == before + 1  # the stock loader builds the checkpoint's UNet
    del model

    text = "a photo of a model wearing a dress made of"
    ours = clip.encode_from_tokens(clip.tokenize(text))
    theirs = stock_clip.encode_from_tokens(stock_clip.tokenize(text))
    assert torch.equal(ours, theirs)
    image = torch.rand(1, 64, 48, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(vae.encode(image), stock_vae.encode(image))
    assert loader.FashionRAGCheckpointCLIPVAELoader.execute(CHECKPOINT).result[0] is clip  # cached


def test_missing_checkpoint_names_the_file_and_where_it_comes_from(comfy_runtime):
    loader = pack_module(comfy_runtime, "nodes.checkpoint_loader")
    msg = loader.FashionRAGCheckpointCLIPVAELoader.validate_inputs("512-inpainting-ema.safetensors")
    for part in ("'512-inpainting-ema.safetensors' was not found", "models/checkpoints/",
                 "stabilityai/stable-diffusion-2-inpainting"):
        assert part in msg
