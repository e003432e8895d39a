"""FashionRAGAdapterLoader: the inversion adapter file -> FASHION_RAG_ADAPTER (a ModelPatcher)."""

from __future__ import annotations

import comfy.model_management as mm
import comfy.model_patcher
import torch
from comfy_api.latest import io

from ..fashion_rag.inversion.adapter import load_adapter
from ..fashion_rag.model_files import ADAPTER
from .compat import new_model_patcher
from .model_cache import ModelCache
from .model_folders import file_list, full_path, missing_message, require
from .types import AdapterType

_ADAPTERS: ModelCache[comfy.model_patcher.ModelPatcher] = ModelCache(max_entries=2)


def _adapter_dtype(device: torch.device) -> torch.dtype:
    # fp16 on a GPU that supports it, as the reference runs; fp32 on CPU, where fp16 matmuls
    # are slow. A user forcing fp32 text encoders (--fp32-text-enc) gets fp32 here too.
    if mm.is_device_cpu(device) or not mm.should_use_fp16(device):
        return torch.float32
    dtype = mm.text_encoder_dtype(device)
    return dtype if dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float16


def load_adapter_patcher(path: str) -> comfy.model_patcher.ModelPatcher:
    """Load (once per file version) and wrap for ComfyUI's memory manager."""

    def load() -> comfy.model_patcher.ModelPatcher:
        load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
        adapter = load_adapter(path, device=offload_device, dtype=_adapter_dtype(load_device))
        return new_model_patcher(adapter, load_device, offload_device)

    return _ADAPTERS.get(path, load)


class FashionRAGAdapterLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FashionRAGAdapterLoader",
            display_name="Fashion-RAG Inversion Adapter Loader",
            category="fashion_rag/loaders",
            description=(
                "Loads the Fashion-RAG inversion adapter, which turns CLIP ViT-H features of a garment "
                f"image into 16 pseudo-words for the SD2 text encoder. Expected: {ADAPTER.where_to_get}, "
                f"in models/{ADAPTER.folder}/."
            ),
            inputs=[
                io.Combo.Input(
                    "adapter_name", options=file_list(ADAPTER),
                    tooltip=f"Adapter weights in models/{ADAPTER.folder}/ ({ADAPTER.file}; "
                            ".pth/.pt/.bin/.safetensors).",
                ),
            ],
            outputs=[AdapterType.Output(display_name="adapter")],
        )

    @classmethod
    def validate_inputs(cls, adapter_name: str | None = None) -> bool | str:
        # Declared here, the file name is checked by this message on every ComfyUI version (0.8+
        # would otherwise answer "value not in list"); None: linked, checked when it runs.
        if adapter_name is not None and full_path(ADAPTER, adapter_name) is None:
            return missing_message(ADAPTER, adapter_name)
        return True

    @classmethod
    def execute(cls, adapter_name: str) -> io.NodeOutput:
        return io.NodeOutput(load_adapter_patcher(require(ADAPTER, adapter_name)))


NODES: list[type[io.ComfyNode]] = [FashionRAGAdapterLoader]
