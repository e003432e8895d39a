"""A CPU that ComfyUI takes for a device computing in bf16 or fp16, for the benchmarks' half runs.

On a CPU, ComfyUI stores half weights when told (--bf16-unet, --fp16-unet, ...) but computes the
UNet in fp32 (`unet_manual_cast`), and the pack's adapter follows the same rule: its capability
queries `should_use_bf16` / `should_use_fp16` answer no for a CPU. `emulate_half_device` makes the
one query answer yes for the CPU, so that ComfyUI decides every dtype as on such a GPU; nothing
else changes (the casting, the layers and the sampling are ComfyUI's own). Call it after ComfyUI
parsed its flags (memory_pack.start_comfy) and before any model loads.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

QUERIES = {"bf16": "should_use_bf16", "fp16": "should_use_fp16"}


_ORIGINAL: dict[str, Any] = {}  # ComfyUI's own queries, by name, once replaced


def undo_half_device() -> None:
    """ComfyUI's own capability queries back (a later run in the same process)."""
    import comfy.model_management as mm

    for name, ask in _ORIGINAL.items():
        setattr(mm, name, ask)


def emulate_half_device(kind: str) -> None:
    """ComfyUI's capability query for `kind` ("bf16" or "fp16") answers yes for the CPU."""
    import comfy.model_management as mm

    name = QUERIES[kind]
    ask = _ORIGINAL.setdefault(name, getattr(mm, name))

    @functools.wraps(ask)
    def capable(device: Any = None, *args: Any, **kwargs: Any) -> bool:
        if device is None or mm.is_device_cpu(device):
            return True
        return ask(device, *args, **kwargs)

    setattr(mm, name, capable)
    logging.info("[bench] ComfyUI takes the CPU for a device that computes in %s", kind)
