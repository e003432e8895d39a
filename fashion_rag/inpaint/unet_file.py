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
    hint = {
        9: " A 9-channel UNet is a stock Stable Diffusion inpainting model: load it with "
           "ComfyUI's own loaders and use InpaintModelConditioning.",
        4: " A 4-channel UNet is a plain text-to-image model.",
    }.get(in_channels, "")
    raise UNetFileError(
        f"{source}: this UNet takes {in_channels} input channels, so it is not the Fashion-RAG "
        f"UNet, which takes {expected} (noisy latent 4 + mask 1 + masked-image latent 4 + pose "
        f"heatmaps 18).{hint} {WHERE_TO_GET}."
    )


def load_unet_state_dict(
    path: str | os.PathLike, in_channels: int | None = FASHION_RAG_IN_CHANNELS,
) -> tuple[dict[str, torch.Tensor], UNetLayout]:
    """Load a UNet file in any supported layout; return its LDM-layout state dict and layout.

    See the module docstring for the forms; `in_channels=None` skips the channel check.
    """
    source = str(path)
    sd = _unet_part(read_state_dict(path, what="a UNet"))
    if "conv_in.weight" in sd:
        if in_channels is not None:
            check_in_channels(sd["conv_in.weight"].shape[1], source, in_channels)
        layout = layout_from_diffusers(sd, source)
        return diffusers_to_ldm(sd, layout, source), layout
    if "input_blocks.0.0.weight" in sd:
        if in_channels is not None:
            check_in_channels(sd["input_blocks.0.0.weight"].shape[1], source, in_channels)
        layout = layout_from_ldm(sd, source)
        check_layout(sd, layout.ldm_shapes(), source)
        return sd, layout
    first = ", ".join(list(sd)[:5]) or "none"
    raise UNetFileError(
        f"{source}: not a UNet state dict (neither diffusers 'conv_in.weight' nor LDM "
        f"'input_blocks.0.0.weight'; first keys: {first}). {WHERE_TO_GET}."
    )


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
    out = {k: v.to(dtype).contiguous() for k, v in sd.items()}
    meta = {
        "fashion_rag": "unet", "layout": "ldm", "in_channels": str(layout.in_channels),
        "source": Path(src).name, "licence": UNET.licence,
    }
    atomic_write(dst, lambda tmp: save_file(out, tmp, metadata=meta))
    return dst
