"""FashionRAGInpaint: the whole reference inpainting in one node.

The person's garment region is repainted by the Fashion-RAG UNet through ComfyUI's
comfy.sample.sample_custom, so LoRAs and MODEL patches apply. The default sampler is the
reference-exact DDIM (reference_sampler.py); every stock sampler/scheduler is available too.

Candidates: a positive CONDITIONING batch of k prompts (one per garment) with one person image
samples k results in one batch, all from the noise that `seed` gives a single image, so they
differ by their garment only, and candidate i equals a run with garment i alone and that seed.
"""

from __future__ import annotations

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io

from ..fashion_rag.inpaint.inputs import LATENT_DOWNSCALE, channel_hint, paste_outside
from ..fashion_rag.inpaint.unet_layout import FASHION_RAG_IN_CHANNELS, LATENT_CHANNELS
from .compat import check_combos, require_combos
from .inpaint_conditioning import POSE_TOOLTIP, inpaint_inputs, with_inpaint_channels
from .reference_sampler import FULL_DENOISE, REFERENCE_SAMPLER, sampler_and_sigmas
from .types import PoseType


def unet_in_channels(model) -> int | None:
    """Input channels of a MODEL's UNet (None when it is not an SD-style UNet)."""
    try:
        return int(model.model.diffusion_model.input_blocks[0][0].weight.shape[1])
    except (AttributeError, IndexError, TypeError):
        return None


def check_model(model) -> None:
    channels = unet_in_channels(model)
    if channels == FASHION_RAG_IN_CHANNELS:
        return
    what = f"takes {channels} input channels" if channels else "is not an SD-style UNet"
    hint = channel_hint(channels)
    raise ValueError(
        f"This MODEL {what}; Fashion-RAG inpainting needs the 27-channel Fashion-RAG UNet. "
        f"Load it with 'Fashion-RAG UNet Loader'.{' ' + hint if hint else ''}"
    )


class FashionRAGInpaint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FashionRAGInpaint",
            display_name="Fashion-RAG Inpaint",
            category="fashion_rag/inpaint",
            description=(
                "Repaints the masked region of the person image with the Fashion-RAG UNet, as the "
                "reference does (DDIM, 50 steps, CFG 7.5, zero pose in the unconditional branch)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="From 'Fashion-RAG UNet Loader' (27 input channels)."),
                io.Conditioning.Input("positive", tooltip="The prompt with the garment pseudo-tokens."),
                io.Conditioning.Input("negative", tooltip="The reference uses the empty prompt."),
                io.Vae.Input("vae", tooltip="The SD2 VAE."),
                io.Image.Input("image", tooltip="The person image; width and height divisible by 8. One "
                                                "image with k prompts (one per garment) gives k candidates."),
                io.Mask.Input("mask", tooltip="1 = repaint (the garment region); same size as the image."),
                PoseType.Input("pose", optional=True, tooltip=POSE_TOOLTIP),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the initial noise (candidates of one person all get the "
                                     "noise this seed gives one image)."),
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip="Denoising steps (reference 50)."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale (reference: 7.5)."),
                io.Combo.Input(
                    "sampler_name", options=[REFERENCE_SAMPLER, *comfy.samplers.KSampler.SAMPLERS],
                    default=REFERENCE_SAMPLER,
                    tooltip=f"'{REFERENCE_SAMPLER}' reproduces the reference's DDIM exactly; the "
                            "others are ComfyUI's samplers.",
                ),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                               tooltip=f"For ComfyUI's samplers; '{REFERENCE_SAMPLER}' uses its own."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="1 = start from pure noise (the reference); lower keeps more "
                                       "of the photo inside the mask."),
                io.Boolean.Input("paste_back", default=False,
                                 tooltip="Paste the original pixels outside the mask onto the result "
                                         "(the reference does not)."),
            ],
            outputs=[
                io.Latent.Output(display_name="latent"),
                io.Image.Output(display_name="image"),
            ],
        )

    @classmethod
    def _combos(cls, sampler_name: str | None, scheduler: str | None) -> dict[str, str | None]:
        # The reference sampler ignores the scheduler: a workflow carrying a scheduler this
        # ComfyUI lacks still runs unchanged with it.
        return {"sampler_name": sampler_name,
                "scheduler": None if sampler_name == REFERENCE_SAMPLER else scheduler}

    @classmethod
    def validate_inputs(cls, sampler_name: str | None = None, scheduler: str | None = None) -> bool | str:
        # A shared workflow may name a sampler/scheduler this ComfyUI lacks: a message naming the
        # choices before the run, the same on every ComfyUI version (see compat.py).
        return check_combos(cls, **cls._combos(sampler_name, scheduler))

    @classmethod
    def execute(cls, model, positive, negative, vae, image, mask, seed: int, steps: int,
                cfg: float, sampler_name: str, scheduler: str, denoise: float,
                paste_back: bool, pose=None) -> io.NodeOutput:
        require_combos(cls, **cls._combos(sampler_name, scheduler))
        check_model(model)
        pixels, mask, pose, same_noise = inpaint_inputs(image, mask, pose, positive)
        positive, negative = with_inpaint_channels(positive, negative, vae, pixels, mask, pose)

        b, h, w, _ = pixels.shape
        if denoise > FULL_DENOISE:  # the reference starts from pure noise, not the photo's latent
            # Where and as ComfyUI's EmptyLatentImage makes latents (the sampler moves them).
            latent_image = torch.zeros(b, LATENT_CHANNELS, h // LATENT_DOWNSCALE, w // LATENT_DOWNSCALE,
                                       device=mm.intermediate_device(), dtype=torch.float32)
        else:
            latent_image = vae.encode(pixels).to(mm.intermediate_device())
        # Candidates share one noise: item 0's for every item, which is also what this seed
        # gives a batch of one (prepare_noise draws per index when given indices).
        noise = comfy.sample.prepare_noise(latent_image, seed, [0] * b if same_noise else None)
        sampler, sigmas = sampler_and_sigmas(model, sampler_name, scheduler, steps, denoise)

        callback = latent_preview.prepare_callback(model, max(len(sigmas) - 1, 1))
        samples = comfy.sample.sample_custom(
            model, noise, cfg, sampler, sigmas, positive, negative, latent_image,
            callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed,
        )
        decoded = vae.decode(samples)[..., :3]
        if paste_back:
            decoded = paste_outside(decoded, pixels, mask)
        return io.NodeOutput({"samples": samples}, decoded)


NODES: list[type[io.ComfyNode]] = [FashionRAGInpaint]
