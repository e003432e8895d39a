"""The person image, repaint mask and pose of one inpainting run, checked and in the reference's form."""

from __future__ import annotations

import torch

from .unet_layout import FASHION_RAG_IN_CHANNELS, POSE_CHANNELS

LATENT_DOWNSCALE = 8  # the SD VAE's spatial factor

_CHANNEL_HINTS = {
    9: "A 9-channel UNet is a stock Stable Diffusion inpainting model: load it with ComfyUI's own "
       "loaders and use InpaintModelConditioning and KSampler with it.",
    4: "A 4-channel UNet is a plain text-to-image model.",
}


def channel_hint(channels: int | None) -> str:
    """What a UNet of `channels` input channels is, for messages that refuse it ('' if unknown)."""
    return _CHANNEL_HINTS.get(channels, "") if channels != FASHION_RAG_IN_CHANNELS else ""


def prepare_inputs(pixels: torch.Tensor, mask: torch.Tensor, pose: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Pixels [B,H,W,3], the binary repaint mask [B,1,H,W] (>= 0.5, as the reference) and the
    pose [B,18,H',W'] (or None), one per image, or ValueError saying what to change."""
    if pixels.ndim != 4:
        raise ValueError(f"image must be an IMAGE [B, H, W, C], got shape {tuple(pixels.shape)}")
    pixels = pixels[..., :3]
    b, h, w, _ = pixels.shape
    if h % LATENT_DOWNSCALE or w % LATENT_DOWNSCALE:
        f = LATENT_DOWNSCALE
        raise ValueError(
            f"The image is {w}x{h}; the UNet needs width and height divisible by {f}. Resize or "
            f"crop it (e.g. to {w // f * f}x{h // f * f}) with an image scale/crop node; resize "
            "the mask and pose the same way."
        )
    if mask.ndim == 2:
        mask = mask[None]
    mask = mask.reshape(-1, 1, *mask.shape[-2:])
    if tuple(mask.shape[-2:]) != (h, w):
        raise ValueError(
            f"The mask is {mask.shape[-1]}x{mask.shape[-2]} but the image is {w}x{h}: resize the "
            "mask to the image size (e.g. with a mask scale node) or build it from this image."
        )
    if mask.shape[0] not in (1, b):
        raise ValueError(f"{mask.shape[0]} masks for {b} images: give one mask or one per image")
    mask = (mask.to(pixels.device).float() >= 0.5).float().expand(b, -1, -1, -1)
    empty = [i for i in range(b) if not mask[i].any()]
    if empty:
        raise ValueError(
            f"The mask is empty (no pixel >= 0.5) for image(s) {empty}: nothing would be "
            "repainted. Paint the garment region white (1) in the mask."
        )
    if pose is not None:
        if pose.ndim != 4 or pose.shape[1] != POSE_CHANNELS:
            raise ValueError(f"pose must be FASHION_RAG_POSE [B, 18, H, W], got {tuple(pose.shape)}")
        if pose.shape[0] not in (1, b):
            raise ValueError(f"{pose.shape[0]} poses for {b} images: give one pose or one per image")
        pose = pose.float().expand(b, -1, -1, -1)
    return pixels, mask, pose


def masked_pixels(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """image * (mask < 0.5) in [-1, 1], in [0, 1] terms: the repaint region becomes 0.5 grey."""
    keep = (mask < 0.5).movedim(1, -1).to(pixels.dtype)  # [B,H,W,1]
    return (pixels - 0.5) * keep + 0.5


def paste_outside(result: torch.Tensor, pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The original pixels outside the mask, the result inside (an option; the reference does not)."""
    m = mask.movedim(1, -1).to(result.device)
    return result * m + pixels.to(result.device) * (1.0 - m)
