"""The reference's DDIM sampler, exactly, as a k-diffusion-style sampler over sigmas.

The reference samples with diffusers' DDIMScheduler (SD2-inpainting settings: scaled-linear betas
0.00085 -> 0.012, 1000 train steps, "leading" spacing with steps_offset 1, set_alpha_to_one
False, eta 0, epsilon prediction), starting from unit Gaussian noise in DDPM space.

In k-diffusion terms (x = x_ddpm / sqrt(alpha_bar), sigma = sqrt((1 - alpha_bar) / alpha_bar)),
an eta-0 DDIM step is an Euler step in sigma. Two things set the reference apart from ComfyUI's
stock `ddim` sampler with the `ddim_uniform` scheduler (which use the same timesteps):
- start: unit noise in DDPM space is noise * sqrt(1 + sigma_0^2) in k-diffusion space, not
  noise * sigma_0 (the caller asks ComfyUI for the former; see nodes/inpaint.py);
- end: the last step goes from t=1 to alpha_bar_0 = alphas_cumprod[0] (0.99915), not to sigma 0,
  and the result stays in DDPM scaling: sqrt(alpha_bar_0) * (x0 + sigma(0) * eps). That is x0
  plus about 0.03 * eps, a ~1e-2 relative difference on the final latent.
This module is plain torch; the sampler function has the signature ComfyUI's KSAMPLER expects.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012


def scaled_linear_alphas_cumprod(
    beta_start: float = BETA_START, beta_end: float = BETA_END,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
) -> torch.Tensor:
    """alphas_cumprod of SD's "scaled_linear" schedule (float64)."""
    # Schedules live on the CPU, as ComfyUI's (the sampler moves the sigmas it uses).
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64,
                           device="cpu") ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    return ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()


def alphas_cumprod_from_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """Inverse of sigmas_from_alphas_cumprod (e.g. from ComfyUI's model_sampling.sigmas)."""
    sigmas = sigmas.to(torch.float64)
    return 1.0 / (1.0 + sigmas**2)


def ddim_timesteps(steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
                   steps_offset: int = 1) -> list[int]:
    """diffusers' "leading" spacing: 50 steps -> 981, 961, ..., 1."""
    if steps < 1 or steps > num_train_timesteps - steps_offset:  # else timestep 1000 of 0..999
        raise ValueError(f"steps must be in 1..{num_train_timesteps - steps_offset}, got {steps}")
    ratio = num_train_timesteps // steps
    return [i * ratio + steps_offset for i in reversed(range(steps))]


def reference_ddim_sigmas(
    alphas_cumprod: torch.Tensor, steps: int, denoise: float = 1.0, steps_offset: int = 1,
) -> torch.Tensor:
    """The reference's schedule as sigmas (float32), ending on sigma(alphas_cumprod[0]).

    denoise < 1 keeps the last int(steps * denoise) steps, as diffusers' img2img/inpaint
    pipelines do with `strength`; 0 steps gives an empty tensor (nothing to do).
    """
    alphas_cumprod = alphas_cumprod.to(torch.float64)
    timesteps = ddim_timesteps(steps, len(alphas_cumprod), steps_offset)
    keep = min(int(steps * denoise), steps)
    if keep <= 0:
        return torch.zeros(0, dtype=torch.float32, device=alphas_cumprod.device)
    timesteps = timesteps[steps - keep:]
    # set_alpha_to_one=False: the step after the last timestep lands on alphas_cumprod[0].
    alphas = torch.cat([alphas_cumprod[timesteps], alphas_cumprod[:1]])
    return sigmas_from_alphas_cumprod(alphas).float()


@torch.no_grad()
def sample_ddim_reference(
    model: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor,
    extra_args: dict | None = None, callback: Callable[[dict], None] | None = None,
    disable: bool | None = None,
) -> torch.Tensor:
    """Eta-0 DDIM over `sigmas` (k-diffusion convention: model(x, sigma) returns x0).

    `x` must already be scaled for sigmas[0] (for the reference: noise * sqrt(1 + sigma_0^2),
    i.e. unit noise in DDPM space). Returns the sample in DDPM scaling at the last sigma,
    x / sqrt(1 + sigma_last^2), which is what diffusers' scheduler hands back; with a last
    sigma of 0 that is plain x0.
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        # Keep the predicted noise eps = (x - x0) / sigma and move to the next noise level.
        x = denoised + (x - denoised) * (sigma_next / sigma)
    return x / (1.0 + sigmas[-1].to(x.dtype) ** 2) ** 0.5
