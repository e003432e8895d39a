"""FashionRAGAdapterLoader: the inversion adapter file -> FASHION_RAG_ADAPTER (a ModelPatcher)."""

from __future__ import annotations

import os
import threading

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths
import torch
from comfy_api.latest import io

from ..fashion_rag.inversion.adapter import InversionAdapter, load_adapter
from ..fashion_rag.model_files import ADAPTER, missing_file_message
from .compat import new_model_patcher
from .types import AdapterType

FOLDER_KEY = ADAPTER.key

# (path, mtime_ns, size) -> patcher. V3 nodes hold no state; a module-level cache lets several
# workflows (and ComfyUI's cache misses) share one loaded copy instead of stacking copies in RAM.
_CACHE: dict[tuple[str, int, int], comfy.model_patcher.ModelPatcher] = {}
_LOCK = threading.Lock()


def missing_adapter_message(name: str | None = None) -> str:
    return missing_file_message(ADAPTER, name, folder_paths.get_folder_paths(FOLDER_KEY))


def _adapter_dtype(device: torch.device) -> torch.dtype:
    # fp16 on a GPU that supports it, as the reference runs; fp32 on CPU, where fp16 matmuls
    # are slow. A user forcing fp32 text encoders (--fp32-text-enc) gets fp32 here too.
    if mm.is_device_cpu(device) or not mm.should_use_fp16(device):
        return torch.float32
    dtype = mm.text_encoder_dtype(device)
    return dtype if dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float16


def load_adapter_patcher(path: str) -> comfy.model_patcher.ModelPatcher:
    """Load (once per file version) and wrap for ComfyUI's memory manager."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_mtime_ns, stat.st_size)
    with _LOCK:
        patcher = _CACHE.get(key)
        if patcher is None:
            load_device = mm.get_torch_device()
            offload_device = mm.unet_offload_device()
            dtype = _adapter_dtype(load_device)
            adapter: InversionAdapter = load_adapter(path, device=offload_device, dtype=dtype)
            patcher = new_model_patcher(adapter, load_device, offload_device)
            # A changed file replaces its older versions.
            for old in [k for k in _CACHE if k[0] == key[0]]:
                del _CACHE[old]
            _CACHE[key] = patcher
        return patcher


class AdapterLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FashionRAGAdapterLoader",
            display_name="Fashion-RAG Inversion Adapter Loader",
            category="fashion_rag",
            description=(
                "Loads the Fashion-RAG inversion adapter, which turns CLIP ViT-H features of a garment "
                f"image into 16 pseudo-words for the SD2 text encoder. Expected file: {ADAPTER.file} "
                f"in models/fashion_rag/adapter, from {ADAPTER.source}."
            ),
            inputs=[
                io.Combo.Input(
                    "adapter_name",
                    options=folder_paths.get_filename_list(FOLDER_KEY),
                    tooltip=f"Adapter weights in models/fashion_rag/adapter ({ADAPTER.file}; "
                    ".pth/.pt/.bin/.safetensors).",
                ),
            ],
            outputs=[AdapterType.Output(display_name="adapter")],
        )

    @classmethod
    def validate_inputs(cls, adapter_name: str | None = None) -> bool | str:
        # Declared here, the file name is checked by this message on every ComfyUI version (0.8+
        # would otherwise answer "value not in list"); None: linked, checked when it runs.
        if adapter_name is not None and folder_paths.get_full_path(FOLDER_KEY, adapter_name) is None:
            return missing_adapter_message(adapter_name)
        return True

    @classmethod
    def execute(cls, adapter_name: str) -> io.NodeOutput:
        path = folder_paths.get_full_path(FOLDER_KEY, adapter_name) if adapter_name else None
        if path is None:
            raise FileNotFoundError(missing_adapter_message(adapter_name))
        return io.NodeOutput(load_adapter_patcher(path))


NODES = [AdapterLoader]
