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
from .model_folders import check_file, file_list, require
from .types import AdapterType

_ADAPTERS: ModelCache[comfy.model_patcher.ModelPatcher] = ModelCache(max_entries=2)


def _adapter_dtype(device: torch.device) -> torch.dtype:
    """The dtype ComfyUI stores text encoders in (fp16 by default, --bf16-text-enc, --fp32-text-enc),
    where `device` computes in it, else fp32.

    The adapter is plain torch: it computes in the dtype it is stored in (ComfyUI's own models
    cast each layer instead), so a dtype the device cannot compute in fast (fp16 on a CPU, bf16
    on a GPU before Ampere) falls back to fp32. fp16 on a GPU is what the reference runs.
    """
    dtype = mm.text_encoder_dtype(device)
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        dtype = torch.float16  # fp8 text encoders: no fp8 matmuls in plain torch
    if dtype == torch.float16 and mm.should_use_fp16(device):
        return dtype
    if dtype == torch.bfloat16 and mm.should_use_bf16(device):
        return dtype
    return torch.float32


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
        return check_file(ADAPTER, adapter_name)

    @classmethod
    def execute(cls, adapter_name: str) -> io.NodeOutput:
        return io.NodeOutput(load_adapter_patcher(require(ADAPTER, adapter_name)))


NODES: list[type[io.ComfyNode]] = [FashionRAGAdapterLoader]
