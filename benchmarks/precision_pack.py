"""The pack's side of benchmarks/precision.py: the templates in a real ComfyUI at one precision.

    python benchmarks/precision_pack.py SPEC.json -- --cpu --bf16-unet ... (ComfyUI's own flags)

ComfyUI parses the flags after `--` as main.py does (memory_pack.start_comfy), then each template
of SPEC runs once through ComfyUI's PromptExecutor with the benchmark's files, steps and person
size. Written to SPEC's `out` folder: stages.safetensors (each stage's output, float32 on the CPU:
the garment-inversion conditionings, the 23 channels the inpaint node gives the UNet, the final
latents and images, the score node's scores) and result.json (retrieved ids, score rankings, the
dtype every model stores its weights in and the dtypes its layers computed in, seconds).

SPEC's `emulate` ("bf16" or "fp16") makes ComfyUI take the CPU for a device that computes in that
dtype (benchmarks/half_device.py); on a CPU ComfyUI otherwise computes every UNet in fp32 whatever
its weights are stored in.

SPEC's optional `then` lists more precisions for the same process ({"out", "emulate", "flags"}),
run one after the other once the first is written (`precision.py --sizes smoke`: a ComfyUI start
costs more than the tiny templates). Between two, ComfyUI's flags are parsed anew (its dtype
choices read them at each load), the capability queries are put back, every model is unloaded
and the pack's model caches are emptied, so each precision loads its models afresh.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import json
import logging
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from half_device import QUERIES  # noqa: E402
from memory_common import Timeline, write_json  # noqa: E402
from memory_pack import (  # noqa: E402
    SMOKE_CLIP_VAE,
    SMOKE_VISION,
    _Server,
    emulate_half_device,
    fresh_models,
    pack_name,
    person_name,
    set_flags,
    start_comfy,
    write_person,
)

from tools.demo.person import PERSON_FILE  # noqa: E402

TEMPLATES = HERE.parent / "example_workflows" / "api"
# The file inputs of the loaders, set from SPEC's `files` (left as the template has them if absent).
FILE_INPUTS = {"FashionRAGCheckpointCLIPVAELoader": "ckpt_name", "FashionRAGCLIPVisionLoader": "clip_name",
               "FashionRAGAdapterLoader": "adapter_name", "FashionRAGUNetLoader": "unet_name"}
SMOKE_LOADERS = {"FashionRAGCheckpointCLIPVAELoader": SMOKE_CLIP_VAE,
                 "FashionRAGCLIPVisionLoader": SMOKE_VISION}


def graph(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """Template `name` with the benchmark's files, steps, person size and best-of count."""
    g = copy.deepcopy(json.loads((TEMPLATES / f"{name}.json").read_text()))
    for node in g.values():
        kind, inputs = node["class_type"], node["inputs"]
        if spec["smoke"] and kind in SMOKE_LOADERS:  # ComfyUI's loaders fix these sizes (memory_pack)
            node.update(class_type=SMOKE_LOADERS[kind], inputs={"spec": json.dumps(spec["smoke"])})
        elif kind in FILE_INPUTS and spec["files"].get(kind):
            inputs[FILE_INPUTS[kind]] = spec["files"][kind]
        elif kind == "FashionRAGInpaint":
            inputs["steps"] = spec["steps"]
        elif kind == "LoadImage" and inputs["image"] == PERSON_FILE:
            inputs["image"] = person_name(spec["person"])
        elif kind == "FashionRAGPoseFromKeypoints" and spec["person"]:
            inputs["width"], inputs["height"] = spec["person"]
        elif kind == "RepeatImageBatch":
            inputs["amount"] = spec["best_of"]
    return g


class Layers:
    """The dtypes every weighted layer (Linear, Conv) computed in, by module: a global forward
    hook, so layers are seen whichever model or patcher runs them."""

    def __init__(self) -> None:
        self.seen: dict[int, set[str]] = defaultdict(set)
        self.handle = torch.nn.modules.module.register_module_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and args and torch.is_tensor(args[0]):
            self.seen[id(module)].add(str(args[0].dtype).removeprefix("torch."))

    def of(self, model: torch.nn.Module) -> list[str]:
        found: set[str] = set()
        for m in model.modules():
            found |= self.seen.get(id(m), set())
        return sorted(found)


def _stored(module: torch.nn.Module) -> str:
    """The dtype holding most of a module's parameters."""
    numel: dict[torch.dtype, int] = defaultdict(int)
    for p in module.parameters():
        numel[p.dtype] += p.numel()
    return str(max(numel, key=numel.__getitem__)).removeprefix("torch.")


def _outputs(executor: Any, node: str) -> list:
    entry = executor.caches.outputs.get(node)
    if asyncio.iscoroutine(entry):  # async in newer ComfyUI (0.33), plain in 0.3.75
        entry = asyncio.run(entry)
    return entry.outputs


