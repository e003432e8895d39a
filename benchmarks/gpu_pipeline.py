"""GPU benchmark: 50-step Fashion-RAG inpainting sampling at 512x384, CFG 7.5, fp16.

Rows (random weights of the real shapes: the 27-channel SD2 UNet, 866M parameters, and the SD VAE):
  a) the reference's loop in diffusers: UNet2DConditionModel + DDIMScheduler (leading, offset 1),
     CFG batch of 2, zero pose in the unconditional half;
  b) our node path in ComfyUI: FashionRAGInpaint's sampling (sample_custom with the
     reference-exact DDIM, our loader's MODEL, ComfyUI's memory manager);
  c) the whole FashionRAGInpaint node (b plus VAE encode of the masked image and decode).
It prints ms per step and peak GPU memory (torch.cuda.max_memory_allocated) per row.

  python benchmarks/gpu_pipeline.py            # needs a CUDA GPU and ComfyUI (COMFYUI_PATH)
  python benchmarks/gpu_pipeline.py --smoke    # tiny models on the CPU: checks the setup code
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import importlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fashion_rag.inpaint.inputs import prepare_inputs  # noqa: E402
from fashion_rag.inpaint.unet_layout import FULL, UNetLayout, diffusers_to_ldm  # noqa: E402
from tools.harness import comfy_path, make_base_dir  # noqa: E402

# --smoke: the same architecture, narrow and two levels deep.
TINY = UNetLayout(block_out_channels=(64, 128), layers_per_block=1, attention_levels=(True, False),
                  cross_attention_dim=64)

SD_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2)
TINY_VAE = dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1)


def start_comfy(cpu: bool):
    """ComfyUI in this process with the pack loaded (on the GPU unless cpu); returns the pack."""
    sys.path.insert(0, str(comfy_path()))
    from comfy.cli_args import args

    args.cpu = cpu
    args.disable_api_nodes = True
    # A throwaway ComfyUI base folder (models, outputs, settings), removed when the process exits.
    base = Path(tempfile.mkdtemp(prefix="fashion_rag_bench_"))
    atexit.register(shutil.rmtree, base, ignore_errors=True)  # unlinks the pack's link, not the pack
    args.base_directory = str(make_base_dir(base))
    # utils.* before `nodes`: importing `nodes` puts comfy/ first on sys.path,
    # after which `utils` is comfy/utils.py.
    import folder_paths  # noqa: F401, I001
    import utils.extra_config  # noqa: F401
    import utils.install_util  # noqa: F401
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    for name, module in sys.modules.items():
        if name.endswith("comfyui_fashion_rag") and hasattr(module, "WEB_DIRECTORY"):
            return module
    raise RuntimeError("ComfyUI did not load the pack (look for IMPORT FAILED above)")


def vae_config(blocks: dict) -> dict:
    n = len(blocks["block_out_channels"])
    return dict(in_channels=3, out_channels=3, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                **blocks)


def comfy_vae_config(blocks: dict) -> dict:
    ch = blocks["block_out_channels"]
    return {"params": {"embed_dim": 4, "ddconfig": {
        "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
        "ch": ch[0], "ch_mult": [c // ch[0] for c in ch], "num_res_blocks": blocks["layers_per_block"],
        "attn_resolutions": [], "dropout": 0.0}}}


class Timer:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            self.peak = float("nan")
        self.seconds = time.perf_counter() - self.start


def reference_loop(unet, x, mask, masked, pose, context, steps: int, cfg: float):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1,
                          set_alpha_to_one=False, clip_sample=False, prediction_type="epsilon")
    sched.set_timesteps(steps)
    pose2 = torch.cat([torch.zeros_like(pose), pose])
    extra = torch.cat([torch.cat([mask] * 2), torch.cat([masked] * 2), pose2], 1)
    for t in sched.timesteps:
        inp = torch.cat([sched.scale_model_input(torch.cat([x] * 2), t), extra], 1)
        eps_u, eps_c = unet(inp, t, encoder_hidden_states=context).sample.chunk(2)
        x = sched.step(eps_u + cfg * (eps_c - eps_u), t, x).prev_sample
    return x


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU (checks the setup only)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 50; smoke 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per row, best kept (default 3)")
    a = p.parse_args(argv)
    if not a.smoke and not torch.cuda.is_available():
        print("No CUDA GPU here: this benchmark times fp16 GPU sampling. Run it on a machine with an "
              "NVIDIA GPU, or pass --smoke to check its setup on the CPU with tiny models.", file=sys.stderr)
        return 2

    layout: UNetLayout = TINY if a.smoke else FULL
    vae_blocks = TINY_VAE if a.smoke else SD_VAE
    height, width = (64, 48) if a.smoke else (512, 384)
    steps = a.steps or (2 if a.smoke else 50)
    repeats = a.repeats or (1 if a.smoke else 3)
    dtype = torch.float32 if a.smoke else torch.float16
    device = torch.device("cpu" if a.smoke else "cuda")
    cfg = 7.5

    pack = start_comfy(cpu=a.smoke)
    loader = importlib.import_module(f"{pack.__name__}.nodes.unet_loader")
    conditioning = importlib.import_module(f"{pack.__name__}.nodes.inpaint_conditioning")
    reference = importlib.import_module(f"{pack.__name__}.nodes.reference_sampler")
    inpaint = importlib.import_module(f"{pack.__name__}.nodes.inpaint")
    import comfy.model_management as mm
    import comfy.sd
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**layout.diffusers_config()).eval()  # diffusers' random init
    vae = AutoencoderKL(**vae_config(vae_blocks)).eval()
    sd = {k: v.to(dtype) for k, v in unet.state_dict().items()}
    model = loader.build_model(diffusers_to_ldm(sd, layout), layout, dtype)
    cvae = comfy.sd.VAE(sd=dict(vae.state_dict()), config=comfy_vae_config(vae_blocks), dtype=dtype)
    unet, vae = unet.to(device, dtype), vae.to(device, dtype)

    g = torch.Generator().manual_seed(1)
    lh, lw = height // 8, width // 8
    image = torch.rand(1, height, width, 3, generator=g)
    mask = torch.zeros(1, height, width)
    mask[:, height // 8: -height // 8, width // 6: -width // 6] = 1
    pose = torch.rand(1, 18, height, width, generator=g)
    text = torch.randn(2, 77, layout.cross_attention_dim, generator=g)
    pos, neg = [[text[1:], {}]], [[text[:1], {}]]

    rows = []
    with torch.inference_mode():
        x = torch.randn(1, 4, lh, lw, generator=g).to(device, dtype)
        m = torch.nn.functional.interpolate(mask[:, None], size=(lh, lw)).to(device, dtype)
        masked = torch.randn(1, 4, lh, lw, generator=g).to(device, dtype)
        pl = torch.nn.functional.interpolate(pose, size=(lh, lw), mode="bilinear").to(device, dtype)
        context = text.to(device, dtype)
        best = None
        for _ in range(repeats + 1):  # first run warms up kernels
            with Timer(device) as t:
                reference_loop(unet, x, m, masked, pl, context, steps, cfg)
            best = t if best is None or t.seconds < best.seconds else best
        rows.append(("a) diffusers reference loop", best))
        unet.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()

        def node_sampling():
            import comfy.sample

            px, mk, ps = prepare_inputs(image, mask, pose)
            positive, negative = conditioning.with_inpaint_channels(pos, neg, cvae, px, mk, ps)
            sampler, sigmas = reference.sampler_and_sigmas(model, reference.REFERENCE_SAMPLER, "normal",
                                                           steps, 1.0)
            latent = torch.zeros(1, 4, lh, lw)
            noise = comfy.sample.prepare_noise(latent, 0)
            t = Timer(device)
            with t:
                comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative,
                                           latent, disable_pbar=True, seed=0)
            return t

        best = None
        for _ in range(repeats + 1):
            t = node_sampling()
            best = t if best is None or t.seconds < best.seconds else best
        rows.append(("b) ComfyUI node sampling (sample_custom)", best))

        best = None
        for _ in range(repeats + 1):
            with Timer(device) as t:
                inpaint.FashionRAGInpaint.execute(
                    model, pos, neg, cvae, image, mask, seed=0, steps=steps, cfg=cfg,
                    sampler_name=reference.REFERENCE_SAMPLER, scheduler="normal", denoise=1.0,
                    paste_back=False, pose=pose)
            best = t if best is None or t.seconds < best.seconds else best
        rows.append(("c) FashionRAGInpaint node (incl. VAE)", best))

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke: tiny models)"
    print(f"\n{name}; {width}x{height}, {steps} steps, CFG {cfg}, {str(dtype).split('.')[-1]}, "
          f"ComfyUI device {mm.get_torch_device()}")
    print(f"{'path':44s} {'ms/step':>10s} {'total s':>9s} {'peak MiB':>10s}")
    for label, t in rows:
        print(f"{label:44s} {1000 * t.seconds / steps:10.1f} {t.seconds:9.2f} {t.peak:10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
