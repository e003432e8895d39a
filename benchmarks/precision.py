"""Half precision on the CPU: the templates in a real ComfyUI at each precision, against fp32.

    python benchmarks/precision.py --sizes smoke     # tiny configs, the CI test (seconds)
    python benchmarks/precision.py --sizes demo      # the demo models (tools/demo/weights.py)
    python benchmarks/precision.py --sizes full      # full-size random weights (~10 GB RAM, minutes)

The example workflow, the outfit template and the best-of-N template (the score node) run in a
ComfyUI process of their own per precision (benchmarks/precision_pack.py; --sizes smoke runs every
precision in one process, its flags parsed anew and every model reloaded between two), ComfyUI's
flags choosing how each model stores its weights and computes:

  fp32          --fp32-unet --fp32-vae: the baseline, every model computed in fp32. The text encoder
                and CLIP vision keep ComfyUI's fp16 storage: their files are fp16 here, so that holds
                their exact values (--fp32-text-enc gives the same result for 1.84 GiB more at full
                size: benchmarks/memory.py, test_benchmark_memory.py)
  fp16-storage  --fp16-unet --fp16-text-enc --fp32-vae: the UNet, the text encoder and CLIP vision
                stored in fp16 and computed in fp32 (ComfyUI's manual cast, as it runs them on a
                CPU); the VAE and the adapter (plain torch) in fp32
  bf16          --bf16-unet --bf16-vae --bf16-text-enc on a device that computes in bf16: the UNet,
                the VAE and the adapter compute in bf16; the text encoder and CLIP vision are stored
                in bf16 and computed in fp32 (ComfyUI casts their layers to the fp32 input everywhere)
  bf16-unet     --bf16-unet --bf16-text-enc --fp32-vae on a device that computes in bf16: as bf16,
                with the VAE stored and computed in fp32 (ComfyUI's own choice on GPUs without
                bf16 VAE support, and the --fp32-vae a user sets against bf16 VAE artifacts)
  fp16          --fp16-unet --fp16-text-enc --fp32-vae on a device that computes in fp16 (a GPU's
                default): the UNet and the adapter compute in fp16. The CPU's fp16 convolutions are
                ~100x slower than fp32, so this mode is for --sizes smoke; benchmarks/gpu_check.sh
                measures it on a GPU.

"A device that computes in bf16/fp16" is ComfyUI's capability query answering yes for the CPU
(precision_pack.emulate_half_device): on a CPU, ComfyUI would otherwise compute the UNet in fp32
whatever it stores. Every mode runs the same seeds; each stage's output is compared with fp32's:
relative error ||x - x_fp32|| / ||x_fp32|| of the conditionings, the inpaint channels, the final
latent and image, and the scores; the retrieved garments and the score ranking must be the same.
The dtypes each model stored and computed in are read from the run (a forward hook on every
Linear and Conv layer). `--json` keeps the summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from memory import prepare_base, run_process  # noqa: E402
from memory_common import write_json  # noqa: E402
from memory_models import FULL_SIZES, SMOKE_SIZES, files_for, generate  # noqa: E402

from tools.harness import comfy_path, make_base_dir  # noqa: E402

COMFY_FLAGS = ["--cpu", "--use-pytorch-cross-attention"]
TEMPLATES = ("fashion_rag_text_to_tryon", "fashion_rag_outfit", "fashion_rag_best_of_n")
BASELINE = "fp32"


@dataclass(frozen=True)
class Mode:
    flags: tuple[str, ...]
    emulate: str | None  # a device computing in this dtype (precision_pack.emulate_half_device)


MODES = {
    "fp32": Mode(("--fp32-unet", "--fp32-vae"), None),
    "fp16-storage": Mode(("--fp16-unet", "--fp16-text-enc", "--fp32-vae"), None),
    "bf16": Mode(("--bf16-unet", "--bf16-vae", "--bf16-text-enc"), "bf16"),
    "bf16-unet": Mode(("--bf16-unet", "--bf16-text-enc", "--fp32-vae"), "bf16"),
    "fp16": Mode(("--fp16-unet", "--fp16-text-enc", "--fp32-vae"), "fp16"),
}
# Stages in pipeline order, as precision_pack names them.
STAGES = ("conditioning", "negative conditioning", "channels", "negative channels", "latent", "image",
          "scores")


def prepare(sizes_name: str, out: Path, cache: Path | None) -> tuple[dict, dict | None, dict]:
    """The ComfyUI base folder of the runs: (the loaders' file names, smoke spec, sizes info)."""
    base = out / "comfy_base"
    if sizes_name == "demo":
        from tools.demo.person import install_demo_person
        from tools.demo.weights import install_demo_models

        make_base_dir(base)
        install_demo_models(base / "models")
        install_demo_person(base / "input")
        return {}, None, {"sizes": "demo models (tools/demo/weights.py)"}
    sizes = SMOKE_SIZES if sizes_name == "smoke" else FULL_SIZES
    sys.path.insert(0, str(comfy_path()))  # the generator writes LDM VAE keys with ComfyUI's converter
    files = generate(sizes, files_for(sizes, cache))
    names = prepare_base(base, files, sizes, files.unet)
    smoke = None
    if sizes.base_unet is None:
        smoke = {"clip_vae": str(files.clip_vae), "clip_vision": str(files.clip_vision),
                 "vision_json": str(files.clip_vision_json), "vae": sizes.comfy_vae_config(),
                 "text": {**sizes.text, "num_hidden_layers": sizes.text_layers}}
    loaders = {"FashionRAGAdapterLoader": names["fashion_rag/adapter"],
               "FashionRAGUNetLoader": names["fashion_rag/unet"],
               "FashionRAGCheckpointCLIPVAELoader": names.get("checkpoints"),
               "FashionRAGCLIPVisionLoader": names.get("clip_vision")}
    return loaders, smoke, {"sizes": sizes.name}


def wait_for_memory(gib: float) -> None:
    """Wait until the machine has `gib` GiB available (a shared machine: the full-size runs take
    8-10 GiB each, and the kernel kills the largest process when memory runs out)."""
    while True:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        available = int(info["MemAvailable"].split()[0]) / 2**20
        if available >= gib:
            return
        print(f"[precision] {available:.1f} GiB available, waiting for {gib:g}", flush=True)
        time.sleep(30)


def relative(a: Any, b: Any) -> float:
    """||a - b|| / ||b|| in float64 (0 when both are 0)."""
    a, b = a.double(), b.double()
    norm = float(b.norm())
    return float((a - b).norm()) / norm if norm else float((a - b).norm())


def compare(run: Path, ref: Path) -> dict[str, Any]:
    """One mode's run against the baseline's: per stage key the relative error, and what must be equal."""
    from safetensors.torch import load_file

    got, want = load_file(str(run / "stages.safetensors")), load_file(str(ref / "stages.safetensors"))
    mine, base = (json.loads((d / "result.json").read_text()) for d in (run, ref))
    if set(got) != set(want):
        raise RuntimeError(f"{run.name}: stages {sorted(set(got) ^ set(want))} in one run only")
    same_ids = all(mine["templates"][t]["ids"] == base["templates"][t]["ids"] for t in base["templates"])
    same_ranking = all(
        [s["index"] for s in mine["templates"][t]["scores"].get(n, [])] == [s["index"] for s in listing]
        for t in base["templates"] for n, listing in base["templates"][t]["scores"].items())
    score_points = max((float((got[k] - want[k]).abs().max()) for k in want if k.endswith("/scores")),
                       default=0.0)
    return {"errors": {k: relative(got[k], want[k]) for k in sorted(want)},
            "finite": all(mine["finite"].values()), "same_ids": same_ids, "same_ranking": same_ranking,
            "score_points": score_points,
            "dtypes": mine["dtypes"], "seconds": {t: r["seconds"] for t, r in mine["templates"].items()}}


def worst(errors: dict[str, float], template: str, stage: str) -> float | None:
    """The largest error of `stage` in `template` (several nodes: the outfit's two passes)."""
    found = [e for k, e in errors.items() if k.startswith(f"{template}/") and k.split("/", 2)[2] == stage]
    return max(found) if found else None


def table(results: dict[str, dict[str, Any]], templates: list[str]) -> str:
    modes = list(results)
    rows = ["| template | stage | " + " | ".join(modes) + " |", "|---|---|" + "---|" * len(modes)]
    for template in templates:
        for stage in STAGES:
            cells = [worst(results[m]["errors"], template, stage) for m in modes]
            if all(c is None for c in cells):
                continue
            rows.append(f"| {template.removeprefix('fashion_rag_')} | {stage} | "
                        + " | ".join("" if c is None else f"{c:.1e}" for c in cells) + " |")

    def row(name: str, cell: Any) -> None:
        rows.append(f"| all | {name} | " + " | ".join(cell(results[m]) for m in modes) + " |")

    row("outputs finite", lambda r: "yes" if r["finite"] else "NO")
    row("retrieved garments as fp32", lambda r: "same" if r["same_ids"] else "DIFFER")
    row("score ranking as fp32", lambda r: "same" if r["same_ranking"] else "DIFFERS")
    row("scores, largest difference (points of 100)", lambda r: f"{r['score_points']:.2g}")
    models = sorted({name for r in results.values() for name in r["dtypes"]})
    def dtypes(r: dict, name: str) -> str:
        d = r["dtypes"].get(name)
        return f"{d['stored']} / {', '.join(d['computed']) or '-'}" if d else ""

    for name in models:
        row(f"{name}: stored / computed in", lambda r, n=name: dtypes(r, n))
    row("seconds (all templates)", lambda r: f"{sum(r['seconds'].values()):.0f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", choices=["smoke", "demo", "full"], default="smoke")
    others = [m for m in MODES if m != BASELINE]
    p.add_argument("--modes", default=None, help=f"comma-separated, of {', '.join(others)} "
                                                  "(default: smoke: all but bf16-unet; else all but fp16)")
    p.add_argument("--templates", default=",".join(TEMPLATES), help="comma-separated template names")
    p.add_argument("--steps", type=int, default=2, help="sampling steps of every inpaint node")
    p.add_argument("--person", default=None,
                   help="WxH of the person image (default 96x128 for smoke, the demo's 384x512 otherwise)")
    p.add_argument("--best-of", type=int, default=2, help="images the best-of-N template scores")
    p.add_argument("--cache", type=Path, default=None, help="where model files are generated")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: a new temp folder)")
    p.add_argument("--json", type=Path, default=None, help="also write the summary here")
    p.add_argument("--wait-for-memory", type=float, default=0.0, metavar="GIB",
                   help="start each run only once this many GiB are available (shared machines)")
    a = p.parse_args(argv)

    # The smoke run (the CI test) keeps to the three modes its bounds are written for; fp16 compute
    # is ~100x slower than fp32 on a CPU beyond smoke sizes.
    smoke_modes, other_modes = ["fp16-storage", "bf16", "fp16"], ["fp16-storage", "bf16", "bf16-unet"]
    default_modes = smoke_modes if a.sizes == "smoke" else other_modes
    modes = a.modes.split(",") if a.modes else default_modes
    unknown = [m for m in modes if m not in others]
    if unknown:
        p.error(f"unknown mode(s) {unknown}: choose among {others}")
    templates = a.templates.split(",")
    person = a.person or ("96x128" if a.sizes == "smoke" else None)
    out = a.out or Path(tempfile.mkdtemp(prefix="fashion_rag_precision_"))
    loaders, smoke, info = prepare(a.sizes, out, a.cache)
    threads = 1 if a.sizes == "smoke" else None  # tiny models: one thread is faster on shared cores
    specs = [{"out": str(out / mode), "base": str(out / "comfy_base"), "steps": a.steps, "smoke": smoke,
              "files": loaders, "person": [int(v) for v in person.split("x")] if person else None,
              "best_of": a.best_of, "templates": templates, "emulate": MODES[mode].emulate}
             for mode in [BASELINE, *modes]]
    if a.sizes == "smoke":
        # One ComfyUI process runs every precision in turn (precision_pack's `then`): at smoke
        # sizes its start costs more than the templates. Larger sizes keep a process each, so
        # that no precision's memory or time carries into the next.
        specs[0]["then"] = [{"out": s["out"], "emulate": s["emulate"],
                             "flags": [*COMFY_FLAGS, *MODES[mode].flags]}
                            for s, mode in zip(specs[1:], modes, strict=True)]
        specs = specs[:1]
    for spec, mode in zip(specs, [BASELINE, *modes], strict=False):
        wait_for_memory(a.wait_for_memory)
        print(f"[precision] {', '.join([mode, *(Path(t['out']).name for t in spec.get('then', []))])}: "
              f"{out}", flush=True)
        run_process("precision_pack.py", spec, out / mode, ["--", *COMFY_FLAGS, *MODES[mode].flags], threads)
    results = {m: compare(out / m, out / BASELINE) for m in modes}
    print(f"\nrelative error against {BASELINE} ({info['sizes']}, {a.steps} steps, "
          f"person {person or '384x512'}):")
    print(table({BASELINE: compare(out / BASELINE, out / BASELINE), **results}, templates))
    if a.json:
        write_json(a.json, {"modes": results, "steps": a.steps, "person": person, **info})
    return 0


if __name__ == "__main__":
    sys.exit(main())
