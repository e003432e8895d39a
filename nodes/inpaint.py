"""Fashion-RAG inpainting on ComfyUI's own conditioning, sampler and VAE machinery.

FashionRAGInpaintConditioning: like core InpaintModelConditioning, but gives each conditioning
a "noise_concat" entry, the 23 channels the Fashion-RAG UNet sees after the noisy latent:
mask (binarised at 0.5, nearest-resized) | masked-image latent (x the latent scale) | pose
heatmaps (bilinear), with a zero pose in the negative branch (the reference's unconditional
branch). Any stock KSampler/SamplerCustom then samples the Fashion-RAG UNet correctly.

FashionRAGInpaint: the whole reference inpainting in one node, sampling through
comfy.sample.sample_custom so LoRAs and MODEL patches apply. Its default sampler is the
reference-exact DDIM (fashion_rag.inpaint.ddim); every stock sampler/scheduler is available too.
"""

from __future__ import annotations

import comfy.latent_formats
import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import node_helpers
import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..fashion_rag.inpaint.ddim import (
    alphas_cumprod_from_sigmas,
    reference_ddim_sigmas,
    sample_ddim_reference,
)
from ..fashion_rag.inpaint.pose import resize_pose
from ..fashion_rag.inpaint.unet_layout import FASHION_RAG_IN_CHANNELS, LATENT_CHANNELS, POSE_CHANNELS
from .compat import check_combos, require_combos
from .types import PoseType

REFERENCE_SAMPLER = "fashion_rag_ddim"
# SD2's latent format: the UNet sees VAE latents x 0.18215.
_LATENT_FORMAT = comfy.latent_formats.SD15()


class ReferenceDDIM(comfy.samplers.KSAMPLER):
    """ComfyUI sampler object running fashion_rag.inpaint.ddim.sample_ddim_reference.

    With unit_noise_start, ComfyUI's noise scaling uses its "max denoise" form,
    noise * sqrt(1 + sigma^2) (+ the zero latent): exactly unit noise in DDPM space, where the
    reference starts, although the first sigma (t = 981) is below sigma_max.
    """

    def __init__(self, unit_noise_start: bool = True) -> None:
        super().__init__(sample_ddim_reference)
        self.unit_noise_start = unit_noise_start

    def max_denoise(self, model_wrap, sigmas) -> bool:
        return self.unit_noise_start or super().max_denoise(model_wrap, sigmas)


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
    hint = (" A 9-channel model is a stock SD inpainting model: use InpaintModelConditioning "
            "and KSampler with it." if channels == 9 else "")
    raise ValueError(
        f"This MODEL {what}; Fashion-RAG inpainting needs the 27-channel Fashion-RAG UNet. "
        f"Load it with 'Fashion-RAG UNet Loader'.{hint}"
    )


def _prepare(pixels: torch.Tensor, mask: torch.Tensor, pose: torch.Tensor | None):
    """Validated pixels [B,H,W,3], binary mask [B,1,H,W] and pose [B,18,H',W'] (or None)."""
    if pixels.ndim != 4:
        raise ValueError(f"image must be an IMAGE [B, H, W, C], got shape {tuple(pixels.shape)}")
    pixels = pixels[..., :3]
    b, h, w, _ = pixels.shape
    if h % 8 or w % 8:
        raise ValueError(
            f"The image is {w}x{h}; the UNet needs width and height divisible by 8. Resize or "
            f"crop it (e.g. to {w // 8 * 8}x{h // 8 * 8}) with an image scale/crop node; resize "
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
    # The reference repaints where mask >= 0.5 and keeps the rest.
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


def condition_channels(vae, pixels: torch.Tensor, mask: torch.Tensor, pose: torch.Tensor | None):
    """The 23 channels after the noisy latent, for the positive and the negative branch.

    pixels [B,H,W,3] in [0,1], mask [B,1,H,W] binary, pose [B,18,*,*] or None.
    """
    b, h, w, _ = pixels.shape
    lh, lw = h // 8, w // 8
    keep = (mask < 0.5).movedim(1, -1).to(pixels.dtype)  # [B,H,W,1]
    # image * (mask < 0.5) in [-1, 1]: masked pixels become 0 there, i.e. 0.5 in [0, 1].
    masked = (pixels - 0.5) * keep + 0.5
    masked_latent = _LATENT_FORMAT.process_in(vae.encode(masked)).float()
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


def with_concat(positive, negative, concat_pos: torch.Tensor, concat_neg: torch.Tensor):
    return (node_helpers.conditioning_set_values(positive, {"noise_concat": concat_pos}),
            node_helpers.conditioning_set_values(negative, {"noise_concat": concat_neg}))


_POSE_TOOLTIP = "FASHION_RAG_POSE heatmaps; unconnected = no pose (all-zero channels)."


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
                PoseType.Input("pose", optional=True, tooltip=_POSE_TOOLTIP),
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
        pixels, mask, pose = _prepare(pixels, mask, pose)
        concat_pos, concat_neg = condition_channels(vae, pixels, mask, pose)
        positive, negative = with_concat(positive, negative, concat_pos, concat_neg)
        latent = {"samples": vae.encode(pixels)}
        if noise_mask:
            latent["noise_mask"] = mask
        return io.NodeOutput(positive, negative, latent)


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
                io.Image.Input("image", tooltip="The person image; width and height divisible by 8."),
                io.Mask.Input("mask", tooltip="1 = repaint (the garment region); same size as the image."),
                PoseType.Input("pose", optional=True, tooltip=_POSE_TOOLTIP),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the initial noise."),
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
        pixels, mask, pose = _prepare(image, mask, pose)
        concat_pos, concat_neg = condition_channels(vae, pixels, mask, pose)
        positive, negative = with_concat(positive, negative, concat_pos, concat_neg)

        b, h, w, _ = pixels.shape
        full = denoise >= 0.9999
        if full:  # the reference starts from pure noise and ignores the photo's own latent
            latent_image = torch.zeros(b, LATENT_CHANNELS, h // 8, w // 8)
        else:
            latent_image = vae.encode(pixels).to(mm.intermediate_device())
        noise = comfy.sample.prepare_noise(latent_image, seed)

        if sampler_name == REFERENCE_SAMPLER:
            model_sampling = model.get_model_object("model_sampling")
            alphas = alphas_cumprod_from_sigmas(model_sampling.sigmas.cpu())
            sigmas = reference_ddim_sigmas(alphas, steps, denoise)
            sampler = ReferenceDDIM(unit_noise_start=full)
        else:
            sigmas = comfy.samplers.KSampler(
                model, steps=steps, device=model.load_device, sampler=sampler_name,
                scheduler=scheduler, denoise=denoise, model_options=model.model_options,
            ).sigmas.cpu()
            sampler = comfy.samplers.sampler_object(sampler_name)

        callback = latent_preview.prepare_callback(model, max(len(sigmas) - 1, 1))
        samples = comfy.sample.sample_custom(
            model, noise, cfg, sampler, sigmas, positive, negative, latent_image,
            callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed,
        )
        decoded = vae.decode(samples)[..., :3]
        if paste_back:
            m = mask.movedim(1, -1).to(decoded.device)
            decoded = decoded * m + pixels.to(decoded.device) * (1.0 - m)
        return io.NodeOutput({"samples": samples}, decoded)


NODES: list[type[io.ComfyNode]] = [FashionRAGInpaintConditioning, FashionRAGInpaint]
