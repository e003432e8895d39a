"""'Fashion-RAG SD2 CLIP + VAE Loader': the checkpoint's text encoder and VAE, its UNet never built."""

from __future__ import annotations

import gc

import pytest
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


def test_unet_and_ema_tensors_are_never_read(comfy_runtime, tmp_path):
    """Read back from a safetensors file, the UNet's and its EMA copy's tensors are meta tensors of
    the file's shape and dtype (F16 -> float16, BF16 -> bfloat16, F32 -> float32), every other
    tensor is read with its values, and the file's metadata comes along.
    Mutations caught: the "model_ema." prefix dropped (the EMA weights read into memory); F16
    mapped to float32 (ComfyUI would size the UNet as fp32)."""
    from safetensors.torch import save_file

    loader = pack_module(comfy_runtime, "nodes.checkpoint_loader")
    vae_w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    tensors = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.ones(4, 9, 3, 3, dtype=torch.float16),
        "model.diffusion_model.out.2.bias": torch.ones(4, dtype=torch.bfloat16),
        "model_ema.diffusion_modelinput_blocks00weight": torch.ones(4, 9, 3, 3, dtype=torch.float16),
        "model_ema.decay": torch.tensor(0.9999, dtype=torch.float32),
        "first_stage_model.decoder.conv_in.weight": vae_w,
        "cond_stage_model.model.positional_embedding": torch.full((5, 2), 0.5, dtype=torch.float16),
    }
    path = tmp_path / "ckpt.safetensors"
    save_file(tensors, str(path), metadata={"modelspec.architecture": "stable-diffusion-v2-inpainting"})

    sd, metadata = loader._without_unet_weights(str(path))
    assert sd.keys() == tensors.keys()
    assert metadata == {"modelspec.architecture": "stable-diffusion-v2-inpainting"}
    for key, t in tensors.items():
        assert sd[key].shape == t.shape and sd[key].dtype == t.dtype, key
        if key.startswith(("model.diffusion_model.", "model_ema.")):
            assert sd[key].device.type == "meta", key
        else:
            assert sd[key].device.type == "cpu" and torch.equal(sd[key], t), key


def test_a_file_without_clip_and_vae_names_itself_and_what_to_get(comfy_runtime, tmp_path):
    """A .safetensors that is no Stable Diffusion checkpoint: a ValueError naming the file and
    where the right one comes from.
    Mutation caught: the file's path left out of the message."""
    from safetensors.torch import save_file

    loader = pack_module(comfy_runtime, "nodes.checkpoint_loader")
    path = tmp_path / "not_a_checkpoint.safetensors"
    save_file({"some.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ValueError) as err:
        loader.load_clip_vae(str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path} holds no Stable Diffusion text encoder and VAE")
    assert "stabilityai/stable-diffusion-2-inpainting" in msg


def test_the_published_checkpoint_is_the_default_choice(comfy_runtime, tmp_path):
    """With other checkpoints listed before it, the dropdown's default is the published
    SD2-inpainting file (512-inpainting-ema.safetensors), wherever it sits in the list.
    Mutation caught: the default taken as the list's first file."""
    import folder_paths

    loader = pack_module(comfy_runtime, "nodes.checkpoint_loader")
    folder = tmp_path / "ckpts"
    (folder / "sd2").mkdir(parents=True)
    for name in ("000_first.safetensors", "sd2/512-inpainting-ema.safetensors"):
        (folder / name).write_bytes(b"")
    folder_paths.add_model_folder_path("checkpoints", str(folder))
    try:
        spec = loader.FashionRAGCheckpointCLIPVAELoader.INPUT_TYPES()["required"]["ckpt_name"][1]
        assert spec["options"][0] == "000_first.safetensors", spec["options"]
        assert spec["default"].endswith("512-inpainting-ema.safetensors")
    finally:  # leave the folder list and its cache as other tests expect them
        folder_paths.folder_names_and_paths["checkpoints"][0].remove(str(folder))
        folder_paths.filename_list_cache.pop("checkpoints", None)
