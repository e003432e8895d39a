"""Parity of FashionRAGInpaint with the reference's diffusers denoising loop.

Same random weights on both sides (a tiny 27-channel UNet2DConditionModel and a tiny
AutoencoderKL, fp32, CPU): the reference side is written with diffusers' DDIMScheduler configured
as SD2-inpainting's scheduler, CFG 7.5 with a zero pose in the unconditional branch; our side is
the node inside real ComfyUI (its ModelPatcher, CFGGuider, sample_custom, VAE).

Helpers here are shared with test_nodes_inpaint.py.
"""

from __future__ import annotations

import importlib
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from fashion_rag.inpaint.unet_layout import UNetLayout
from tiny_models import TINY_UNET as TINY

H, W = 64, 48  # pixels (a 3:4 portrait like the reference's 512x384), latent 8x6
CTX_TOKENS = 7
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 32, 32),
    layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
)
# The same autoencoder in ComfyUI's (LDM) terms.
COMFY_VAE_CONFIG = {"params": {"embed_dim": 4, "ddconfig": {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}}
SCHEDULER_CONFIG = dict(  # stable-diffusion-2-inpainting's scheduler, as the reference loads it
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False, clip_sample=False,
    prediction_type="epsilon",
)


pytestmark = pytest.mark.usefixtures("one_thread")


def randomize(module: torch.nn.Module, seed: int, gain: float = 1.0) -> torch.nn.Module:
    """Seeded weights that keep activations O(1) (diffusers zero-inits some layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * gain / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return module.eval()


def tiny_unet(layout: UNetLayout = TINY, seed: int = 0):
    from diffusers import UNet2DConditionModel

    return randomize(UNet2DConditionModel(**layout.diffusers_config()), seed)


def tiny_vaes(seed: int = 1):
    """(diffusers AutoencoderKL, comfy.sd.VAE) with the same weights."""
    import comfy.sd
    from diffusers import AutoencoderKL

    dvae = randomize(AutoencoderKL(**VAE_CONFIG), seed, gain=0.5)
    sd = {k: v.clone() for k, v in dvae.state_dict().items()}
    return dvae, comfy.sd.VAE(sd=sd, config=COMFY_VAE_CONFIG)


def pack_module(comfy, name: str):
    """A module of the pack as ComfyUI imported it (relative imports need the package)."""
    return importlib.import_module(f"{comfy.pack.__name__}.{name}")


def load_tiny_model(comfy, unet, tmp_path):
    """Our loader's MODEL from the diffusers UNet saved as the reference does (.pth)."""
    path = tmp_path / "unet_tiny.pth"
    torch.save(unet.state_dict(), path)
    return pack_module(comfy, "nodes.unet_loader").load_unet(str(path))


def inputs(seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, H, W, 3, generator=g)
    mask = torch.zeros(1, H, W)
    mask[:, 12:52, 8:40] = 1.0
    # Whole latent cells at the binarisation threshold (>= 0.5 repaints): 0.5 and 0.51 repaint,
    # 0.49 keeps, in the latent mask and in the masked image alike.
    mask[:, 0:8, 0:16] = 0.5
    mask[:, 0:8, 16:32] = 0.49
    mask[:, 0:8, 32:48] = 0.51
    pose = torch.rand(1, 18, H, W, generator=g)
    pos = torch.randn(1, CTX_TOKENS, TINY.cross_attention_dim, generator=g)
    neg = torch.randn(1, CTX_TOKENS, TINY.cross_attention_dim, generator=g)
    return image, mask, pose, [[pos, {}]], [[neg, {}]]


def reference_inpaint(unet, dvae, image, mask, pose, pos, neg, noise, steps=50, cfg=7.5, denoise=1.0):
    """The reference's loop (pipes/rag_pipe.py) on diffusers' models, from unit noise; denoise < 1
    as diffusers' inpainting pipeline runs strength < 1: its own get_timesteps keeps the last
    int(steps x strength) steps, starting from add_noise(the photo's latent, noise, first t)."""
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline

    sched = DDIMScheduler.from_config(SCHEDULER_CONFIG)
    sched.set_timesteps(steps)
    timesteps = sched.timesteps
    if denoise < 1.0:
        timesteps, _ = StableDiffusionInpaintPipeline.get_timesteps(SimpleNamespace(scheduler=sched), steps,
                                                                    denoise, "cpu")
    m = (mask[:, None] >= 0.5).float()
    pixels = image.movedim(-1, 1) * 2 - 1
    h, w = noise.shape[-2:]
    with torch.no_grad():
        # The reference samples the posterior; ComfyUI's VAE encode takes its mode.
        masked = dvae.encode(pixels * (m < 0.5)).latent_dist.mode() * 0.18215
        mask_lat = F.interpolate(m, size=(h, w))
        pose_lat = F.interpolate(pose, size=(h, w), mode="bilinear")
        pose_lat = torch.cat([torch.zeros_like(pose_lat), pose_lat])
        context = torch.cat([neg, pos])
        x = noise * sched.init_noise_sigma
        if denoise < 1.0:
            photo = dvae.encode(pixels).latent_dist.mode() * 0.18215
            x = sched.add_noise(photo, noise, timesteps[:1])
        for t in timesteps:
            inp = sched.scale_model_input(torch.cat([x] * 2), t)
            inp = torch.cat([inp, torch.cat([mask_lat] * 2), torch.cat([masked] * 2), pose_lat], 1)
            eps_u, eps_c = unet(inp, t, encoder_hidden_states=context).sample.chunk(2)
            x = sched.step(eps_u + cfg * (eps_c - eps_u), t, x).prev_sample
        decoded = (dvae.decode(x / 0.18215).sample / 2 + 0.5).clamp(0, 1).movedim(1, -1)
    return x, decoded


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def setup(comfy_runtime, tmp_path_factory):
    unet = tiny_unet()
    dvae, cvae = tiny_vaes()
    model = load_tiny_model(comfy_runtime, unet, tmp_path_factory.mktemp("parity"))
    return unet, dvae, cvae, model


SEED = 3


@pytest.fixture(scope="module")
def reference(setup):
    unet, dvae, _, _ = setup
    image, mask, pose, pos, neg = inputs()
    # ComfyUI's noise for SEED (comfy.sample.prepare_noise: CPU randn over the latent shape).
    noise = torch.randn(1, 4, H // 8, W // 8, generator=torch.manual_seed(SEED))
    return reference_inpaint(unet, dvae, image, mask, pose, pos[0][0], neg[0][0], noise)


def run_node(comfy, setup, sampler_name: str, scheduler: str, **kw):
    _, _, cvae, model = setup
    node = pack_module(comfy, "nodes.inpaint").FashionRAGInpaint
    image, mask, pose, pos, neg = inputs()
    args = dict(seed=SEED, steps=50, cfg=7.5, sampler_name=sampler_name, scheduler=scheduler,
                denoise=1.0, paste_back=False, pose=pose) | kw
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        return node.execute(model, pos, neg, cvae, image, mask, **args)


def _errors(comfy, setup, reference, sampler_name: str, scheduler: str) -> tuple[float, float]:
    out = run_node(comfy, setup, sampler_name, scheduler)
    latent = out[0]["samples"] * 0.18215  # LATENT holds unscaled VAE latents
    return rel(latent, reference[0]), rel(out[1], reference[1])


def test_reference_ddim_matches_diffusers_loop(comfy_runtime, setup, reference):
    """The whole node (binarised mask, masked latent, pose, CFG, 50 reference DDIM steps, decode)
    == the reference loop, to 1e-5 (measured ~1e-6: float32 rounding only).

    Mutations caught (each tried once): the last DDIM step to sigma 0 instead of alpha_bar_0
    (reference_ddim_sigmas; ~1e-3 off, which the former 1e-3 bound let pass); the mask binarised
    with > 0.5 instead of >= 0.5, or not binarised (the 0.5 / 0.49 cells of inputs()).
    """
    err_latent, err_image = _errors(comfy_runtime, setup, reference, "fashion_rag_ddim", "normal")
    print(f"\nfashion_rag_ddim vs reference: latent rel {err_latent:.2e}, image rel {err_image:.2e}")
    assert err_latent < 1e-5
    assert err_image < 1e-5


def test_stock_ddim_differs_from_reference(comfy_runtime, setup, reference):
    """ComfyUI's ddim + ddim_uniform: same timesteps, but noise * sigma_981 start and an x0 end
    (vs unit DDPM noise and the alpha_bar_0 landing): measurably off, hence our default."""
    stock, stock_image = _errors(comfy_runtime, setup, reference, "ddim", "ddim_uniform")
    print(f"\nstock ddim+ddim_uniform vs reference: latent rel {stock:.2e}, image rel {stock_image:.2e}")
    assert stock > 1e-3  # 100x the reference-exact sampler's error
    assert stock < 0.1  # same sampler family: close, not equal


# denoise < 1 where steps x denoise is not whole: 7 x 0.37 = 2.59, diffusers keeps 2 steps.
PARTIAL_STEPS, PARTIAL_DENOISE = 7, 0.37


@pytest.fixture(scope="module")
def partial_reference(setup):
    unet, dvae, _, _ = setup
    image, mask, pose, pos, neg = inputs()
    noise = torch.randn(1, 4, H // 8, W // 8, generator=torch.manual_seed(SEED))
    return reference_inpaint(unet, dvae, image, mask, pose, pos[0][0], neg[0][0], noise, steps=PARTIAL_STEPS,
                             denoise=PARTIAL_DENOISE)


def test_partial_denoise_matches_diffusers_strength(comfy_runtime, setup, partial_reference):
    """fashion_rag_ddim at denoise 0.37 with 7 steps == diffusers' strength-0.37 inpainting loop
    (2 steps from the noised photo latent). Mutations caught: denoise ignored in
    reference_sigmas; the zero latent kept below full denoise (nodes/inpaint.py); round()
    instead of int() for the kept steps (failed: yes, each)."""
    partial = dict(steps=PARTIAL_STEPS, denoise=PARTIAL_DENOISE)
    out = run_node(comfy_runtime, setup, "fashion_rag_ddim", "normal", **partial)
    err = rel(out[0]["samples"] * 0.18215, partial_reference[0])
    print(f"\nfashion_rag_ddim, denoise {PARTIAL_DENOISE} x {PARTIAL_STEPS}: latent rel {err:.2e}")
    assert err < 1e-5
    assert rel(out[1], partial_reference[1]) < 1e-5
    # The setting matters here: the full-denoise run of the same seed is far from it.
    full = run_node(comfy_runtime, setup, "fashion_rag_ddim", "normal", steps=PARTIAL_STEPS)
    assert rel(full[0]["samples"] * 0.18215, partial_reference[0]) > 1e-2


def test_reference_ddim_node_in_sampler_custom_at_partial_denoise(comfy_runtime, setup, partial_reference):
    """'Fashion-RAG Reference DDIM' (denoise 0.37, 7 steps) in core SamplerCustom on the photo's
    latent (VAE Encode), fed by 'Fashion-RAG Inpaint Conditioning' == diffusers' strength loop.
    Mutations caught: the unit-noise start kept below full denoise (unit_noise_start=True);
    denoise ignored in reference_sigmas (failed: yes, each)."""
    import nodes as comfy_nodes

    _, _, cvae, model = setup
    image, mask, pose, pos, neg = inputs()
    node = pack_module(comfy_runtime, "nodes.inpaint_conditioning").FashionRAGInpaintConditioning
    ddim_node = pack_module(comfy_runtime, "nodes.reference_sampler").FashionRAGReferenceDDIM
    with torch.inference_mode():
        p, n, latent = node.execute(pos, neg, cvae, image, mask, pose=pose)
        sampler, sigmas = ddim_node.execute(model, PARTIAL_STEPS, PARTIAL_DENOISE)
        assert len(sigmas) == 3  # 2 steps
        custom = comfy_nodes.NODE_CLASS_MAPPINGS["SamplerCustom"]
        got = custom.execute(model, True, SEED, 7.5, p, n, sampler, sigmas, latent).result[0]["samples"]
    err = rel(got * 0.18215, partial_reference[0])
    print(f"\nReference DDIM + SamplerCustom, {PARTIAL_DENOISE} x {PARTIAL_STEPS}: latent rel {err:.2e}")
    assert err < 1e-5
