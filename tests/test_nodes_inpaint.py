"""FashionRAGInpaintConditioning / FashionRAGInpaint inside real ComfyUI: channel contents, stock
KSampler use, other samplers, MODEL patches, and the bad-input errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from test_inpaint_parity import H, W, inputs, pack_module, rel, tiny_unet, tiny_vaes

from fashion_rag.inpaint.unet_layout import UNetLayout

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def parts(comfy_runtime, tmp_path_factory):
    from test_inpaint_parity import load_tiny_model

    _, cvae = tiny_vaes()
    model = load_tiny_model(comfy_runtime, tiny_unet(seed=7), tmp_path_factory.mktemp("nodes"))
    nodes = comfy_runtime.nodes.NODE_CLASS_MAPPINGS
    return model, cvae, SimpleNamespace(**{k: v for k, v in nodes.items() if k.startswith("FashionRAG")})


def _concat(cond) -> torch.Tensor:
    (entry,) = cond
    return entry[1]["noise_concat"]


def test_conditioning_channels(parts):
    model, vae, inpaint = parts
    image, mask, pose, pos, neg = inputs()
    mask = mask * 0.8 + 0.1  # soft mask: binarised at 0.5
    with torch.inference_mode():
        p, n, latent = inpaint.FashionRAGInpaintConditioning.execute(pos, neg, vae, image, mask, pose=pose)
    cp, cn = _concat(p), _concat(n)
    assert cp.shape == cn.shape == (1, 23, H // 8, W // 8)
    binary = (mask >= 0.5).float()[:, None]
    assert torch.equal(cp[:, :1], F.interpolate(binary, size=(H // 8, W // 8), mode="nearest"))
    masked = (image - 0.5) * (binary.movedim(1, -1) < 0.5) + 0.5
    assert torch.allclose(cp[:, 1:5], vae.encode(masked) * 0.18215, atol=1e-6)
    assert torch.allclose(cp[:, 5:], F.interpolate(pose, size=(H // 8, W // 8), mode="bilinear"))
    assert torch.equal(cn[:, :5], cp[:, :5])  # mask and masked latent in both branches
    assert not cn[:, 5:].any()  # zero pose in the negative branch
    assert torch.allclose(latent["samples"], vae.encode(image))
    assert "noise_mask" not in latent
    assert p[0][0] is pos[0][0]  # the text conditioning itself is untouched

    with torch.inference_mode():
        p, n, latent = inpaint.FashionRAGInpaintConditioning.execute(pos, neg, vae, image, mask,
                                                                     noise_mask=True)
    assert not _concat(p)[:, 5:].any() and not _concat(n)[:, 5:].any()  # no pose -> zeros
    assert torch.equal(latent["noise_mask"], binary)


def test_a_batch_of_people_with_a_prompt_each(parts):
    """Two people and two prompts: person i wears prompt i (no candidates are made). The first
    result is the first person's run alone (ComfyUI's batch noise starts with the one-image
    noise). Mutation caught: two prompts for two people refused as if candidates (failed: yes)."""
    model, vae, inpaint = parts
    image, mask, pose, pos, neg = inputs()
    people = torch.cat([image, image.flip(2)])
    two = [[torch.cat([pos[0][0], torch.randn_like(pos[0][0])]), {}]]
    args = dict(seed=3, steps=2, cfg=7.5, sampler_name="fashion_rag_ddim", scheduler="normal",
                denoise=1.0, paste_back=False, pose=pose)
    with torch.inference_mode():
        latent, images = inpaint.FashionRAGInpaint.execute(model, two, neg, vae, people, mask, **args)
        alone, _ = inpaint.FashionRAGInpaint.execute(model, pos, neg, vae, image, mask, **args)
    assert latent["samples"].shape[0] == images.shape[0] == 2
    assert rel(latent["samples"][:1], alone["samples"]) < 1e-5
    assert rel(latent["samples"][0], latent["samples"][1]) > 1e-3


def test_stock_ksampler_samples_through_the_conditioning(comfy_runtime, parts):
    import nodes as comfy_nodes  # ComfyUI's nodes.py (already imported by the harness)

    model, vae, inpaint = parts
    image, mask, pose, pos, neg = inputs()
    with torch.inference_mode():
        p, n, latent = inpaint.FashionRAGInpaintConditioning.execute(pos, neg, vae, image, mask, pose=pose)
        (out,) = comfy_nodes.common_ksampler(model, 1, 4, 7.5, "euler", "normal", p, n, latent)
    assert out["samples"].shape == (1, 4, H // 8, W // 8) and torch.isfinite(out["samples"]).all()

    # Core InpaintModelConditioning gives 5 extra channels: a clear error, not a conv error.
    with torch.inference_mode():
        p2, n2, latent2 = comfy_nodes.InpaintModelConditioning().encode(pos, neg, image, vae, mask)
        with pytest.raises(ValueError, match="needs 23 extra input channels.*gives 0"):
            comfy_nodes.common_ksampler(model, 1, 2, 7.5, "euler", "normal", p2, n2, latent2)


@pytest.mark.parametrize("sampler,scheduler,steps,denoise", [
    ("euler", "karras", 4, 1.0), ("dpmpp_2m", "normal", 4, 1.0), ("uni_pc", "simple", 4, 1.0),
    ("euler_ancestral", "normal", 4, 0.6), ("dpmpp_2m", "karras", 7, 0.37), ("euler", "simple", 3, 0.5),
    ("euler", "normal", 4, 0.995),  # below KSampler's 0.9999: the photo's latent, all 4 steps' sigmas
    ("euler", "normal", 4, 0.9999),  # KSampler's threshold itself: still the photo's latent
])
def test_other_samplers_and_denoise(comfy_runtime, parts, sampler, scheduler, steps, denoise):
    """A stock sampler in the inpaint node == ComfyUI's own KSampler (common_ksampler) on the
    conditioning node's output: the zero latent at full denoise, the photo's latent below it
    (7 x 0.37 is off the step grid). The row's denoise (or, at 1, its scheduler) changes the result
    here (checked). (fashion_rag_ddim below 1: test_inpaint_parity.py, against diffusers.)
    Mutations caught: the scheduler, the sampler or the denoise ignored for stock samplers; the
    zero latent kept below full denoise (failed: yes, each); the threshold of "full denoise" at
    0.99 instead of KSampler's 0.9999 (the 0.995 row); the zero latent from denoise >= 0.9999
    instead of > 0.9999 (the 0.9999 row)."""
    import nodes as comfy_nodes

    model, vae, inpaint = parts
    image, mask, pose, pos, neg = inputs()
    with torch.inference_mode():
        latent, decoded = inpaint.FashionRAGInpaint.execute(
            model, pos, neg, vae, image, mask, seed=1, steps=steps, cfg=7.5, sampler_name=sampler,
            scheduler=scheduler, denoise=denoise, paste_back=False, pose=pose)
        p, n, photo = inpaint.FashionRAGInpaintConditioning.execute(pos, neg, vae, image, mask, pose=pose)
        zero = {"samples": torch.zeros_like(photo["samples"])}
        first = photo if denoise < 1 else zero

        def ksampler(sampler=sampler, scheduler=scheduler, denoise=denoise, start=first):
            (out,) = comfy_nodes.common_ksampler(model, 1, steps, 7.5, sampler, scheduler, p, n, start,
                                                 denoise=denoise)
            return out["samples"]

        want = ksampler()
        if denoise == 1:
            other = ksampler(scheduler="exponential")
        else:  # at 0.995 KSampler runs full denoise's sigmas: only the photo's latent tells it apart
            other = ksampler(denoise=1.0, start=zero if denoise > 0.99 else photo)
        decoded_want = vae.decode(want)[..., :3]
    assert rel(latent["samples"], want) < 1e-6
    assert rel(decoded, decoded_want) < 1e-6
    assert rel(other, want) > 1e-3


def test_paste_back_keeps_unmasked_pixels_and_patches_apply(parts):
    model, vae, inpaint = parts
    image, mask, pose, pos, neg = inputs()
    args = dict(seed=5, steps=3, cfg=7.5, sampler_name="fashion_rag_ddim", scheduler="normal",
                denoise=1.0, pose=pose)
    with torch.inference_mode():
        run = inpaint.FashionRAGInpaint.execute
        _, plain = run(model, pos, neg, vae, image, mask, paste_back=False, **args)
        _, pasted = run(model, pos, neg, vae, image, mask, paste_back=True, **args)
    keep = mask[..., None] < 0.5
    assert torch.equal(pasted[keep.expand_as(pasted)], image[keep.expand_as(image)])
    assert torch.equal(pasted[~keep.expand_as(pasted)], plain[~keep.expand_as(plain)])

    # A weight patch on a clone (what a LoRA does) changes the result; the original is intact.
    patched = model.clone()
    patched.add_patches({"diffusion_model.out.2.bias": (torch.full((4,), 0.5),)}, 1.0)
    with torch.inference_mode():
        _, again = run(model, pos, neg, vae, image, mask, paste_back=False, **args)
        _, other = run(patched, pos, neg, vae, image, mask, paste_back=False, **args)
    assert rel(again, plain) < 1e-6
    assert rel(other, plain) > 1e-3


def test_one_person_and_a_prompt_batch_give_candidates_with_one_noise(comfy_runtime, parts):
    """k prompts (one per garment) + one person -> k results, all from the noise the seed gives one
    image: candidate i equals the run with prompt i alone; equal prompts give equal results. The
    same through Inpaint Conditioning + a stock KSampler (batch_index 0 for every item).
    Mutation caught: drawing a noise per item (ComfyUI's default for a batch), or keeping only the
    first prompt."""
    import nodes as comfy_nodes

    model, vae, inpaint = parts
    image, mask, pose, pos, neg = inputs()
    other = torch.randn_like(pos[0][0])
    batch = [[torch.cat([pos[0][0], other, pos[0][0]]), {}]]
    args = dict(seed=3, steps=3, cfg=7.5, sampler_name="fashion_rag_ddim", scheduler="normal",
                denoise=1.0, paste_back=False, pose=pose)
    with torch.inference_mode():
        run = inpaint.FashionRAGInpaint.execute
        latent, images = run(model, batch, neg, vae, image, mask, **args)
        alone = [run(model, [[c[None], {}]], neg, vae, image, mask, **args)[0]["samples"]
                 for c in batch[0][0]]
    samples = latent["samples"]
    assert samples.shape[0] == images.shape[0] == 3
    for i in range(3):
        assert rel(samples[i : i + 1], alone[i]) < 1e-5, i
    assert rel(samples[0], samples[2]) < 1e-6 and rel(samples[0], samples[1]) > 1e-3

    with torch.inference_mode():
        p, n, lat = inpaint.FashionRAGInpaintConditioning.execute(batch, neg, vae, image, mask, pose=pose)
        assert lat["samples"].shape[0] == 3 and lat["batch_index"] == [0, 0, 0]
        (out,) = comfy_nodes.common_ksampler(model, 3, 3, 7.5, "euler", "normal", p, n, lat)
    ks = out["samples"]
    assert rel(ks[0], ks[2]) < 1e-6 and rel(ks[0], ks[1]) > 1e-3

    with pytest.raises(ValueError, match="3 prompts .one per garment. for 2 person images"):
        run(model, batch, neg, vae, image.expand(2, -1, -1, -1), mask, **args)


def test_several_entries_count_their_largest_prompt_batch(parts):
    """A positive CONDITIONING of two entries (ConditioningCombine of a one-prompt and a two-prompt
    conditioning) and one person: two candidates, each entry's channels batched to match. Mutation
    caught: the prompt count read from the first entry only (one candidate, a batch-1 latent)."""
    model, vae, inpaint = parts
    image, mask, pose, pos, neg = inputs()
    two = torch.cat([pos[0][0], torch.randn_like(pos[0][0])])
    combined = [[pos[0][0], {}], [two, {}]]
    with torch.inference_mode():
        p, _, latent = inpaint.FashionRAGInpaintConditioning.execute(combined, neg, vae, image, mask,
                                                                     pose=pose)
    assert latent["samples"].shape[0] == 2 and latent["batch_index"] == [0, 0]
    assert [entry[1]["noise_concat"].shape[0] for entry in p] == [2, 2]
    assert torch.equal(p[0][1]["noise_concat"][0], p[0][1]["noise_concat"][1])  # one person, twice


def test_a_vae_of_another_latent_width_is_refused(comfy_runtime, parts):
    """A 16-channel VAE (SD3/Flux-like latents) in place of SD2's 4-channel one: refused with the
    shape it gave and the remedy. Mutation caught: the latent-channel check dropped (the 16
    channels would silently become 35 conditioning channels)."""
    import comfy.sd
    from diffusers import AutoencoderKL
    from test_inpaint_parity import VAE_CONFIG

    _, _, inpaint = parts
    image, mask, pose, pos, neg = inputs()
    dvae = AutoencoderKL(**{**VAE_CONFIG, "latent_channels": 16})
    config = {"params": {"embed_dim": 16, "ddconfig": {
        "double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}}
    vae16 = comfy.sd.VAE(sd={k: v.clone() for k, v in dvae.state_dict().items()}, config=config)
    with pytest.raises(ValueError, match=r"The VAE gave latents of shape \(1, 16, 8, 6\); the Fashion-RAG "
                                         r"UNet needs 4x8x6: use the SD2 \(SD1.x-family\) VAE\."), \
            torch.inference_mode():
        inpaint.FashionRAGInpaintConditioning.execute(pos, neg, vae16, image, mask, pose=pose)


def test_bad_inputs_say_how_to_fix(comfy_runtime, parts, tmp_path):
    model, vae, inpaint = parts
    image, mask, pose, pos, neg = inputs()
    node = inpaint.FashionRAGInpaint
    args = dict(seed=0, steps=2, cfg=7.5, sampler_name="fashion_rag_ddim", scheduler="normal",
                denoise=1.0, paste_back=False)

    def fails(match, **kw):
        call = dict(model=model, positive=pos, negative=neg, vae=vae, image=image, mask=mask) | args | kw
        with pytest.raises(ValueError, match=match), torch.inference_mode():
            node.execute(**call)

    fails(r"mask is 40x64 but the image is 48x64: resize the mask", mask=mask[..., :40])
    fails(r"mask is empty .* Paint the garment region white", mask=torch.zeros_like(mask))
    fails(r"image is 44x60; the UNet needs width and height divisible by 8.*40x56",
          image=image[:, :60, :44], mask=mask[:, :60, :44])
    fails(r"FASHION_RAG_POSE \[B, 18, H, W\]", pose=pose[:, :17])
    fails(r"2 masks for 1 images", mask=mask.expand(2, -1, -1))

    # A stock 9-channel inpainting UNet plugged in.
    loader = pack_module(comfy_runtime, "nodes.unet_loader")
    layout = pack_module(comfy_runtime, "fashion_rag.inpaint.unet_layout")
    nine = UNetLayout(in_channels=9, block_out_channels=(64,), layers_per_block=1,
                      attention_levels=(True,), cross_attention_dim=64)
    sd = {k: torch.zeros(s) for k, s in nine.ldm_shapes().items()}
    stock = loader.build_model(sd, layout.UNetLayout(**nine.__dict__), torch.float32)
    fails(r"takes 9 input channels.*27-channel Fashion-RAG UNet.*InpaintModelConditioning", model=stock)

    with pytest.raises(ValueError, match="divisible by 8"):
        inpaint.FashionRAGInpaintConditioning.execute(pos, neg, vae, image[:, :, :42], mask[:, :, :42])


def test_a_model_without_an_sd_unet_is_named_so(comfy_runtime):
    """A MODEL input that is not an SD-style UNet at all (no input_blocks): refused as such, with
    the loader to use. Mutation caught: the message claiming a channel count it does not have."""
    check_model = pack_module(comfy_runtime, "nodes.inpaint").check_model
    with pytest.raises(ValueError, match=r"^This MODEL is not an SD-style UNet; Fashion-RAG inpainting needs "
                                         r"the 27-channel Fashion-RAG UNet\. Load it with 'Fashion-RAG UNet "
                                         r"Loader'\.$"):
        check_model(object())
    # Objects that have `input_blocks` but no SD input convolution at [0][0]: an empty list
    # (IndexError) and a convolution there directly (TypeError: not subscriptable). Mutation
    # caught: `unet_in_channels` catching AttributeError only (both would escape as a raw error).
    for blocks in (torch.nn.ModuleList(), torch.nn.ModuleList([torch.nn.Conv2d(27, 8, 3)])):
        model = SimpleNamespace(model=SimpleNamespace(diffusion_model=SimpleNamespace(input_blocks=blocks)))
        with pytest.raises(ValueError, match=r"^This MODEL is not an SD-style UNet; "):
            check_model(model)


def test_gpu_benchmark_setup_runs_in_smoke_mode(tmp_path):
    """benchmarks/gpu_pipeline.py needs a GPU; its --smoke mode runs the same setup on the CPU.

    Its ComfyUI base folder goes to the temp folder (here pytest's) and is removed at exit.
    Mutation caught: the benchmark's atexit clean-up removed (a fashion_rag_bench_* folder is left).
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tools.harness import comfy_path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, COMFYUI_PATH=str(comfy_path()), OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    run = subprocess.run([sys.executable, str(repo / "benchmarks" / "gpu_pipeline.py"), "--smoke"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("fashion_rag_bench_"))
    assert not left, f"the benchmark left its temp folder(s) {left} in {tmp_path}"
    for row in ("a) diffusers reference loop", "b) ComfyUI node sampling", "c) FashionRAGInpaint node"):
        assert row in run.stdout


@pytest.mark.parametrize("sampler,scheduler,steps,denoise", [
    ("euler", "normal", 7, 1.0), ("dpm_2", "karras", 5, 1.0), ("uni_pc", "simple", 6, 0.7),
    ("dpmpp_2m", "sgm_uniform", 9, 0.35), ("ddim", "ddim_uniform", 10, 1.0), ("euler", "normal", 4, 0.0),
])
def test_stock_sigmas_are_ksamplers(comfy_runtime, parts, sampler, scheduler, steps, denoise):
    """The inpaint node's stock schedules are exactly KSampler's, with its denoise rule and its
    penultimate-sigma rule (dpm_2, uni_pc), also at denoise 0 and off the step grid (6 x 0.7).
    Mutations caught (when the pack computed them itself): dropping either rule, int() rounding
    changed; now the guard against re-implementing KSampler's schedule."""
    import comfy.samplers

    model = parts[0]
    ours = pack_module(comfy_runtime, "nodes.reference_sampler").stock_sigmas(
        model, sampler, scheduler, steps, denoise)
    theirs = comfy.samplers.KSampler(model, steps=steps, device="cpu", sampler=sampler, scheduler=scheduler,
                                     denoise=denoise, model_options=model.model_options).sigmas
    assert torch.equal(ours, theirs.cpu())


def test_reference_ddim_pair_in_sampler_custom_equals_the_inpaint_node(comfy_runtime, parts):
    """'Fashion-RAG Reference DDIM' (SAMPLER + SIGMAS) in core SamplerCustom, fed by 'Fashion-RAG
    Inpaint Conditioning' and an empty latent, gives the inpaint node's latent: the reference
    sampler is usable outside our node. Mutations caught: the pair losing the unit-noise start or
    the last step to alpha_bar_0 (both change the latent by > 1e-3)."""
    import nodes as comfy_nodes

    model, vae, inpaint = parts
    image, mask, pose, pos, neg = inputs()
    steps, seed = 6, 11
    with torch.inference_mode():
        want, _ = inpaint.FashionRAGInpaint.execute(
            model, pos, neg, vae, image, mask, seed=seed, steps=steps, cfg=7.5,
            sampler_name="fashion_rag_ddim", scheduler="normal", denoise=1.0, paste_back=False, pose=pose)
        p, n, _ = inpaint.FashionRAGInpaintConditioning.execute(pos, neg, vae, image, mask, pose=pose)
        sampler, sigmas = inpaint.FashionRAGReferenceDDIM.execute(model, steps, 1.0)
        empty = {"samples": torch.zeros(1, 4, H // 8, W // 8)}
        custom = comfy_nodes.NODE_CLASS_MAPPINGS["SamplerCustom"]  # a V3 node on 0.3.75 and 0.33
        got = custom.execute(model, True, seed, 7.5, p, n, sampler, sigmas, empty).result[0]["samples"]
    assert rel(got, want["samples"]) < 1e-6


def test_a_batch_of_people_keeps_a_noise_each_and_its_own_noise_mask(parts):
    """Two people with a prompt each through Inpaint Conditioning: no batch_index (KSampler then
    draws a noise per item, as for any batch; only candidates share one), and with noise_mask each
    person's own binarised mask (the second one 0.7 in a block elsewhere, 0.3 around it).
    Mutations caught: batch_index set for every batch of more than one (both people got item 0's
    noise); the noise mask of the first image only."""
    _, vae, inpaint = parts
    image, mask, pose, pos, neg = inputs()
    other = torch.full_like(mask, 0.3)
    other[:, 20:44, 4:20] = 0.7
    two = [[torch.cat([pos[0][0], torch.randn_like(pos[0][0])]), {}]]
    with torch.inference_mode():
        p, _, latent = inpaint.FashionRAGInpaintConditioning.execute(
            two, neg, vae, torch.cat([image, image.flip(2)]), torch.cat([mask, other]), pose=pose,
            noise_mask=True)
    assert "batch_index" not in latent and latent["samples"].shape[0] == 2
    want = torch.zeros(2, 1, H, W)
    want[0, 0, 12:52, 8:40] = 1.0
    want[0, 0, 0:8, 0:16] = want[0, 0, 0:8, 32:48] = 1.0  # 0.5 and 0.51 repaint, 0.49 keeps
    want[1, 0, 20:44, 4:20] = 1.0
    assert torch.equal(latent["noise_mask"], want)
    assert torch.equal(_concat(p)[:, :1], want[:, :, ::8, ::8])  # nearest: each cell's top-left pixel


def test_candidates_without_a_pose_get_zero_pose_channels_each(parts):
    """Three prompts (one per garment), one person and no pose: both branches' channels are
    [3, 23, 8, 6], the same person three times, the pose channels zero.
    Mutation caught: the zero pose built for a batch of one (torch.cat refused 3 + 1 items)."""
    _, vae, inpaint = parts
    image, mask, _, pos, neg = inputs()
    three = [[torch.cat([pos[0][0], torch.randn_like(pos[0][0]), pos[0][0]]), {}]]
    with torch.inference_mode():
        p, n, latent = inpaint.FashionRAGInpaintConditioning.execute(three, neg, vae, image, mask)
    cp, cn = _concat(p), _concat(n)
    assert cp.shape == cn.shape == (3, 23, H // 8, W // 8)
    assert not cp[:, 5:].any() and not cn[:, 5:].any()
    assert torch.equal(cp[1], cp[0]) and torch.equal(cp[2], cp[0]) and torch.equal(cn, cp)
    assert latent["batch_index"] == [0, 0, 0]


def test_a_vae_of_another_downscale_is_refused(comfy_runtime, parts):
    """A VAE that downsamples 4x (three encoder levels, not SD's four): 4 latent channels but a
    16x12 latent for the 64x48 image, refused with the shape and the remedy rather than a raw
    torch.cat size error. Mutation caught: the latent's spatial check dropped (only the channel
    count checked)."""
    import comfy.sd
    from diffusers import AutoencoderKL
    from test_inpaint_parity import VAE_CONFIG

    _, _, inpaint = parts
    image, mask, pose, pos, neg = inputs()
    dvae = AutoencoderKL(**{**VAE_CONFIG, "block_out_channels": (32, 32, 32),
                            "down_block_types": ("DownEncoderBlock2D",) * 3,
                            "up_block_types": ("UpDecoderBlock2D",) * 3})
    config = {"params": {"embed_dim": 4, "ddconfig": {
        "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}}
    vae4 = comfy.sd.VAE(sd={k: v.clone() for k, v in dvae.state_dict().items()}, config=config)
    with pytest.raises(ValueError, match=r"^The VAE gave latents of shape \(1, 4, 16, 12\); the Fashion-RAG "
                                         r"UNet needs 4x8x6: use the SD2 \(SD1.x-family\) VAE\.$"), \
            torch.inference_mode():
        inpaint.FashionRAGInpaintConditioning.execute(pos, neg, vae4, image, mask, pose=pose)
