"""The GPU check: the example graph in fp16 through the pack's nodes and the independent
diffusers pipeline, against fp32, and the index query; one table. Run by benchmarks/gpu_check.sh.

    python benchmarks/gpu_check.py             # a CUDA GPU: full size, 50 steps (minutes)
    python benchmarks/gpu_check.py --tiny      # any CPU: tiny configs, 2 steps (the CI test)

1. Random weights of the real formats and sizes (benchmarks/memory_models.py; --tiny: tiny
   configs of the same architectures), written once into --cache.
2. fp16, one process (benchmarks/gpu_check_run.py): the example graph in a real ComfyUI (its GPU
   defaults with `--fp16-unet`: the UNet and the adapter compute in fp16, the text encoder and CLIP
   vision are stored in fp16, the VAE in what ComfyUI picks), its first image timed from a cold
   start (models from the page cache), then the independent pipeline (memory_reference.py) in
   fp16 on the same GPU; peak GPU memory of each.
3. fp32, one process: the same with `--fp32-unet --fp32-vae --fp32-text-enc` and an fp32 reference
   (--tiny: in the fp16 run's process, its flags parsed anew and every model reloaded).
4. The index query: the library's ranking path (faiss-cpu, one thread) on synthetic 768-d
   embeddings (benchmarks/retrieval.py), and a flat index on the GPU where faiss has GPU support.

--tiny on a CPU takes the CPU for a device computing in fp16 (benchmarks/half_device.py), so the
fp16 code paths run as on a GPU; figures at that size only show that the script works.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from memory import prepare_base, run_process, warm_page_cache  # noqa: E402
from memory_common import GiB, step_seconds, write_json  # noqa: E402
from memory_models import FULL_SIZES, SMOKE_SIZES, files_for, generate  # noqa: E402

from tools.harness import comfy_path  # noqa: E402

FLAGS = {"fp16": ["--fp16-unet"], "fp32": ["--fp32-unet", "--fp32-vae", "--fp32-text-enc"]}
TINY_PERSON = [48, 64]  # the CPU's fp16 convolutions are ~100x slower than fp32: a 6x8 latent
EXIT_NO_GPU = 2
# The example graph's index loader and retrieve node (memory_pack.graph edits them by these ids).
RETRIEVAL_NODES = ("3", "4")


def relative(a: Any, b: Any) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def run_precisions(precisions: list[str], files: Any, sizes: Any, names: dict, out: Path, steps: int,
                   device: str, tiny: bool) -> list[dict[str, Any]]:
    """`precisions` one after the other in one process of gpu_check_run.py (its `then`); their summaries."""
    specs = [precision_spec(p, files, sizes, names, out, steps, device, tiny) for p in precisions]
    spec, flags = specs[0]
    spec["then"] = [{"out": s["out"], "dtype": s["dtype"], "emulate": s["emulate"], "flags": f}
                    for s, f in specs[1:]]
    warm_page_cache(files.unet, files.adapter, files.checkpoint if sizes.base_unet else files.clip_vae,
                    files.clip_vision, files.ref)
    print(f"[gpu-check] {', '.join(precisions)}: {out}", flush=True)
    run_process("gpu_check_run.py", spec, Path(spec["out"]), ["--", *flags], threads=1 if tiny else None)
    return [summarise(json.loads((Path(s["out"]) / "result.json").read_text())) for s, _ in specs]


def precision_spec(precision: str, files: Any, sizes: Any, names: dict, out: Path, steps: int,
                   device: str, tiny: bool) -> tuple[dict[str, Any], list[str]]:
    """The spec of one precision's run and its ComfyUI flags."""
    run = out / precision
    spec = {"out": str(run), "base": str(out / "comfy_base"), "steps": steps, "prompts": 1,
            "adapter": names["fashion_rag/adapter"], "unet": names["fashion_rag/unet"],
            "checkpoint": names.get("checkpoints"), "clip_vision": names.get("clip_vision"),
            "smoke": None, "person": TINY_PERSON if tiny else None, "device": device, "dtype": precision,
            "emulate": "fp16" if tiny and precision == "fp16" else None}
    if sizes.base_unet is None:
        spec["smoke"] = {"clip_vae": str(files.clip_vae), "clip_vision": str(files.clip_vision),
                         "vision_json": str(files.clip_vision_json), "vae": sizes.comfy_vae_config(),
                         "text": {**sizes.text, "num_hidden_layers": sizes.text_layers}}
    spec["reference_spec"] = {
        "reference": str(files.ref), "adapter_pth": str(files.adapter), "unet_pth": str(files.unet),
        "adapter_config": {k: getattr(sizes.adapter, k) for k in
                           ("vision_width", "heads", "mlp_dim", "hidden_dim", "num_tokens", "text_width")},
        "tokenizer": str(comfy_path() / "comfy" / "sd1_tokenizer")}
    cpu = ["--cpu"] if device == "cpu" else []
    return spec, [*cpu, "--use-pytorch-cross-attention", *FLAGS[precision]]


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """The figures of one precision's result.json."""
    events = result["pack"]["events"]
    steps_t = [e["t"] for e in events if e["what"] == "step" and e.get("node") == "11"]
    first = next(e["t"] for e in events if e["what"] == "prompt")
    done = next(e["t"] for e in events if e["what"] == "done")
    # The first prompt's nodes, each until the next one starts: the retrieval nodes' share of the
    # first image is the pack's alone (the independent pipeline takes the pack's garments).
    marks = [e for e in events if e["what"] in ("node", "done")]
    marks = marks[:next(i for i, e in enumerate(marks) if e["what"] == "done") + 1]
    retrieval = sum(b["t"] - a["t"] for a, b in zip(marks, marks[1:], strict=False)
                    if a.get("node") in RETRIEVAL_NODES)
    ref = result["independent"]
    ref_steps = [e["t"] for e in ref if e["what"] == "step"]
    return {"pack_step": step_seconds(steps_t), "ref_step": step_seconds(ref_steps),
            "pack_first": done - first, "pack_retrieval": retrieval, "ref_first": ref[-1]["t"] - ref[0]["t"],
            "pack_peak": result["pack_peak"], "ref_peak": result["independent_peak"],
            "dtypes": result["pack"]["dtypes"], "device_name": result["device_name"],
            "torch": result["torch"], "left_after_unload": result["left_after_unload"]}


