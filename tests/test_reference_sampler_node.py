"""'Fashion-RAG Reference DDIM' and the sampler objects behind it (nodes/reference_sampler.py):
when the sampler starts from unit noise, the widgets, and the step range (mutation pass)."""

from __future__ import annotations

import pytest
import torch
from test_ddim import _diffusers_sigmas as _float64_sigmas
from test_inpaint_parity import SCHEDULER_CONFIG, load_tiny_model, pack_module, tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(comfy_runtime, tmp_path_factory):
    return load_tiny_model(comfy_runtime, tiny_unet(seed=9), tmp_path_factory.mktemp("ref_sampler"))


@pytest.mark.parametrize("denoise,unit_noise", [(1.0, True), (0.99995, True), (0.9999, False), (0.5, False)])
def test_unit_noise_start_only_above_comfyuis_full_denoise_threshold(comfy_runtime, model, denoise,
                                                                     unit_noise):
    """ComfyUI's KSampler.set_steps counts denoise > 0.9999 as "from pure noise"; the reference
    sampler starts from unit noise exactly then, and at 0.9999 itself it is a partial run from
    the given latent (the last int(50 x 0.9999) = 49 steps: 50 sigmas). Above it (0.99995) the
    whole schedule runs, as KSampler's does: 50 steps, 51 sigmas.
    Mutation caught: the threshold test made `>=` (0.9999 started from unit noise).
    Bug fixed in this pass: at 0.99995 the sampler started from unit noise but the schedule kept
    only int(50 x 0.99995) = 49 steps (a unit-noise start at t = 961)."""
    node = pack_module(comfy_runtime, "nodes.reference_sampler").FashionRAGReferenceDDIM
    sampler, sigmas = node.execute(model, 50, denoise)
    assert sampler.unit_noise_start is unit_noise
    assert len(sigmas) == (51 if unit_noise else 50 if denoise == 0.9999 else 26)


def test_widgets_default_to_the_reference_and_allow_denoise_zero(comfy_runtime):
    """The node's widgets: 50 steps by default (the reference's), denoise 1.0 by default with 0
    allowed (nothing to do: SamplerCustom hands the latent back), read as ComfyUI's front end
    gets them (V1 INPUT_TYPES).
    The denoise widget moves in 0.01 steps, as core KSampler's does (0.37 is reachable).
    Mutations caught: the steps default changed from 50; denoise's minimum raised above 0;
    denoise's step made 0.1."""
    import nodes as comfy_nodes

    node = pack_module(comfy_runtime, "nodes.reference_sampler").FashionRAGReferenceDDIM
    req = node.INPUT_TYPES()["required"]
    assert req["steps"][1]["default"] == 50 and req["steps"][1]["min"] == 1
    assert req["denoise"][1]["default"] == 1.0 and req["denoise"][1]["min"] == 0.0
    assert req["denoise"][1]["max"] == 1.0
    assert req["denoise"][1]["step"] == 0.01
    assert comfy_nodes.KSampler.INPUT_TYPES()["required"]["denoise"][1]["step"] == 0.01


def _diffusers(**config):
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config({**SCHEDULER_CONFIG, **config})


def _zsnr_sigmas(steps: int) -> torch.Tensor:
    """diffusers' zero-terminal-SNR DDIMScheduler (rescale_betas_zero_snr; its alphas_cumprod in
    float32): sigma at its timesteps, then at alpha_bar_0 (set_alpha_to_one=False)."""
    sched = _diffusers(rescale_betas_zero_snr=True)
    sched.set_timesteps(steps)
    ac = sched.alphas_cumprod.double()[sched.timesteps.tolist() + [0]]
    return ((1 - ac) / ac).sqrt()


def test_sigmas_follow_the_models_patched_noise_schedule(comfy_runtime, model):
    """The sigmas come from the MODEL as patched: core ModelSamplingDiscrete with zsnr (an object
    patch of "model_sampling") gives diffusers' zero-terminal-SNR schedule (rescale_betas_zero_snr),
    the plain MODEL SD2's. Expected at diffusers' 50 timesteps: SD2's alpha_bar in float64
    (test_ddim's, checked against diffusers') to 1e-6; the zero-SNR one from diffusers' float32
    alphas_cumprod to 1e-4 (measured 1.4e-5). The two schedules differ by far more at t = 981.
    Mutations caught: reference_sigmas reading model.model.model_sampling (the unpatched schedule,
    ignoring the patch); the float64 cast dropped in alphas_cumprod_from_sigmas (the plain row)."""
    import nodes as comfy_nodes

    ref = pack_module(comfy_runtime, "nodes.reference_sampler")
    patch_node = comfy_nodes.NODE_CLASS_MAPPINGS["ModelSamplingDiscrete"]
    if hasattr(patch_node, "patch"):
        (zsnr,) = patch_node().patch(model, "eps", True)
    else:  # a V3 node in later ComfyUI versions
        (zsnr,) = patch_node.execute(model, "eps", True).result
    sched = _diffusers()
    sched.set_timesteps(50)
    plain, rescaled = _float64_sigmas(sched, sched.timesteps), _zsnr_sigmas(50)
    assert float((rescaled[0] / plain[0]).log().abs()) > 1.0  # the schedules really differ
    assert torch.allclose(ref.reference_sigmas(model, 50, 1.0).double(), plain, rtol=1e-6, atol=0)
    assert torch.allclose(ref.reference_sigmas(zsnr, 50, 1.0).double(), rescaled, rtol=1e-4, atol=0)
    _, sigmas = ref.sampler_and_sigmas(zsnr, ref.REFERENCE_SAMPLER, "normal", 50, 1.0)
    assert torch.allclose(sigmas.double(), rescaled, rtol=1e-4, atol=0)


def test_a_thousand_steps_is_refused_with_the_range(comfy_runtime, model):
    """SD2's 1000 training timesteps with diffusers' leading spacing and steps_offset 1 give 999
    steps at most (1000 steps would start at timestep 1000, past the last one, 999; diffusers'
    DDIMScheduler fails there too): the node offers 1..999, and 1000 asked through the API is a
    ValueError naming the range, not an IndexError from inside the schedule.
    Bug fixed in this pass (was: max 1000 and IndexError "index 1000 is out of bounds")."""
    node = pack_module(comfy_runtime, "nodes.reference_sampler").FashionRAGReferenceDDIM
    assert node.INPUT_TYPES()["required"]["steps"][1]["max"] == 999
    assert len(node.execute(model, 999, 1.0)[1]) == 1000
    with pytest.raises(ValueError, match=r"steps must be in 1\.\.999, got 1000"):
        node.execute(model, 1000, 1.0)
