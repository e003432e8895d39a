"""FashionRAGGarmentInversion: garments -> pseudo-words -> the reference prompt's CONDITIONING."""

from __future__ import annotations

from typing import Any

import torch
from comfy_api.latest import io

from ..fashion_rag.categories import CATEGORIES, resolve_category
from .compat import check_combos
from .pseudo_words import first_garment, garment_batches, garment_embeddings, garment_inputs
from .token_injection import check_fits, encode_garments


class FashionRAGGarmentInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FashionRAGGarmentInversion",
            display_name="Fashion-RAG Garment Inversion",
            category="fashion_rag/inversion",
            description=(
                "Turns each garment image into 16 pseudo-words (CLIP ViT-H features through the inversion "
                "adapter) and encodes the reference prompt 'a photo of a model wearing <category> made of "
                "<pseudo-words>' with the SD2 text encoder. Negative: the empty prompt, as the reference."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="The SD2 text encoder (stable-diffusion-2-inpainting's CLIP)."),
                *garment_inputs(),
                io.Combo.Input(
                    "category", options=["auto", *CATEGORIES], default="auto",
                    tooltip="Garment category, which picks the prompt's noun. auto: the first retrieved "
                            "garment's category.",
                ),
                io.String.Input(
                    "extra_text", optional=True, default="", multiline=False,
                    tooltip="Optional words appended after the pseudo-words (empty = the reference prompt). "
                            "Everything must fit one 77-token CLIP prompt.",
                ),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive"),
                io.Conditioning.Output(display_name="negative"),
            ],
        )

    @classmethod
    def validate_inputs(cls, category: str | None = None) -> bool | str:
        # The same check and message on every ComfyUI version (see compat.py); resolve_category
        # checks a linked value when the node runs.
        return check_combos(cls, category=category)

    @classmethod
    def execute(cls, clip: Any, clip_vision: Any, adapter: Any, category: str = "auto",
                garments: Any | None = None, images: torch.Tensor | None = None,
                extra_text: str = "") -> io.NodeOutput:
        batches = garment_batches(garments, images)
        cat = resolve_category(category, first_garment(garments))
        # Fail before running the vision tower when the garments cannot fit the prompt.
        k = sum(b.shape[0] for b in batches)
        check_fits(clip, cat, k, adapter.model.config.num_tokens, extra_text or "")
        ptes = garment_embeddings(clip_vision, adapter, batches)
        positive, negative = encode_garments(clip, ptes, cat, extra_text or "")
        return io.NodeOutput(positive, negative)


NODES: list[type[io.ComfyNode]] = [FashionRAGGarmentInversion]