def index_query(n: int, queries: int) -> dict[str, Any]:
    """p50 of single queries through the library's ranking path (faiss-cpu), and of a flat GPU
    index where faiss has GPU support."""
    import faiss
    import numpy as np
    from retrieval import K, exact_top_k, measure, synthetic

    from tools.synthetic_index import in_memory_index

    x, q, cats = synthetic(n, queries)
    index = in_memory_index(x, categories=[str(c) for c in cats], index_type="auto")
    p50, _, recall = measure(index, q, exact_top_k(x, q, K))
    out: dict[str, Any] = {"n": n, "cpu_p50": p50, "cpu_recall": recall, "kind": index.vectors.kind,
                           "faiss": faiss.__version__, "gpu_p50": None}
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpus and hasattr(faiss, "StandardGpuResources"):
        res = faiss.StandardGpuResources()
        flat = faiss.index_cpu_to_gpu(res, 0, faiss.IndexFlatIP(x.shape[1]))
        flat.add(x)
        for v in q[:5]:
            flat.search(v[None], K)
        times = []
        for v in q:
            t0 = time.perf_counter()
            flat.search(v[None], K)
            times.append(time.perf_counter() - t0)
        out["gpu_p50"] = float(np.percentile(np.array(times) * 1e3, 50))
    return out


