"""Fashion-RAG UNet weight files: read any supported form strictly, convert one once.

Accepted: the reference's diffusers-key `unet_120000.pth` (optionally `module.`-prefixed or
wrapped in {"state_dict": ...}), diffusers .safetensors/.bin, and LDM-layout files (optionally
`model.diffusion_model.`-prefixed, as in full checkpoints). Every key and shape is checked
against the layout the weights imply, and the input channels against the Fashion-RAG UNet's.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..files import atomic_write
from ..model_files import UNET
from ..weights import read_state_dict
from .inputs import channel_hint
from .unet_layout import (
    FASHION_RAG_IN_CHANNELS,
    UNetFileError,
    UNetLayout,
    check_layout,
    diffusers_to_ldm,
    layout_from_diffusers,
    layout_from_ldm,
)

_CHECKPOINT_PREFIX = "model.diffusion_model."
WHERE_TO_GET = f"Get {UNET.where_to_get}"


def _unet_part(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(k.startswith(_CHECKPOINT_PREFIX) for k in sd):  # a full checkpoint: keep the UNet only
        sd = {k[len(_CHECKPOINT_PREFIX):]: v for k, v in sd.items() if k.startswith(_CHECKPOINT_PREFIX)}
    return sd


def check_in_channels(in_channels: int, source: str, expected: int = FASHION_RAG_IN_CHANNELS) -> None:
    if in_channels == expected:
        return
    hint = channel_hint(in_channels)
    raise UNetFileError(
        f"{source}: this UNet takes {in_channels} input channels, so it is not the Fashion-RAG "
        f"UNet, which takes {expected} (noisy latent 4 + mask 1 + masked-image latent 4 + pose "
        f"heatmaps 18).{' ' + hint if hint else ''} {WHERE_TO_GET}."
    )


def read_unet_file(
    path: str | os.PathLike, in_channels: int | None = FASHION_RAG_IN_CHANNELS,
) -> tuple[dict[str, torch.Tensor], UNetLayout, str]:
    """A UNet file's state dict as stored, its layout, and its naming ("diffusers" or "ldm").

    Every key and shape is checked in the file's own naming (see the module docstring for the
    forms); `in_channels=None` skips the channel check.
    """
    source = str(path)
    sd = _unet_part(read_state_dict(path, what="a UNet"))
    for naming, first, derive, shapes in (
        ("diffusers", "conv_in.weight", layout_from_diffusers, UNetLayout.diffusers_shapes),
        ("ldm", "input_blocks.0.0.weight", layout_from_ldm, UNetLayout.ldm_shapes),
    ):
        if first in sd:
            if in_channels is not None:
                check_in_channels(sd[first].shape[1], source, in_channels)
            layout = derive(sd, source)
            check_layout(sd, shapes(layout), source)
            return sd, layout, naming
    first_keys = ", ".join(list(sd)[:5]) or "none"
    raise UNetFileError(
        f"{source}: not a UNet state dict (neither diffusers 'conv_in.weight' nor LDM "
        f"'input_blocks.0.0.weight'; first keys: {first_keys}). {WHERE_TO_GET}."
    )


def load_unet_state_dict(
    path: str | os.PathLike, in_channels: int | None = FASHION_RAG_IN_CHANNELS,
) -> tuple[dict[str, torch.Tensor], UNetLayout]:
    """A UNet file in any supported form as an LDM-layout state dict, and its layout."""
    sd, layout, naming = read_unet_file(path, in_channels)
    return (diffusers_to_ldm(sd, layout, str(path)) if naming == "diffusers" else sd), layout


def convert_unet_file(
    src: str | os.PathLike, dst: str | os.PathLike, dtype: torch.dtype = torch.float16,
    overwrite: bool = False,
) -> Path:
    """Write `src` once as an LDM-layout .safetensors (no prefix), atomically; return dst.

    Later loads then skip pickle parsing and renaming, and ComfyUI can memory-map the file.
    """
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise UNetFileError(f"{dst}: the output must be a .safetensors file")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; pass overwrite (--force) to replace it")
    from safetensors.torch import save_file

    sd, layout = load_unet_state_dict(src)
    # Tensor by tensor, each source tensor dropped once cast: the fp32 file and its fp16 copy
    # are never both whole in memory.
    out = {k: sd.pop(k).to(dtype).contiguous() for k in list(sd)}
    meta = {
        "fashion_rag": "unet", "layout": "ldm", "in_channels": str(layout.in_channels),
        "source": Path(src).name, "licence": UNET.licence,
    }
    atomic_write(dst, lambda tmp: save_file(out, tmp, metadata=meta))
    return dst
