"""How much of bf16's error belongs to bf16 itself: the reference's loop vs the pack, fp32 and bf16.

    python benchmarks/bf16_floor.py                 # the full-size UNet of benchmarks/precision.py
    python benchmarks/bf16_floor.py --smoke         # a narrow UNet of the same architecture (seconds)

The same 27-channel UNet weights and the same inputs (mask, masked latent, pose, prompt embeddings,
noise) go through two independent implementations, each once in fp32 and once in bf16:
  reference  diffusers' UNet2DConditionModel and DDIMScheduler, configured as the reference's
             pipeline (leading timesteps, offset 1, CFG with a zero pose in the unconditional half);
             bf16 = the model and the latents in bf16, as a diffusers pipeline loaded in bf16 runs;
  pack       the pack's MODEL (nodes/unet_loader.build_model) sampled by ComfyUI's sample_custom
             with the pack's reference DDIM; bf16 = weights stored and computed in bf16 (ComfyUI
             taking the CPU for a bf16 device: half_device.emulate_half_device).
It prints the relative error ||x - x_fp32|| / ||x_fp32|| of each final latent against its own fp32
run, and of the pack against the reference in each precision. If the reference's bf16 error is as
large as the pack's, the pack adds nothing to it: the error is bf16's rounding through the UNet.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from gpu_pipeline import TINY, reference_loop, start_comfy  # noqa: E402
from half_device import emulate_half_device  # noqa: E402
from memory_models import FULL_SIZES, files_for  # noqa: E402

from fashion_rag.inpaint.unet_layout import FULL, UNetLayout, diffusers_to_ldm  # noqa: E402

CFG = 7.5


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a narrow UNet with random weights (seconds)")
    p.add_argument("--cache", type=Path, default=None,
                   help="benchmarks/precision.py's model cache (default: its default); its full-size "
                        "UNet file is used, generated there first if missing")
    p.add_argument("--steps", type=int, default=2, help="sampling steps (2, as the precision benchmark)")
    p.add_argument("--person", default="384x512", help="WxH in pixels (384x512)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args(argv)
    width, height = (int(v) for v in a.person.lower().split("x"))
    lh, lw = height // 8, width // 8

    from diffusers import UNet2DConditionModel

    layout: UNetLayout = TINY if a.smoke else FULL
    if a.smoke:
        torch.manual_seed(0)
        state = UNet2DConditionModel(**layout.diffusers_config()).state_dict()
    else:
        from memory_models import generate

        files = generate(FULL_SIZES, files_for(FULL_SIZES, a.cache))
        state = torch.load(files.unet, map_location="cpu", weights_only=True, mmap=True)

    pack = start_comfy(cpu=True)
    emulate_half_device("bf16")  # after ComfyUI's flags, before any model is built
    import importlib

    import comfy.sample
    import node_helpers

    loader = importlib.import_module(f"{pack.__name__}.nodes.unet_loader")
    reference = importlib.import_module(f"{pack.__name__}.nodes.reference_sampler")

    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(1, 1, lh, lw)
    mask[..., lh // 8: -lh // 8, lw // 6: -lw // 6] = 1
    masked = torch.randn(1, 4, lh, lw, generator=g) * (1 - mask)
    pose = torch.rand(1, 18, lh, lw, generator=g)
    text = torch.randn(2, 77, layout.cross_attention_dim, generator=g)  # [negative, positive]
    latent = torch.zeros(1, 4, lh, lw)
    noise = comfy.sample.prepare_noise(latent, 0)  # ComfyUI's noise for seed 0: both sides start here
    concat_pos = torch.cat([mask, masked, pose], 1)
    concat_neg = torch.cat([mask, masked, torch.zeros_like(pose)], 1)
    positive = node_helpers.conditioning_set_values([[text[1:], {}]], {"noise_concat": concat_pos})
    negative = node_helpers.conditioning_set_values([[text[:1], {}]], {"noise_concat": concat_neg})

    finals: dict[tuple[str, str], torch.Tensor] = {}
    with torch.inference_mode():
        unet = UNet2DConditionModel(**layout.diffusers_config()).eval()
        unet.load_state_dict(state)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            unet.to(dtype)
            args = [t.to(dtype) for t in (noise, mask, masked, pose, text)]
            finals["reference", name] = reference_loop(unet, *args, a.steps, CFG).float()
            print(f"[bf16_floor] reference {name} done", flush=True)
        del unet
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            sd = {k: v.to(torch.float32) for k, v in state.items()} if a.smoke else \
                torch.load(files.unet, map_location="cpu", weights_only=True, mmap=True)
            model = loader.build_model(diffusers_to_ldm(sd, layout), layout, dtype)
            sampler, sigmas = reference.sampler_and_sigmas(model, reference.REFERENCE_SAMPLER, "normal",
                                                           a.steps, 1.0)
            out = comfy.sample.sample_custom(model, noise, CFG, sampler, sigmas, positive, negative, latent,
                                             disable_pbar=True, seed=0)
            # ComfyUI hands latents out divided by the VAE's scale factor; the UNet's own are scaled.
            finals["pack", name] = model.model.latent_format.process_in(out).float()
            computed = model.model.manual_cast_dtype or model.model.get_dtype()
            print(f"[bf16_floor] pack {name} done (UNet computes in {computed})", flush=True)
            del model

    figures = {
        "reference bf16 vs reference fp32": rel(finals["reference", "bf16"], finals["reference", "fp32"]),
        "pack bf16 vs pack fp32": rel(finals["pack", "bf16"], finals["pack", "fp32"]),
        "pack fp32 vs reference fp32": rel(finals["pack", "fp32"], finals["reference", "fp32"]),
        "pack bf16 vs reference bf16": rel(finals["pack", "bf16"], finals["reference", "bf16"]),
    }
    size = "smoke (narrow UNet)" if a.smoke else "full size (866M-parameter UNet)"
    print(f"\n{size}, {width}x{height}, {a.steps} steps, CFG {CFG}; final latent, relative error")
    print("| comparison | relative error |\n|---|---|")
    for label, value in figures.items():
        print(f"| {label} | {value:.1e} |")
    if a.json:
        summary = {"size": size, "steps": a.steps, "person": a.person, **figures}
        a.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
