"""Memory and time of the example graph, against an independent diffusers/transformers pipeline.

    python benchmarks/memory.py                 # full size, fp32 on the CPU, 2 steps (~10-16 GB RAM)
    python benchmarks/memory.py --smoke         # tiny configs, seconds (the test suite runs this)

Random weights of the real formats and sizes (benchmarks/memory_models.py, generated once into
~/.cache/fashion-rag/bench/). Each pipeline runs in a process of its own, one after the other:
- the pack: the example workflow (example_workflows/api/) in a real ComfyUI (`--cpu`), once per
  weight storage and attention setting, two prompts each: the second with another text and
  seed, its models warm (benchmarks/memory_pack.py). Weight storage: `fp32` stores every weight
  in fp32 as the reference does (`--fp32-unet --fp32-vae --fp32-text-enc`); `comfy` keeps
  ComfyUI's CPU defaults, which store the text encoder and CLIP vision in fp16 (their files'
  dtype) and compute them in fp32, so their results are the same. Attention: ComfyUI's default
  CPU attention, or `--use-pytorch-cross-attention`;
- the reference: the same models and inputs in diffusers/transformers (benchmarks/memory_reference.py).
Before each run the files it loads are read once, so every run loads from the page cache.
Printed: peak resident memory (VmHWM, file pages of memory-mapped weights included), the
seconds spent loading models, seconds per denoising step, the relative difference of the
final latents, their ratios, and what the second prompt ran. `--json` keeps the raw timelines.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from memory_common import LATENT_SCALE, PROMPTS, GiB, step_seconds, write_json  # noqa: E402
from memory_models import FULL_SIZES, SMOKE_SIZES, Files, Sizes, files_for, generate  # noqa: E402

from tools.harness import comfy_path, make_base_dir  # noqa: E402

COMFY_FLAGS = ["--cpu"]
# How the pack's models store their weights (ComfyUI's flags). Both compute in fp32: ComfyUI runs
# its text encoders and CLIP vision in fp32 whatever they are stored in (casting each layer's
# weights as it runs), and the UNet and VAE on the CPU are fp32 by default.
WEIGHTS = {"fp32": ["--fp32-unet", "--fp32-vae", "--fp32-text-enc"], "comfy": []}
ATTENTION = {"default": [], "pytorch": ["--use-pytorch-cross-attention"]}
# Loader nodes of the example graph that have a counterpart in the reference (the retrieval
# index, node 3, has none: the reference takes the retrieved garments as input).
MODEL_LOADERS = {"1": "text encoder + VAE", "2": "vision", "5": "adapter", "7": "UNet"}


def prepare_base(base: Path, files: Files, sizes: Sizes, unet: Path) -> dict[str, str]:
    """A ComfyUI base folder holding the pack, the demo index and person, and links to the models."""
    from tools.demo.catalog import install_demo_index
    from tools.demo.person import install_demo_person

    make_base_dir(base)
    links = {"fashion_rag/adapter": files.adapter, "fashion_rag/unet": unet}
    if sizes.base_unet is not None:
        links |= {"checkpoints": files.checkpoint, "clip_vision": files.clip_vision}
    names = {}
    for folder, target in links.items():
        link = base / "models" / folder / target.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        names[folder] = target.name
    install_demo_index(base / "models")
    install_demo_person(base / "input")
    return names


# --smoke's person image (w, h): the tiny models run at 12x16 latents instead of the demo's
# 48x64 (what the smoke checks, agreement and caching, holds at any size).
SMOKE_PERSON = [96, 128]


def pack_spec(sizes: Sizes, files: Files, names: dict[str, str], out: Path, base: Path, steps: int) -> dict:
    smoke = None
    if sizes.base_unet is None:
        smoke = {"clip_vae": str(files.clip_vae), "clip_vision": str(files.clip_vision),
                 "vision_json": str(files.clip_vision_json), "vae": sizes.comfy_vae_config(),
                 "text": {**sizes.text, "num_hidden_layers": sizes.text_layers}}
    return {"out": str(out), "base": str(base), "steps": steps, "prompts": len(PROMPTS), "smoke": smoke,
            "person": SMOKE_PERSON if smoke else None,
            "adapter": names["fashion_rag/adapter"], "unet": names["fashion_rag/unet"],
            "checkpoint": names.get("checkpoints"), "clip_vision": names.get("clip_vision")}


def warm_page_cache(*paths: Path) -> None:
    """Read the model files a run loads, so that every run (the first included) loads from the
    page cache: load seconds then compare the loaders, not which run met a cold disk first."""
    for path in paths:
        files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
        for file in files:
            with open(file, "rb") as f:
                while f.read(1 << 24):
                    pass


def pack_dir(out: Path, mode: str) -> Path:
    """The folder of one pack run ("fp32/default" -> pack-fp32-default)."""
    return out / ("pack-" + mode.replace("/", "-"))


def run_process(script: str, spec: dict, out: Path, args: list[str],
                threads: int | None = None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "spec.json"
    write_json(spec_path, spec)
    log = out / "log.txt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:  # tiny models run far faster on one thread when the cores are shared
        env["OMP_NUM_THREADS"] = str(threads)
    with open(log, "wb") as f:
        code = subprocess.run([sys.executable, str(HERE / script), str(spec_path), *args], stdout=f,
                              stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        raise RuntimeError(f"{script} failed (exit {code}); its log, {log}:\n{log.read_text()[-4000:]}")
    return json.loads((out / "result.json").read_text())


def _between(events: list[dict], first: str, last: str, **match: Any) -> list[dict]:
    """Events after the one named `first` (matching `match`) up to the next named `last`."""
    start = next(i for i, e in enumerate(events)
                 if e["what"] == first and all(e.get(k) == v for k, v in match.items()))
    end = next(i for i in range(start + 1, len(events)) if events[i]["what"] == last)
    return events[start:end + 1]


def node_seconds(events: list[dict]) -> dict[str, float]:
    """Each executed node's seconds: from its start to the next node's start (or the prompt's end)."""
    marks = [e for e in events if e["what"] in ("node", "done")]
    return {a["node"]: b["t"] - a["t"] for a, b in zip(marks, marks[1:], strict=False)
            if a["what"] == "node" and a["node"]}


def summarise_pack(result: dict) -> dict[str, Any]:
    ev = result["events"]
    first, second = _between(ev, "prompt", "done", index=0), _between(ev, "prompt", "done", index=1)
    secs = node_seconds(first)
    steps = [e for e in first if e["what"] == "step" and e.get("node") == "11"]
    executed2 = [e["node"] for e in second if e["what"] == "node" and e["node"]]
    cached2 = [n for e in second if e["what"] == "cached" for n in e["nodes"]]
    return {
        "peak": ev[-1]["peak"], "peak_first_prompt": first[-1]["peak"],
        "load": sum(secs.get(n, 0.0) for n in MODEL_LOADERS),
        "load_parts": {MODEL_LOADERS[n]: round(secs.get(n, 0.0), 2) for n in MODEL_LOADERS} | {
            "index (no counterpart)": round(secs.get("3", 0.0), 2)},
        "step": step_seconds([e["t"] for e in steps]), "step_cpu": step_seconds([e["cpu"] for e in steps]),
        "first_prompt": first[-1]["t"] - first[0]["t"], "load_avg": sorted({e["load"] for e in ev}),
        "second_prompt": second[-1]["t"] - second[0]["t"], "second_executed": executed2,
        "second_cached": cached2, "reloads": sorted(set(executed2) & {*MODEL_LOADERS, "3"}),
        "rss_growth_second": second[-1]["rss"] - second[0]["rss"],
        "node_rss": {e["node"]: e["rss"] for e in first if e["what"] == "node" and e["node"]},
        "node_seconds": {k: round(v, 2) for k, v in secs.items()}, "dtypes": result["dtypes"],
    }


def summarise_reference(result: dict) -> dict[str, Any]:
    ev = result["events"]
    loads = [e for e in ev if e["what"] in ("load", "loaded")]
    parts = {a["model"]: round(b["t"] - a["t"], 2) for a, b in zip(loads, loads[1:], strict=False)}
    steps = [e for e in ev if e["what"] == "step"]
    start = next(e for e in ev if e["what"] == "load")
    return {"peak": ev[-1]["peak"], "load": loads[-1]["t"] - loads[0]["t"], "load_parts": parts,
            "step": step_seconds([e["t"] for e in steps]),
            "step_cpu": step_seconds([e["cpu"] for e in steps]),
            "first_prompt": ev[-1]["t"] - start["t"], "load_avg": sorted({e["load"] for e in ev})}


def latent_difference(pack_run: Path, ref_dir: Path) -> float:
    from safetensors.torch import load_file

    ours = load_file(str(pack_run / "tensors.safetensors"))["latent"] * LATENT_SCALE
    ref = load_file(str(ref_dir / "reference.safetensors"))["latent"]
    return float((ours - ref).norm() / ref.norm())


def table(pack: dict[str, dict], ref: dict, diffs: dict[str, float]) -> str:
    def gb(b: float) -> str:
        return f"{b / GiB:.2f} GiB"

    head = " | ".join(f"pack, {w} weights, {m} attention" for w, m in (k.split("/") for k in pack))
    rows = [f"| | {head} | reference | ratios (pack / ref) |", "|---|" + "---|" * (len(pack) + 2)]

    def row(name: str, key: str, fmt: Any) -> None:
        ratios = ", ".join(f"{p[key] / ref[key]:.2f}" for p in pack.values())
        cells = " | ".join(fmt(p[key]) for p in pack.values())
        rows.append(f"| {name} | {cells} | {fmt(ref[key])} | {ratios} |")

    def pack_row(name: str, cells: list[str]) -> None:
        rows.append(f"| {name} | " + " | ".join(cells) + " | | |")

    row("peak process memory (VmHWM)", "peak", gb)
    row("loading the models (s)", "load", lambda s: f"{s:.1f}")
    row("one denoising step (s)", "step", lambda s: f"{s:.2f}")
    row("one denoising step (CPU s)", "step_cpu", lambda s: f"{s:.2f}")
    row("first prompt, load to image (s)", "first_prompt", lambda s: f"{s:.1f}")
    pack_row("final latent, relative difference", [f"{diffs[m]:.1e}" for m in pack])
    pack_row("weights stored as (text encoder, CLIP vision, UNet)", [
        ", ".join(p["dtypes"][k] for k in ("text encoder", "vision", "UNet")) for p in pack.values()])
    pack_row("second prompt (s), models warm", [f"{p['second_prompt']:.1f}" for p in pack.values()])
    pack_row("second prompt: loaders run again", [", ".join(p["reloads"]) or "none" for p in pack.values()])
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny configs (checks the script; seconds)")
    p.add_argument("--attention", choices=["default", "pytorch", "both"], default="both")
    p.add_argument("--weights", choices=["fp32", "comfy", "both"], default="both",
                   help="how the pack stores weights: all fp32 as the reference, or ComfyUI's CPU defaults")
    p.add_argument("--unet", choices=["pth", "fp16"], default="pth",
                   help="the UNet file the graph loads: the .pth, or its convert-unet fp16 safetensors")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--cache", type=Path, default=None, help="where model files are generated (default "
                                                             "~/.cache/fashion-rag/bench)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: a new temp folder)")
    p.add_argument("--json", type=Path, default=None, help="also write the summaries here")
    a = p.parse_args(argv)

    sizes = SMOKE_SIZES if a.smoke else FULL_SIZES
    sys.path.insert(0, str(comfy_path()))  # the generator writes LDM VAE keys with ComfyUI's converter
    files = generate(sizes, files_for(sizes, a.cache))
    unet = files.unet
    if a.unet == "fp16":
        unet = convert_once(files)
    out = a.out or Path(tempfile.mkdtemp(prefix="fashion_rag_memory_"))
    names = prepare_base(out / "comfy_base", files, sizes, unet)
    weights = list(WEIGHTS) if a.weights == "both" else [a.weights]
    attention = list(ATTENTION) if a.attention == "both" else [a.attention]
    modes = [f"{w}/{m}" for w in weights for m in attention]  # "fp32/default", ...
    threads = 1 if a.smoke else None
    pack, diffs = {}, {}

    def flags(mode: str) -> list[str]:
        storage, attn = mode.split("/")
        return [*COMFY_FLAGS, *WEIGHTS[storage], *ATTENTION[attn]]

    # A process per mode, so that each one's load seconds and peak are its own; --smoke checks the
    # script with every mode in one process (memory_pack's `then`: a ComfyUI start costs more
    # than the tiny graph), each mode's models loaded afresh under its own flags.
    groups = [modes] if a.smoke else [[mode] for mode in modes]
    for group in groups:
        run_dir = pack_dir(out, group[0])
        spec = pack_spec(sizes, files, names, run_dir, out / "comfy_base", a.steps)
        spec["then"] = [{"out": str(pack_dir(out, mode)), "flags": flags(mode)} for mode in group[1:]]
        print(f"[bench] pack, {' then '.join(group)} (weights/attention): {run_dir}", flush=True)
        warm_page_cache(unet, files.adapter, files.checkpoint if sizes.base_unet else files.clip_vae,
                        files.clip_vision)
        run_process("memory_pack.py", spec, run_dir, ["--", *flags(group[0])], threads)
        for mode in group:
            pack[mode] = summarise_pack(json.loads((pack_dir(out, mode) / "result.json").read_text()))
    ref_dir = out / "reference"
    ref_spec = {"out": str(ref_dir), "reference": str(files.ref), "adapter_pth": str(files.adapter),
                "unet_pth": str(files.unet), "adapter_config": dataclasses.asdict(sizes.adapter),
                "tokenizer": str(comfy_path() / "comfy" / "sd1_tokenizer"),
                "tensors": str(pack_dir(out, modes[0]) / "tensors.safetensors"),
                "steps": a.steps, "seed": PROMPTS[0][1]}
    print(f"[bench] reference: {ref_dir}", flush=True)
    warm_page_cache(files.ref, files.adapter, files.unet)  # ref/: links to the shared files included
    ref = summarise_reference(run_process("memory_reference.py", ref_spec, ref_dir, [], threads))
    for mode in modes:
        diffs[mode] = latent_difference(pack_dir(out, mode), ref_dir)
    print(table(pack, ref, diffs))
    for mode, s in pack.items():
        print(f"pack ({mode}): model loads {s['load_parts']}; nodes {s['node_seconds']}; second prompt "
              f"ran {s['second_executed']}, cached {s['second_cached']}, "
              f"RSS +{s['rss_growth_second'] / GiB:.2f} GiB")
    print(f"reference: model loads {ref['load_parts']}")
    print("load average during the runs: " + "; ".join(
        f"{name} {r['load_avg'][0]}-{r['load_avg'][-1]}" for name, r in [*pack.items(), ("reference", ref)]))
    if a.json:
        write_json(a.json, {"pack": pack, "reference": ref, "latent_difference": diffs, "sizes": sizes.name})
    return 0


def convert_once(files: Files) -> Path:
    """The fp16 safetensors `python -m fashion_rag convert-unet` makes from the .pth (made once)."""
    if not files.unet_fp16.exists():
        subprocess.run([sys.executable, "-m", "fashion_rag", "convert-unet", str(files.unet),
                        str(files.unet_fp16)], check=True, cwd=HERE.parent)
    return files.unet_fp16


if __name__ == "__main__":
    sys.exit(main())
