"""fashion_rag.inpaint.ddim against diffusers' DDIMScheduler with SD2-inpainting's settings (no ComfyUI).

Expected schedules come from diffusers (its scheduler, and its inpainting pipeline's own
get_timesteps for denoise < 1), never from the module's helpers; denoise values include ones
where steps x denoise is not whole (0.37 x 7 = 2.59 keeps 2 steps, as diffusers' int() does).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_inpaint_parity import SCHEDULER_CONFIG, rel

from fashion_rag.inpaint import ddim


@pytest.fixture(scope="module")
def scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(SCHEDULER_CONFIG)


def test_timesteps_are_leading_with_offset(scheduler):
    assert ddim.ddim_timesteps(50)[:3] == [981, 961, 941]
    assert ddim.ddim_timesteps(50)[-1] == 1
    for steps in (1, 7, 20, 50, 999):
        scheduler.set_timesteps(steps)
        assert ddim.ddim_timesteps(steps) == scheduler.timesteps.tolist()
    with pytest.raises(ValueError):
        ddim.ddim_timesteps(0)


def _alphas_cumprod_f64(scheduler) -> torch.Tensor:
    """SD2's scaled-linear alpha_bar written out in float64 (diffusers keeps float32, too coarse
    for the last sigmas at 1e-6), checked against diffusers' own."""
    cfg = scheduler.config
    betas = torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, cfg.num_train_timesteps,
                           dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, dim=0)
    assert torch.allclose(ac.float(), scheduler.alphas_cumprod, rtol=1e-6, atol=0)
    return ac


def _diffusers_sigmas(scheduler, timesteps) -> torch.Tensor:
    """sqrt((1 - alpha_bar) / alpha_bar) at diffusers' timesteps, then at alpha_bar_0 (where
    set_alpha_to_one=False lands the last step)."""
    ac = _alphas_cumprod_f64(scheduler)[[int(t) for t in timesteps] + [0]]
    return ((1 - ac) / ac).sqrt()


def _diffusers_partial(scheduler, steps: int, denoise: float) -> torch.Tensor:
    """The timesteps diffusers' inpainting pipeline runs at strength = denoise (its own code)."""
    from diffusers import StableDiffusionInpaintPipeline

    scheduler.set_timesteps(steps)
    timesteps, _ = StableDiffusionInpaintPipeline.get_timesteps(SimpleNamespace(scheduler=scheduler), steps,
                                                                denoise, "cpu")
    return timesteps


def test_schedule_and_sigmas(scheduler):
    ac = ddim.scaled_linear_alphas_cumprod()
    assert torch.allclose(ac.float(), scheduler.alphas_cumprod, rtol=1e-5)
    sigmas = ddim.reference_ddim_sigmas(ac, 50)
    assert sigmas.dtype == torch.float32 and len(sigmas) == 51
    scheduler.set_timesteps(50)
    assert torch.allclose(sigmas.double(), _diffusers_sigmas(scheduler, scheduler.timesteps), rtol=1e-6)
    # The last step lands on alphas_cumprod[0] (set_alpha_to_one=False), not on sigma 0.
    assert float(sigmas[-1]) == pytest.approx(((1 - 0.99915) / 0.99915) ** 0.5, rel=1e-3)
    assert torch.allclose(ddim.alphas_cumprod_from_sigmas(ddim.sigmas_from_alphas_cumprod(ac)), ac)
    half = ddim.reference_ddim_sigmas(ac, 50, denoise=0.5)
    assert torch.equal(half, sigmas[25:])
    assert len(ddim.reference_ddim_sigmas(ac, 50, denoise=0.0)) == 0


@pytest.mark.parametrize("steps,denoise,kept", [(7, 0.37, 2), (50, 0.6, 30), (100, 0.29, 28), (13, 0.999, 12),
                                                (10, 0.05, 0), (13, 1.5, 13)])