def model_dtypes(executor: Any, g: dict[str, Any], layers: Layers) -> dict[str, dict[str, Any]]:
    """Per loaded model: the dtype its weights are stored in and the dtypes its layers ran in."""
    models: dict[str, torch.nn.Module] = {}
    for nid, node in g.items():
        kind = node["class_type"]
        if kind in ("FashionRAGCheckpointCLIPVAELoader", SMOKE_CLIP_VAE):
            clip, vae = (o[0] for o in _outputs(executor, nid)[:2])
            models["text encoder"], models["VAE"] = clip.cond_stage_model, vae.first_stage_model
        elif kind in ("FashionRAGCLIPVisionLoader", SMOKE_VISION):
            models["CLIP vision"] = _outputs(executor, nid)[0][0].model
        elif kind == "FashionRAGAdapterLoader":
            models["adapter"] = _outputs(executor, nid)[0][0].model
        elif kind == "FashionRAGUNetLoader":
            models["UNet"] = _outputs(executor, nid)[0][0].model.diffusion_model
        elif kind == "FashionRAGGarmentIndexLoader":
            encoder = _outputs(executor, nid)[0][0].encoder
            models["retrieval text tower"] = encoder.tower("text")
    return {name: {"stored": _stored(m), "computed": layers.of(m)} for name, m in models.items()}


def _conditioning(cond: list) -> torch.Tensor:
    return torch.cat([entry[0] for entry in cond])


def run_all(spec: dict[str, Any], flags: list[str]) -> None:
    """SPEC's precision, then those of its `then`, each written to its own `out` folder."""
    base = Path(spec["base"])
    write_person(base / "input", spec["person"])
    _, execution = start_comfy(flags, base)
    import comfy.cli_args
    import comfy.model_management as mm

    started = dict(vars(comfy.cli_args.args))
    queries = {name: getattr(mm, name) for name in QUERIES.values()}
    for i, step in enumerate([{}, *spec.get("then", [])]):
        if i:
            set_flags(started, flags, step["flags"])
            fresh_models()
            for name, query in queries.items():  # the previous precision's emulation undone
                setattr(mm, name, query)
        current = {**spec, **step}
        if current.get("emulate"):
            emulate_half_device(current["emulate"])
        with torch.inference_mode():  # as ComfyUI's prompt worker runs the executor
            result = run(current, execution)
        write_json(Path(current["out"]) / "result.json", result)


def run(spec: dict[str, Any], execution: Any) -> dict[str, Any]:
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    server = _Server(Timeline())
    inpaint = importlib.import_module(f"{pack_name()}.nodes.inpaint")
    channels: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    with_channels = inpaint.with_inpaint_channels

    def recorded(positive, negative, *args):  # the 23 channels each inpaint node hands the UNet
        pos, neg = with_channels(positive, negative, *args)
        channels[server.node] = (pos[0][1]["noise_concat"], neg[0][1]["noise_concat"])
        return pos, neg

    inpaint.with_inpaint_channels = recorded
    layers = Layers()
    executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC,
                                        cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
    tensors: dict[str, torch.Tensor] = {}
    result: dict[str, Any] = {"templates": {}, "dtypes": {}}
    for name in spec["templates"]:
        g = graph(spec, name)
        ok, error, outputs, node_errors = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), g, None))
        if not ok or node_errors:
            raise RuntimeError(f"{name}: invalid graph: {error} {node_errors}")
        start = time.perf_counter()
        executor.execute(g, str(uuid.uuid4()), {"client_id": server.client_id}, outputs)
        if not executor.success:
            raise RuntimeError(f"{name} failed: {executor.status_messages[-1:]}")
        seconds = time.perf_counter() - start
        ids, scores = {}, {}
        for nid, node in g.items():
            kind, key = node["class_type"], f"{name}/{nid}"
            if kind == "FashionRAGGarmentInversion":
                outs = _outputs(executor, nid)
                tensors[f"{key}/conditioning"] = _conditioning(outs[0][0])
                tensors[f"{key}/negative conditioning"] = _conditioning(outs[1][0])
            elif kind == "FashionRAGInpaint":
                outs = _outputs(executor, nid)
                tensors[f"{key}/latent"] = outs[0][0]["samples"]
                tensors[f"{key}/image"] = outs[1][0]
                tensors[f"{key}/channels"], tensors[f"{key}/negative channels"] = channels[nid]
            elif kind == "FashionRAGTextGarmentRetrieve":
                ids[nid] = [item.id for item in _outputs(executor, nid)[1][0].items]
            elif kind == "FashionRAGScore":
                listing = executor.history_result["outputs"][nid]["fashion_rag_scores"]
                scores[nid] = listing
                by_image = sorted(listing, key=lambda s: s["index"])
                tensors[f"{key}/scores"] = torch.tensor([s["score"] for s in by_image], dtype=torch.float64)
        result["templates"][name] = {"seconds": seconds, "ids": ids, "scores": scores}
        result["dtypes"].update(model_dtypes(executor, g, layers))
    layers.handle.remove()
    inpaint.with_inpaint_channels = with_channels
    result["finite"] = {k: bool(torch.isfinite(v).all()) for k, v in tensors.items()}
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}
    save_file(tensors, str(out / "stages.safetensors"))
    return result


def main() -> None:
    spec_path, flags = sys.argv[1], sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    spec = json.loads(Path(spec_path).read_text())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    run_all(spec, flags)


if __name__ == "__main__":
    main()
