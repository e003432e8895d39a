"""The reference's DDIM as ComfyUI sampler objects, and FashionRAGReferenceDDIM, which offers it
as a SAMPLER + SIGMAS pair for SamplerCustom users."""

from __future__ import annotations

import comfy.samplers
import torch
from comfy_api.latest import io

from ..fashion_rag.inpaint.ddim import (
    alphas_cumprod_from_sigmas,
    reference_ddim_sigmas,
    sample_ddim_reference,
)

REFERENCE_SAMPLER = "fashion_rag_ddim"
FULL_DENOISE = 0.9999  # ComfyUI's own threshold (KSampler.set_steps) for "start from noise"


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


def reference_sigmas(model, steps: int, denoise: float) -> torch.Tensor:
    """The reference's DDIM schedule on this MODEL's noise schedule (see fashion_rag.inpaint.ddim)."""
    alphas = alphas_cumprod_from_sigmas(model.get_model_object("model_sampling").sigmas.cpu())
    return reference_ddim_sigmas(alphas, steps, denoise)


def stock_sigmas(model, sampler_name: str, scheduler: str, steps: int, denoise: float) -> torch.Tensor:
    """The sigmas KSampler uses for a stock sampler/scheduler: asked of ComfyUI's KSampler itself,
    so denoise < 1 and the samplers that drop the penultimate sigma follow ComfyUI exactly."""
    return comfy.samplers.KSampler(model, steps=steps, device="cpu", sampler=sampler_name,
                                   scheduler=scheduler, denoise=denoise).sigmas.cpu()


def sampler_and_sigmas(model, sampler_name: str, scheduler: str, steps: int, denoise: float):
    """(sampler object, sigmas) for `sampler_name`: the reference DDIM or a stock sampler."""
    if sampler_name == REFERENCE_SAMPLER:
        if denoise > FULL_DENOISE:  # the whole schedule, as KSampler runs it: not one step short
            denoise = 1.0
        return ReferenceDDIM(unit_noise_start=denoise > FULL_DENOISE), reference_sigmas(model, steps, denoise)
    sigmas = stock_sigmas(model, sampler_name, scheduler, steps, denoise)
    return comfy.samplers.sampler_object(sampler_name), sigmas


class FashionRAGReferenceDDIM(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FashionRAGReferenceDDIM",
            display_name="Fashion-RAG Reference DDIM",
            category="fashion_rag/inpaint",
            description=(
                "The reference's DDIM sampler (leading timesteps 981…1, the last step landing on ᾱ₀, "
                "unit-noise start) as a SAMPLER and its SIGMAS, for SamplerCustom: with "
                "'Fashion-RAG Inpaint Conditioning' it reproduces 'Fashion-RAG Inpaint'."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The MODEL to sample (its noise schedule sets the sigmas)."),
                io.Int.Input("steps", default=50, min=1, max=999, tooltip="Denoising steps (reference 50)."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="1 = start from pure noise (the reference); lower keeps the last "
                                       "steps only, starting from the latent given to SamplerCustom."),
            ],
            outputs=[
                io.Sampler.Output(display_name="sampler", tooltip="For SamplerCustom's sampler input."),
                io.Sigmas.Output(display_name="sigmas", tooltip="For SamplerCustom's sigmas input."),
            ],
        )

    @classmethod
    def execute(cls, model, steps: int, denoise: float) -> io.NodeOutput:
        sampler, sigmas = sampler_and_sigmas(model, REFERENCE_SAMPLER, "normal", steps, denoise)
        return io.NodeOutput(sampler, sigmas)


NODES: list[type[io.ComfyNode]] = [FashionRAGReferenceDDIM]