def test_partial_schedules_keep_the_steps_diffusers_keeps(scheduler, steps, denoise, kept):
    """denoise < 1 keeps int(steps x denoise) of the last steps (diffusers' strength), also where
    that product is not whole (2.59, 28.999999999999996, 12.987, 0.5); above 1 (19.5) the whole
    schedule, as diffusers' get_timesteps caps it at the step count.
    Mutations caught: round() or ceil instead of int() in reference_ddim_sigmas; denoise ignored
    (failed: yes, each); the cap min(..., steps) dropped (1.5 kept the last 6 steps: 13 - 19)."""
    ac = ddim.scaled_linear_alphas_cumprod()
    timesteps = _diffusers_partial(scheduler, steps, denoise)
    assert len(timesteps) == kept  # the literal count, so diffusers' rule itself is pinned too
    got = ddim.reference_ddim_sigmas(ac, steps, denoise)
    if kept == 0:
        assert len(got) == 0
        return
    assert torch.allclose(got.double(), _diffusers_sigmas(scheduler, timesteps), rtol=1e-6)


def _eps_model(x_t: torch.Tensor, t: int) -> torch.Tensor:
    """A deterministic, nonlinear stand-in for the UNet's noise prediction."""
    return torch.tanh(0.7 * x_t + 0.01 * t) + 0.1 * torch.sin(x_t * t / 100)


def _k_model(ac: torch.Tensor):
    """The eps model seen as ComfyUI's wrapped model: (x, sigma) -> x0, x = x_t / sqrt(ac)."""
    table = ddim.sigmas_from_alphas_cumprod(ac).float()

    def model(x, sigma):
        t = int((table.log() - sigma[0].log()).abs().argmin())
        x_t = x / (1 + sigma[0] ** 2) ** 0.5
        return x - sigma[0] * _eps_model(x_t, t)

    return model


def _diffusers_loop(scheduler, x, timesteps):
    for t in timesteps:
        x = scheduler.step(_eps_model(x, int(t)), t, x).prev_sample
    return x


@pytest.mark.parametrize("steps", [50, 13])
def test_sampler_matches_diffusers_from_unit_noise(scheduler, steps):
    ac = scheduler.alphas_cumprod.double()
    noise = torch.randn(2, 4, 8, 6, generator=torch.manual_seed(0))
    scheduler.set_timesteps(steps)
    ref = _diffusers_loop(scheduler, noise * scheduler.init_noise_sigma, scheduler.timesteps)

    sigmas = ddim.reference_ddim_sigmas(ac, steps)
    x = noise * (1 + sigmas[0] ** 2) ** 0.5  # unit DDPM noise in k-diffusion scaling
    seen = []
    ours = ddim.sample_ddim_reference(_k_model(ac), x, sigmas, callback=lambda d: seen.append(d["i"]))
    assert seen == list(range(steps))
    err = rel(ours, ref)
    print(f"\nsample_ddim_reference vs DDIMScheduler ({steps} steps): rel {err:.2e}")
    assert err < 1e-5


@pytest.mark.parametrize("steps,denoise", [(50, 0.6), (7, 0.37)])
def test_partial_denoise_matches_diffusers_img2img(scheduler, steps, denoise):
    """denoise < 1: diffusers' strength semantics, starting from add_noise(latent, noise, t)."""
    ac = scheduler.alphas_cumprod.double()
    g = torch.manual_seed(1)
    latent, noise = torch.randn(1, 4, 8, 6, generator=g), torch.randn(1, 4, 8, 6, generator=g)
    timesteps = _diffusers_partial(scheduler, steps, denoise)
    ref = _diffusers_loop(scheduler, scheduler.add_noise(latent, noise, timesteps[:1]), timesteps)

    sigmas = ddim.reference_ddim_sigmas(ac, steps, denoise=denoise)
    x = latent + noise * sigmas[0]  # ComfyUI's noise scaling below sigma_max
    assert rel(ddim.sample_ddim_reference(_k_model(ac), x, sigmas), ref) < 1e-5


def test_zero_final_sigma_returns_x0():
    x0 = torch.randn(1, 4, 2, 2)
    out = ddim.sample_ddim_reference(lambda x, s: x0, torch.randn(1, 4, 2, 2) * 3,
                                     torch.tensor([3.0, 1.0, 0.0]))
    assert torch.allclose(out, x0)


