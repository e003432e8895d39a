"""Garment images -> pseudo-word embeddings (PTEs) on ComfyUI's CLIP_VISION and the adapter.

Shared by 'Fashion-RAG Garment Inversion' and 'Fashion-RAG Save Garment Embedding'.
"""

from __future__ import annotations

from typing import Any

import comfy.clip_model
import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ..fashion_rag.inversion.clip_preprocess import preprocess_garments
from ..fashion_rag.model_files import CLIP_VISION
from .types import AdapterType, GarmentsType

CLIP_VISION_HINT = (
    f"Load the {CLIP_VISION.role} ({CLIP_VISION.where_to_get}, in models/{CLIP_VISION.folder}/) with a "
    "Load CLIP Vision node."
)


def garment_batches(garments: Any | None, images: torch.Tensor | None) -> list[torch.Tensor]:
    """The garment pixels in rank order, as IMAGE batches ([k, H, W, 3] float in [0, 1]).

    Retrieved garments come first, then the extra images; they stay separate batches because
    an IMAGE batch must share one size, and their PTEs concatenate in this order.
    """
    batches = []
    if garments is not None:
        if len(garments) == 0:
            raise ValueError("the garments input holds no garment (did retrieval return nothing?)")
        batches.append(garments.images)
    if images is not None:
        batches.append(images)
    if not batches:
        raise ValueError(
            "Fashion-RAG needs garment pictures: connect 'garments' (from 'Fashion-RAG Text → Garment "
            "Retrieve') or 'images' (garment photos, e.g. from Load Image)."
        )
    return batches


def first_garment(garments: Any | None) -> tuple[str, str] | None:
    """(id, category) of the top retrieved garment, for categories.resolve_category."""
    if garments is None or len(garments) == 0:
        return None
    return garments.items[0].id, garments.items[0].category


def vision_hidden_states(clip_vision: Any, pixels: torch.Tensor) -> torch.Tensor:
    """ComfyUI's CLIP_VISION on our reference-preprocessed pixels -> last_hidden_state.

    `encode_image` would apply ComfyUI's clip_preprocess (different resize, ~2 % PTE shift), so
    the model is called directly; for CLIP models its first output is the encoder's last layer
    *before* post_layernorm (comfy/clip_model.py applies post-LN only to the pooled CLS token).
    """
    model = getattr(clip_vision, "model", None)
    vision = getattr(model, "vision_model", None)
    if (
        not isinstance(vision, comfy.clip_model.CLIPVision)
        or vision.output_layernorm
        or vision.embeddings.class_embedding is None
    ):
        raise ValueError(f"this CLIP_VISION model is not a CLIP ViT (SigLIP/DINOv2?). {CLIP_VISION_HINT}")
    mm.load_model_gpu(clip_vision.patcher)
    with torch.no_grad():
        out = model(pixel_values=pixels.to(clip_vision.load_device))
    return out[0]


def garment_embeddings(clip_vision: Any, adapter: Any, batches: list[torch.Tensor]) -> torch.Tensor:
    """Garment images -> PTEs [k, num_tokens, text_width], float32 on the intermediate device."""
    net = adapter.model
    cfg = net.config
    size = getattr(clip_vision, "image_size", 224)
    pixels = torch.cat([preprocess_garments(b, size=size) for b in batches])
    hidden = vision_hidden_states(clip_vision, pixels)
    if hidden.shape[-1] != cfg.vision_width:
        raise ValueError(
            f"the adapter expects {cfg.vision_width}-wide vision features, this CLIP_VISION gives "
            f"{hidden.shape[-1]}. {CLIP_VISION_HINT}"
        )
    # Fully loaded: the adapter is plain torch, without ComfyUI's per-layer weight casting that
    # partial (lowvram) loading relies on.
    mm.load_models_gpu([adapter], force_full_load=True)
    param = next(net.parameters())
    with torch.no_grad():
        ptes = net(hidden.to(device=param.device, dtype=param.dtype))
    return ptes.float().to(mm.intermediate_device())


def garment_inputs() -> list[io.Input]:
    """The inputs of the nodes that turn garments into pseudo-words: vision model, adapter, garments."""
    return [
        io.ClipVision.Input("clip_vision", tooltip=f"The {CLIP_VISION.role}: {CLIP_VISION.where_to_get}."),
        AdapterType.Input("adapter",
                          tooltip="The inversion adapter, from 'Fashion-RAG Inversion Adapter Loader'."),
        GarmentsType.Input("garments", optional=True,
                           tooltip="Retrieved garments (from 'Fashion-RAG Text → Garment Retrieve'), used in "
                                   "rank order."),
        io.Image.Input("images", optional=True,
                       tooltip="Garment photos (in-shop, plain background), used instead of or after "
                               "'garments'. Ideally 384x512 like the reference's garments."),
    ]
