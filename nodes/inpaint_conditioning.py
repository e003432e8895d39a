"""FashionRAGInpaintConditioning: the 23 channels the Fashion-RAG UNet sees after the noisy latent.

Like core InpaintModelConditioning, but each conditioning gets a "noise_concat" entry: mask
(binarised at 0.5, nearest-resized) | masked-image latent (x the latent scale) | pose heatmaps
(bilinear), with a zero pose in the negative branch (the reference's unconditional branch). Any
stock KSampler/SamplerCustom then samples the Fashion-RAG UNet correctly; 'Fashion-RAG Inpaint'
builds the same channels.
"""

from __future__ import annotations

import comfy.latent_formats
import node_helpers
import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..fashion_rag.inpaint.inputs import LATENT_DOWNSCALE, masked_pixels, prepare_inputs
from ..fashion_rag.inpaint.pose import resize_pose
from ..fashion_rag.inpaint.unet_layout import LATENT_CHANNELS, POSE_CHANNELS
from .types import PoseType

# SD2's latent format: the UNet sees VAE latents x 0.18215.
_LATENT_FORMAT = comfy.latent_formats.SD15()
POSE_TOOLTIP = "FASHION_RAG_POSE heatmaps; unconnected = no pose (all-zero channels)."


def condition_channels(vae, pixels: torch.Tensor, mask: torch.Tensor, pose: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The 23 channels for the positive and the negative branch (inputs from prepare_inputs)."""
    b, h, w, _ = pixels.shape
    lh, lw = h // LATENT_DOWNSCALE, w // LATENT_DOWNSCALE
    masked_latent = _LATENT_FORMAT.process_in(vae.encode(masked_pixels(pixels, mask))).float()
    if tuple(masked_latent.shape[-2:]) != (lh, lw) or masked_latent.shape[1] != LATENT_CHANNELS:
        raise ValueError(
            f"The VAE gave latents of shape {tuple(masked_latent.shape)}; the Fashion-RAG UNet "
            f"needs {LATENT_CHANNELS}x{lh}x{lw}: use the SD2 (SD1.x-family) VAE."
        )
    device = masked_latent.device
    mask_latent = F.interpolate(mask.to(device), size=(lh, lw), mode="nearest")
    if pose is None:
        pose_latent = torch.zeros(b, POSE_CHANNELS, lh, lw, device=device)
    else:
        pose_latent = resize_pose(pose.to(device), lh, lw)
    positive = torch.cat([mask_latent, masked_latent, pose_latent], dim=1)
    negative = torch.cat([mask_latent, masked_latent, torch.zeros_like(pose_latent)], dim=1)
    return positive, negative


def with_inpaint_channels(positive, negative, vae, pixels, mask, pose) -> tuple[list, list]:
    """Both conditionings with their "noise_concat" channels."""
    concat_pos, concat_neg = condition_channels(vae, pixels, mask, pose)
    return (node_helpers.conditioning_set_values(positive, {"noise_concat": concat_pos}),
            node_helpers.conditioning_set_values(negative, {"noise_concat": concat_neg}))


class FashionRAGInpaintConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FashionRAGInpaintConditioning",
            display_name="Fashion-RAG Inpaint Conditioning",
            category="fashion_rag/inpaint",
            description=(
                "Adds the Fashion-RAG UNet's extra inputs (mask, masked-image latent, pose) to the "
                "conditionings, so a stock KSampler can sample the Fashion-RAG UNet. The negative "
                "branch gets a zero pose, as in the reference."
            ),
            inputs=[
                io.Conditioning.Input("positive", tooltip="Prompt + garment pseudo-words."),
                io.Conditioning.Input("negative", tooltip="The empty prompt; pose is zeroed."),
                io.Vae.Input("vae", tooltip="The SD2 VAE."),
                io.Image.Input("pixels", tooltip="The person image; width and height divisible by 8."),
                io.Mask.Input("mask", tooltip="1 = repaint (the garment region); same size as the image."),
                PoseType.Input("pose", optional=True, tooltip=POSE_TOOLTIP),
                io.Boolean.Input(
                    "noise_mask", default=False, optional=True,
                    tooltip="Also put the mask on the latent so the sampler keeps the unmasked "
                            "latent. Off matches the reference.",
                ),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive"),
                io.Conditioning.Output(display_name="negative"),
                io.Latent.Output(display_name="latent", tooltip="The image's latent (for denoise < 1)."),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, vae, pixels, mask, pose=None,
                noise_mask: bool = False) -> io.NodeOutput:
        pixels, mask, pose = prepare_inputs(pixels, mask, pose)
        positive, negative = with_inpaint_channels(positive, negative, vae, pixels, mask, pose)
        latent = {"samples": vae.encode(pixels)}
        if noise_mask:
            latent["noise_mask"] = mask
        return io.NodeOutput(positive, negative, latent)


NODES: list[type[io.ComfyNode]] = [FashionRAGInpaintConditioning]