def test_sigmas_read_back_from_float32_sigmas_are_exact(scheduler):
    """ComfyUI holds a model's sigmas in float32 and the reference sampler reads its alpha_bar back
    from them: 1 - alpha_bar_0 is 8.5e-4, so alpha_bar = 1 / (1 + sigma^2) rounded to float32
    (ulp 6e-8) would move the last sigma by ~3e-5. Read back in float64, the schedule stays within
    1e-6 of diffusers' float64 sigmas, at 50 steps and at 1 step (timestep 1, then alpha_bar_0).
    Mutation caught: the float64 cast dropped in alphas_cumprod_from_sigmas (failed: rel ~1e-5)."""
    ac64 = _alphas_cumprod_f64(scheduler)
    sigmas32 = ((1 - ac64) / ac64).sqrt().float()  # what model_sampling.sigmas holds
    for steps in (50, 1):
        scheduler.set_timesteps(steps)
        got = ddim.reference_ddim_sigmas(ddim.alphas_cumprod_from_sigmas(sigmas32), steps)
        assert torch.allclose(got.double(), _diffusers_sigmas(scheduler, scheduler.timesteps),
                              rtol=1e-6, atol=0), steps


def test_callback_reports_each_step_before_it_moves():
    """The callback ComfyUI's preview reads (KSAMPLER passes i, denoised and x on): at step i the
    sample x before the step, sigma i, and the model's x0 prediction. By hand, sigmas 5, 2, 0.5,
    0.03 and predictions 0.3, -0.2, 0.7 from x = 5: x goes 5 -> 0.3 + 4.7 x 2/5 = 2.18 ->
    -0.2 + 2.38 x 0.25 = 0.395 -> 0.7 - 0.305 x 0.06 = 0.6817, returned / sqrt(1 + 0.03^2).
    Mutations caught: "denoised" reported as x (the preview showing the noisy sample); "sigma"
    reported as the next sigma."""
    preds = iter([0.3, -0.2, 0.7])
    seen = []
    out = ddim.sample_ddim_reference(lambda x, s: torch.full_like(x, next(preds)),
                                     torch.full((1, 1, 2, 2), 5.0, dtype=torch.float64),
                                     torch.tensor([5.0, 2.0, 0.5, 0.03], dtype=torch.float64),
                                     callback=seen.append)
    assert [d["i"] for d in seen] == [0, 1, 2]
    assert [float(d["sigma"]) for d in seen] == [5.0, 2.0, 0.5]
    assert [float(d["denoised"][0, 0, 1, 1]) for d in seen] == [0.3, -0.2, 0.7]
    assert [float(d["x"][0, 0, 0, 0]) for d in seen] == pytest.approx([5.0, 2.18, 0.395], abs=1e-12)
    assert torch.allclose(out, torch.full((1, 1, 2, 2), 0.6813934419111974, dtype=torch.float64),
                          rtol=1e-12, atol=0)


def test_the_train_step_count_comes_from_the_schedule():
    """A schedule of 500 training steps (diffusers' DDIMScheduler with num_train_timesteps=500):
    10 steps are 451, 401, ..., 1 (ratio 50, not 100), and the sigmas are diffusers' at those
    timesteps, then at alpha_bar_0.
    Mutation caught: reference_ddim_sigmas spacing by the constant 1000 instead of the schedule's
    length (timestep 901 of 0..499: IndexError)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config({**SCHEDULER_CONFIG, "num_train_timesteps": 500})
    sched.set_timesteps(10)
    assert sched.timesteps.tolist() == [451, 401, 351, 301, 251, 201, 151, 101, 51, 1]
    ac = sched.alphas_cumprod.double()
    a = ac[sched.timesteps.tolist() + [0]]
    got = ddim.reference_ddim_sigmas(ac, 10).double()
    assert torch.allclose(got, ((1 - a) / a).sqrt(), rtol=1e-6, atol=0)
