"""FashionRAGInpaintConditioning: the 23 channels the Fashion-RAG UNet sees after the noisy latent.

Like core InpaintModelConditioning, but each conditioning gets a "noise_concat" entry: mask
(binarised at 0.5, nearest-resized) | masked-image latent (x the latent scale) | pose heatmaps
(bilinear), with a zero pose in the negative branch (the reference's unconditional branch). Any
stock KSampler/SamplerCustom then samples the Fashion-RAG UNet correctly; 'Fashion-RAG Inpaint'
builds the same channels.

A positive CONDITIONING batch of k prompts (one per garment, 'Fashion-RAG Garment Inversion' with
per_garment) and one person image give k candidates: the person is repeated k times, and the
latent's batch_index marks every item as item 0, so KSampler draws the same noise for each.
"""

from __future__ import annotations

import comfy.latent_formats
import node_helpers
import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..fashion_rag.inpaint.inputs import (
    LATENT_DOWNSCALE,
    masked_pixels,
    one_person_per_prompt,
    prepare_inputs,
)
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
    # All 23 channels in the masked latent's float32 on its device: ComfyUI casts the whole
    # concat to the UNet's compute dtype (model_base._apply_model), so no channel is rounded twice.
    like = {"device": masked_latent.device, "dtype": masked_latent.dtype}
    mask_latent = F.interpolate(mask.to(**like), size=(lh, lw), mode="nearest")
    if pose is None:
        pose_latent = torch.zeros(b, POSE_CHANNELS, lh, lw, **like)
    else:
        pose_latent = resize_pose(pose.to(**like), lh, lw)
    positive = torch.cat([mask_latent, masked_latent, pose_latent], dim=1)
    negative = torch.cat([mask_latent, masked_latent, torch.zeros_like(pose_latent)], dim=1)
    return positive, negative


def prompt_count(conditioning: list) -> int:
    """The batch size of a CONDITIONING's prompts (k for one prompt per garment, else 1)."""
    return max((int(entry[0].shape[0]) for entry in conditioning), default=1)


def inpaint_inputs(image: torch.Tensor, mask: torch.Tensor, pose: torch.Tensor | None, positive: list
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
    """prepare_inputs, then one copy of the person per prompt (True: the same noise for each)."""
    pixels, mask, pose = prepare_inputs(image, mask, pose)
    return one_person_per_prompt(pixels, mask, pose, prompt_count(positive))


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
                io.Image.Input("pixels", tooltip="The person image; width and height divisible by 8. "
                                                 "One image with k prompts (one per garment): k candidates."),
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
        pixels, mask, pose, same_noise = inpaint_inputs(pixels, mask, pose, positive)
        positive, negative = with_inpaint_channels(positive, negative, vae, pixels, mask, pose)
        latent = {"samples": vae.encode(pixels)}
        if same_noise:  # KSampler draws noise per batch_index: all candidates get item 0's
            latent["batch_index"] = [0] * pixels.shape[0]
        if noise_mask:
            latent["noise_mask"] = mask
        return io.NodeOutput(positive, negative, latent)


NODES: list[type[io.ComfyNode]] = [FashionRAGInpaintConditioning]
