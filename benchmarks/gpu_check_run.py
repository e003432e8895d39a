"""One precision of benchmarks/gpu_check.py, in one process: the pack's example graph in a real
ComfyUI, then the independent diffusers/transformers pipeline, on the same device.

    python benchmarks/gpu_check_run.py SPEC.json -- [ComfyUI's flags]

The pack: benchmarks/memory_pack.py's run (the example graph twice through ComfyUI's
PromptExecutor, every node start and sampler step timed, the GPU synchronised at each step).
Then ComfyUI unloads its models (`unload_all_models`) and the independent pipeline
(benchmarks/memory_reference.py) runs on the same device, in SPEC's dtype, on the pack's garments,
person, mask and pose. Written to SPEC's `out`: result.json (timelines, peak GPU memory of each
side, dtypes) and latents.safetensors (both final latents, in the reference's scaling).

SPEC's optional `then` lists more precisions for this process ({"out", "dtype", "emulate",
"flags"}; gpu_check.py --tiny: fp32 after fp16), each after ComfyUI's flags are parsed anew, the
half-device emulation undone, every model unloaded and the pack's caches emptied.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import memory_pack  # noqa: E402
import memory_reference  # noqa: E402
from half_device import undo_half_device  # noqa: E402
from memory_common import LATENT_SCALE, PROMPTS, Timeline, write_json  # noqa: E402

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def _peak_and_reset(device: torch.device) -> int | None:
    """Peak GPU memory allocated since the last reset (bytes), None on the CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    return peak


def independent(spec: dict[str, Any], device: torch.device, tl: Timeline) -> torch.Tensor:
    """The reference pipeline on the pack's first prompt's inputs; its final latent."""
    from safetensors import safe_open

    with safe_open(str(Path(spec["out"]) / "tensors.safetensors"), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        category = f.metadata()["category"]
    tl.mark("start")
    with torch.inference_mode():
        models = memory_reference.load_models(spec["reference_spec"], tl, str(device), DTYPES[spec["dtype"]])
        pos, neg = memory_reference.conditioning(models, tensors["garments"], category)
        latent, image = memory_reference.inpaint(models, tensors, pos, neg, spec["steps"], PROMPTS[0][1], tl)
        memory_reference.synchronize(device)
    tl.mark("done")
    return latent.float().cpu()


def main() -> None:
    spec_path, flags = sys.argv[1], sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    spec = json.loads(Path(spec_path).read_text())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    measure(spec, lambda: memory_pack.run(spec, flags))
    if spec.get("then"):
        import comfy.cli_args
        import execution

        started = dict(vars(comfy.cli_args.args))  # as the flags left them (running changes none)
        for step in spec["then"]:  # --tiny: fp32 after fp16 in this process
            memory_pack.set_flags(started, flags, step["flags"])
            memory_pack.fresh_models()
            undo_half_device()
            current = {**spec, **step}
            measure(current, lambda current=current: memory_pack.run_started(current, execution))


def measure(spec: dict[str, Any], pack_run: Callable[[], dict[str, Any]]) -> None:
    """The pack's run (`pack_run`), then the independent pipeline; written to SPEC's `out`."""
    out = Path(spec["out"])
    device = torch.device(spec["device"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():  # as ComfyUI's prompt worker runs the executor
        pack = pack_run()
    pack_peak = _peak_and_reset(device)

    import comfy.model_management as mm

    mm.unload_all_models()  # the pack's models go back to the CPU: the device is the reference's
    mm.soft_empty_cache()
    gc.collect()
    left = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tl = Timeline()
    ref_latent = independent(spec, device, tl)
    ref_peak = _peak_and_reset(device)

    pack_latent = load_file(str(out / "tensors.safetensors"))["latent"].float() * LATENT_SCALE
    save_file({"pack": pack_latent.contiguous(), "independent": ref_latent.contiguous()},
              str(out / "latents.safetensors"))
    write_json(out / "result.json", {
        "pack": pack, "independent": tl.events, "pack_peak": pack_peak, "independent_peak": ref_peak,
        "left_after_unload": left, "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda" else "CPU", "torch": torch.__version__})


if __name__ == "__main__":
    main()
