"""FashionRAGCheckpointCLIPVAELoader: the SD2-inpainting text encoder and VAE, without its UNet.

Fashion-RAG takes only the text encoder and the VAE from stable-diffusion-2-inpainting; its
own 27-channel UNet replaces the checkpoint's 9-channel one. The stock checkpoint loader would
also build and load that 9-channel UNet (866M parameters, 1.7 GB in fp16, 3.5 GB in fp32) for
nothing. Here the UNet's tensors are never read: ComfyUI's own loader gets their shapes only
(meta tensors, enough to recognise the model family) and builds the CLIP and VAE as usual.
"""

from __future__ import annotations

import comfy.sd
import folder_paths
import torch
from comfy_api.latest import io

from ..fashion_rag.model_files import CHECKPOINT
from .model_cache import ModelCache
from .model_folders import file_list, full_path, missing_message, require

# Keys of the diffusion model (and its EMA copy) in single-file SD checkpoints.
_UNET_PREFIXES = ("model.diffusion_model.", "model_ema.")
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_LOADED: ModelCache[tuple] = ModelCache(max_entries=1)


def _without_unet_weights(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The checkpoint's tensors, the UNet's as meta tensors of the right shape and dtype."""
    from safetensors import safe_open

    sd: dict[str, torch.Tensor] = {}
    with safe_open(path, framework="pt", device="cpu") as f:
        for key in f.keys():
            if key.startswith(_UNET_PREFIXES):
                part = f.get_slice(key)
                sd[key] = torch.empty(part.get_shape(), dtype=_DTYPES.get(part.get_dtype(), torch.float32),
                                      device="meta")
            else:
                sd[key] = f.get_tensor(key)
        metadata = f.metadata() or {}
    return sd, metadata


def load_clip_vae(path: str) -> tuple:
    """(CLIP, VAE) of a Stable Diffusion checkpoint file, its UNet never built."""

    def load() -> tuple:
        embeddings = folder_paths.get_folder_paths("embeddings")
        if path.endswith(".safetensors"):
            sd, metadata = _without_unet_weights(path)
            out = comfy.sd.load_state_dict_guess_config(
                sd, output_vae=True, output_clip=True, output_model=False,
                embedding_directory=embeddings, metadata=metadata)
        else:  # a pickle-format .ckpt: ComfyUI reads it whole (weights only), the UNet still unbuilt
            out = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True,
                                                        output_model=False, embedding_directory=embeddings)
        if out is None or out[1] is None or out[2] is None:
            raise ValueError(f"{path} holds no Stable Diffusion text encoder and VAE that ComfyUI "
                             f"recognises. Expected {CHECKPOINT.where_to_get}.")
        return out[1], out[2]

    return _LOADED.get(path, load)


class FashionRAGCheckpointCLIPVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = file_list(CHECKPOINT)
        default = next((f for f in files if f.endswith(CHECKPOINT.file)), files[0] if files else None)
        return io.Schema(
            node_id="FashionRAGCheckpointCLIPVAELoader",
            display_name="Fashion-RAG SD2 CLIP + VAE Loader",
            category="fashion_rag/loaders",
            description=(
                "Loads only the text encoder (CLIP) and the VAE of the SD2-inpainting checkpoint. "
                "Fashion-RAG brings its own UNet, so the checkpoint's 9-channel UNet (1.7-3.5 GB) is "
                "never read or built, as the stock Load Checkpoint node would."
            ),
            inputs=[
                io.Combo.Input(
                    "ckpt_name", options=files, default=default,
                    tooltip=f"The {CHECKPOINT.role}: {CHECKPOINT.where_to_get}, in "
                            f"models/{CHECKPOINT.folder}/. Its UNet is skipped (Fashion-RAG uses its own), "
                            "which saves its memory.",
                ),
            ],
            outputs=[
                io.Clip.Output(display_name="clip", tooltip="The SD2 text encoder (OpenCLIP-H text)."),
                io.Vae.Output(display_name="vae", tooltip="The SD2 VAE."),
            ],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name: str | None = None) -> bool | str:
        # Declared here, the file name gets the pack's message on every ComfyUI version.
        if ckpt_name is not None and full_path(CHECKPOINT, ckpt_name) is None:
            return missing_message(CHECKPOINT, ckpt_name)
        return True

    @classmethod
    def execute(cls, ckpt_name: str) -> io.NodeOutput:
        clip, vae = load_clip_vae(require(CHECKPOINT, ckpt_name))
        return io.NodeOutput(clip, vae)


NODES: list[type[io.ComfyNode]] = [FashionRAGCheckpointCLIPVAELoader]