def table(r16: dict, r32: dict, errors: dict[str, float], index: dict, steps: int, tiny: bool) -> str:
    def gib(b: int | None) -> str:
        return "n/a (CPU)" if b is None else f"{b / GiB:.2f}"

    size = "tiny configs, 48x64" if tiny else "full size, 512x384"
    stored = ", ".join(f"{k} {v}" for k, v in r16["dtypes"].items())
    gpu = (f"{index['gpu_p50']:.3f} ms (flat on the GPU)" if index["gpu_p50"] is not None
           else "no GPU faiss here (faiss-cpu)")
    rows = [
        "| | pack (ComfyUI nodes) | independent (diffusers) |", "|---|---|---|",
        f"| ms per step ({steps} steps, CFG 7.5, fp16) | {1e3 * r16['pack_step']:.1f} "
        f"| {1e3 * r16['ref_step']:.1f} |",
        f"| ms per step, fp32 | {1e3 * r32['pack_step']:.1f} | {1e3 * r32['ref_step']:.1f} |",
        f"| first image, s (fp16; cold process, models from the page cache) | {r16['pack_first']:.1f} "
        f"({r16['pack_retrieval']:.1f} of it retrieval: index + text query) | {r16['ref_first']:.1f} "
        "(no retrieval: the pack's garments) |",
        f"| peak GPU memory, GiB (fp16) | {gib(r16['pack_peak'])} | {gib(r16['ref_peak'])} |",
        f"| final latent, fp16 vs fp32 (relative) | {errors['pack fp16 vs fp32']:.1e} "
        f"| {errors['independent fp16 vs fp32']:.1e} |",
        f"| final latent, pack vs independent (fp32 / fp16) | {errors['fp32 pack vs independent']:.1e} / "
        f"{errors['fp16 pack vs independent']:.1e} | |",
        f"| index query p50, {index['n']:,} garments, k=10 | {index['cpu_p50']:.3f} ms (library path, "
        f"faiss-cpu {index['faiss']}, {index['kind']}, recall@10 {index['cpu_recall']:.3f}) | {gpu} |",
    ]
    return (f"{r16['device_name']}; torch {r16['torch']}; {size}; pack weights in the fp16 run: {stored}\n"
            + "\n".join(rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true",
                   help="tiny configs on the CPU (checks the script; the CI test)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 50; tiny 2)")
    p.add_argument("--cache", type=Path, default=None, help="where the weights are generated (default "
                                                             "$FASHION_RAG_CACHE/bench)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: a new temp folder)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args(argv)
    import torch

    if not a.tiny and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False). Run it on a CUDA machine, "
              "or pass --tiny to check the script on the CPU.", file=sys.stderr)
        return EXIT_NO_GPU
    device = "cpu" if a.tiny else "cuda"
    sizes = SMOKE_SIZES if a.tiny else FULL_SIZES
    steps = a.steps or (2 if a.tiny else 50)
    out = a.out or Path(tempfile.mkdtemp(prefix="fashion_rag_gpu_check_"))
    start = time.perf_counter()
    sys.path.insert(0, str(comfy_path()))  # the generator writes LDM VAE keys with ComfyUI's converter
    files = generate(sizes, files_for(sizes, a.cache), log=lambda m: print(m, flush=True))
    print(f"[gpu-check] weights ready in {time.perf_counter() - start:.0f} s", flush=True)
    names = prepare_base(out / "comfy_base", files, sizes, files.unet)
    # A process per precision on a GPU (each one's first image is timed from a cold start);
    # --tiny checks the script with both in one process (a ComfyUI start costs more than the run).
    if a.tiny:
        r16, r32 = run_precisions(["fp16", "fp32"], files, sizes, names, out, steps, device, a.tiny)
    else:
        (r16,), (r32,) = (run_precisions([p_], files, sizes, names, out, steps, device, a.tiny)
                          for p_ in ("fp16", "fp32"))
    from safetensors.torch import load_file

    l16, l32 = (load_file(str(out / p_ / "latents.safetensors")) for p_ in ("fp16", "fp32"))
    errors = {"pack fp16 vs fp32": relative(l16["pack"], l32["pack"]),
              "independent fp16 vs fp32": relative(l16["independent"], l32["independent"]),
              "fp32 pack vs independent": relative(l32["pack"], l32["independent"]),
              "fp16 pack vs independent": relative(l16["pack"], l16["independent"])}
    finite = all(bool(v.isfinite().all()) for d in (l16, l32) for v in d.values())
    index = index_query(2_000 if a.tiny else 100_000, 50 if a.tiny else 500)
    print(f"\n{table(r16, r32, errors, index, steps, a.tiny)}")
    print(f"latents finite: {'yes' if finite else 'NO'}; total {time.perf_counter() - start:.0f} s on "
          f"{platform.node() or 'this machine'} ({os.cpu_count()} CPUs)")
    if a.json:
        write_json(a.json, {"fp16": r16, "fp32": r32, "errors": errors, "finite": finite, "index": index,
                            "steps": steps, "tiny": a.tiny})
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
