"""FashionRAGSaveGarmentEmbedding: the garments' pseudo-words as models/embeddings/<name>.safetensors,
usable in any SD2 prompt as `embedding:<name>`."""

from __future__ import annotations

import json
from typing import Any

import folder_paths
import torch
from comfy_api.latest import io, ui

from ..fashion_rag.inversion.embedding_file import embedding_name, save_embedding
from .pseudo_words import garment_batches, garment_embeddings, garment_inputs


class FashionRAGSaveGarmentEmbedding(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FashionRAGSaveGarmentEmbedding",
            display_name="Fashion-RAG Save Garment Embedding",
            category="fashion_rag/inversion",
            description=(
                "Saves the garments' pseudo-words (16 per garment, in rank order) as a textual-inversion "
                "embedding in models/embeddings, usable in any SD2 prompt as embedding:<name>."
            ),
            inputs=[
                *garment_inputs(),
                io.String.Input(
                    "name", default="fashion_rag_garment",
                    tooltip="File name (without .safetensors) in models/embeddings; use it in a prompt as "
                            "embedding:<name>.",
                ),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="Replace an existing embedding file of the same name."),
            ],
            outputs=[io.String.Output(display_name="prompt_text",
                                      tooltip="'embedding:<name>', for a prompt.")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, name: str | None = None) -> bool | str:
        if name is None:  # linked from another node: checked when it runs
            return True
        try:
            embedding_name(name)
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, clip_vision: Any, adapter: Any, name: str, overwrite: bool = False,
                garments: Any | None = None, images: torch.Tensor | None = None) -> io.NodeOutput:
        name = embedding_name(name)
        ptes = garment_embeddings(clip_vision, adapter, garment_batches(garments, images))
        meta = {"fashion_rag": json.dumps({
            "garments": [g.id for g in garments.items] if garments is not None else [],
            "extra_images": 0 if images is None else int(images.shape[0]),
            "tokens_per_garment": int(ptes.shape[1]),
        })}
        folder = folder_paths.get_folder_paths("embeddings")[0]
        path, written = save_embedding(ptes, folder, name, overwrite=overwrite, metadata=meta)
        text = f"embedding:{name}"
        status = "saved" if written else "unchanged"
        return io.NodeOutput(text, ui=ui.PreviewText(
            f"{status}: {path} ({ptes.shape[0] * ptes.shape[1]} tokens) -> {text}"))


NODES: list[type[io.ComfyNode]] = [FashionRAGSaveGarmentEmbedding]
