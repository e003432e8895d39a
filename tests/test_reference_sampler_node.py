"""'Fashion-RAG Reference DDIM' and the sampler objects behind it (nodes/reference_sampler.py):
when the sampler starts from unit noise, the widgets, and the step range (mutation pass)."""

from __future__ import annotations

import pytest
from test_inpaint_parity import load_tiny_model, pack_module, tiny_unet

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
    Mutations caught: the steps default changed from 50; denoise's minimum raised above 0."""
    node = pack_module(comfy_runtime, "nodes.reference_sampler").FashionRAGReferenceDDIM
    req = node.INPUT_TYPES()["required"]
    assert req["steps"][1]["default"] == 50 and req["steps"][1]["min"] == 1
    assert req["denoise"][1]["default"] == 1.0 and req["denoise"][1]["min"] == 0.0
    assert req["denoise"][1]["max"] == 1.0


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
