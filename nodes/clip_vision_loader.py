"""FashionRAGCLIPVisionLoader: the CLIP ViT-H/14 vision tower, never held twice while loading.

ComfyUI's own CLIP_VISION model, built as the stock "Load CLIP Vision" node builds it, filled
block by block from the memory-mapped file with each block's file pages given back once copied
(fashion_rag.weights.load_in_parts). The stock node keeps the whole file mapped until the model
is filled: for ViT-H that is 1.2 GB (fp16 file) on top of the 2.4 GB fp32 model, and in the
example graph that moment was the peak of the whole run.
"""

from __future__ import annotations

from pathlib import Path

import comfy.clip_vision
from comfy_api.latest import io

from ..fashion_rag.logs import log
from ..fashion_rag.model_files import CLIP_VISION
from ..fashion_rag.weights import WeightFileError, load_in_parts, read_state_dict
from .model_cache import ModelCache
from .model_folders import check_file, file_list, require

_LOADED: ModelCache[comfy.clip_vision.ClipVisionModel] = ModelCache(max_entries=1)
# ViT-H/14 has 32 layers; ComfyUI picks its ViT-H config by the 31st layer's key (ViT-g has 48).
_VIT_H_KEY = "vision_model.encoder.layers.30.layer_norm1.weight"
_VIT_G_KEY = "vision_model.encoder.layers.47.layer_norm1.weight"
_OPEN_CLIP_KEY = "visual.transformer.resblocks.0.attn.in_proj_weight"


def load_clip_vision(path: str) -> comfy.clip_vision.ClipVisionModel:
    """A CLIP ViT-H/14 CLIP_VISION from `path` (once per file version)."""

    def load() -> comfy.clip_vision.ClipVisionModel:
        sd = read_state_dict(path, CLIP_VISION.role)
        if _OPEN_CLIP_KEY in sd:  # open_clip's layout: ComfyUI converts the keys (new tensors anyway)
            del sd
            clip = comfy.clip_vision.load(path)
        else:
            if _VIT_H_KEY not in sd or _VIT_G_KEY in sd:
                raise WeightFileError(
                    f"{path} is not a {CLIP_VISION.role} ({CLIP_VISION.layout}); Fashion-RAG's adapter "
                    f"reads ViT-H/14 features. Expected {CLIP_VISION.where_to_get}.")
            config = Path(comfy.clip_vision.__file__).parent / "clip_vision_config_h.json"
            clip = comfy.clip_vision.ClipVisionModel(str(config))
            if getattr(clip.patcher, "is_dynamic", lambda: False)():
                # ComfyUI's dynamic VRAM assigns the mapped tensors as the weights: nothing copied.
                missing, _ = clip.load_sd(sd)
            else:
                missing, _ = load_in_parts(clip.model, sd, source=path)  # text-tower keys are ignored
            if missing:
                raise WeightFileError(f"{path}: the {CLIP_VISION.role} lacks {len(missing)} weights "
                                      f"(e.g. {missing[0]}). Expected {CLIP_VISION.where_to_get}.")
        log.info("loaded CLIP vision %s", path)
        return clip

    return _LOADED.get(path, load)


class FashionRAGCLIPVisionLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = file_list(CLIP_VISION)
        default = next((f for f in files if f.endswith(("clip_vision_h.safetensors", CLIP_VISION.file))),
                       files[0] if files else None)
        return io.Schema(
            node_id="FashionRAGCLIPVisionLoader",
            display_name="Fashion-RAG CLIP Vision Loader",
            category="fashion_rag/loaders",
            description=(
                "Loads the CLIP ViT-H/14 vision tower the inversion adapter reads, as ComfyUI's own "
                "CLIP_VISION model. Unlike the stock Load CLIP Vision node it never holds the file and "
                "the model whole at once (1.2 GB less at its peak); the result is the same model."
            ),
            inputs=[
                io.Combo.Input(
                    "clip_name", options=files, default=default,
                    tooltip=f"The {CLIP_VISION.role}: {CLIP_VISION.where_to_get} ({CLIP_VISION.also}), "
                            f"in models/{CLIP_VISION.folder}/.",
                ),
            ],
            outputs=[io.ClipVision.Output(display_name="clip_vision")],
        )

    @classmethod
    def validate_inputs(cls, clip_name: str | None = None) -> bool | str:
        return check_file(CLIP_VISION, clip_name)

    @classmethod
    def execute(cls, clip_name: str) -> io.NodeOutput:
        return io.NodeOutput(load_clip_vision(require(CLIP_VISION, clip_name)))


NODES: list[type[io.ComfyNode]] = [FashionRAGCLIPVisionLoader]
