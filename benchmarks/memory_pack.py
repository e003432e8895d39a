"""The pack's side of benchmarks/memory.py: the example graph in a real ComfyUI, in this process.

    python benchmarks/memory_pack.py SPEC.json -- --cpu --fp32-unet ... (ComfyUI's own flags)

ComfyUI parses the flags after `--` as main.py does; the graph runs twice through ComfyUI's
PromptExecutor (the second prompt: another text and seed, so retrieval, inversion and inpainting
run again while the loaders' outputs stay cached). Written to SPEC's `out` folder: result.json
(seconds and resident memory at every node start and sampler step, the peak) and tensors.safetensors
(the non-model inputs the reference run needs, and the final latent).

SPEC's optional `then` lists more runs for this process ({"out", "flags"}: another weight
storage), each after ComfyUI's flags are parsed anew, every model unloaded and the pack's model
caches emptied (memory.py --smoke: a ComfyUI start costs more than the tiny graph). Their peak
is their own (VmHWM reset), but not their start: use one process per run for real figures.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import importlib
import inspect
import json
import logging
import sys
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from half_device import emulate_half_device  # noqa: E402
from memory_common import PROMPTS, Timeline, write_json  # noqa: E402

from fashion_rag.cli.comfy_server import PACK_DIR_NAME  # noqa: E402
from tools.demo.person import PERSON_FILE, draw_person  # noqa: E402
from tools.harness import comfy_path, make_base_dir  # noqa: E402

EXAMPLE = HERE.parent / "example_workflows" / "api" / "fashion_rag_text_to_tryon.json"
LOADERS = {"1": "CLIP + VAE", "2": "CLIP vision", "3": "index", "5": "adapter", "7": "UNet"}
SMOKE_CLIP_VAE, SMOKE_VISION = "FashionRAGBenchTinyCLIPVAE", "FashionRAGBenchTinyCLIPVision"


def person_name(size: list[int] | None) -> str:
    """The person image of a size [w, h] (None: the demo's own, 384x512)."""
    return PERSON_FILE if size is None else f"fashion_rag_demo_person_{size[0]}x{size[1]}.png"


def write_person(input_dir: Path, size: list[int] | None) -> None:
    """The demo person at `size` in a ComfyUI input folder (prepare_base writes the 384x512 one)."""
    from PIL import Image

    path = input_dir / person_name(size)
    if size is not None and not path.exists():
        draw_person().resize(tuple(size), Image.LANCZOS).save(path)


def graph(spec: dict[str, Any], text: str, seed: int) -> dict[str, Any]:
    """The example graph with the benchmark's files, steps, text and seed (and person size, if given)."""
    g = copy.deepcopy(json.loads(EXAMPLE.read_text()))
    g["4"]["inputs"]["text"] = text
    if spec.get("person"):
        g["8"]["inputs"]["image"] = person_name(spec["person"])
        g["9"]["inputs"]["width"], g["9"]["inputs"]["height"] = spec["person"]
    g["5"]["inputs"]["adapter_name"] = spec["adapter"]
    g["7"]["inputs"]["unet_name"] = spec["unet"]
    g["11"]["inputs"].update(steps=spec["steps"], seed=seed)
    if spec["smoke"]:  # ComfyUI's loaders fix these models' sizes: tiny ones come from here
        g["1"] = {"class_type": SMOKE_CLIP_VAE, "inputs": {"spec": json.dumps(spec["smoke"])}}
        g["2"] = {"class_type": SMOKE_VISION, "inputs": {"spec": json.dumps(spec["smoke"])}}
    else:
        g["1"]["inputs"]["ckpt_name"] = spec["checkpoint"]
        g["2"]["inputs"]["clip_name"] = spec["clip_vision"]
    return g


class TinyCLIPVAE:
    """Smoke mode only: ComfyUI's SD2 text encoder and VAE classes at tiny sizes."""

    RETURN_TYPES = ("CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "fashion_rag/benchmark"

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802 (ComfyUI's name)
        return {"required": {"spec": ("STRING", {"default": "{}"})}}

    def load(self, spec: str) -> tuple:
        import comfy.sd
        import comfy.text_encoders.sd2_clip as sd2_clip
        import folder_paths
        from safetensors.torch import load_file

        s = json.loads(spec)
        sd = load_file(s["clip_vae"])

        class Target:
            params: dict = {}
            clip = sd2_clip.SD2ClipModel
            tokenizer = sd2_clip.SD2Tokenizer

        clip = comfy.sd.CLIP(Target(), embedding_directory=folder_paths.get_folder_paths("embeddings"),
                             model_options={"clip_h_model_config": s["text"]})
        missing, unexpected = clip.load_sd({k[5:]: v for k, v in sd.items() if k.startswith("text.")})
        if missing or unexpected:
            raise RuntimeError(f"tiny text encoder: missing {missing}, unexpected {unexpected}")
        vae = comfy.sd.VAE(sd={k[4:]: v for k, v in sd.items() if k.startswith("vae.")}, config=s["vae"])
        return clip, vae


class TinyCLIPVision:
    """Smoke mode only: ComfyUI's CLIP vision class from a tiny json config."""

    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load"
    CATEGORY = "fashion_rag/benchmark"

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802 (ComfyUI's name)
        return {"required": {"spec": ("STRING", {"default": "{}"})}}

    def load(self, spec: str) -> tuple:
        import comfy.clip_vision
        from safetensors.torch import load_file

        s = json.loads(spec)
        model = comfy.clip_vision.ClipVisionModel(s["vision_json"])
        missing, _ = model.load_sd(load_file(s["clip_vision"]))
        if missing:
            raise RuntimeError(f"tiny vision tower: missing {missing}")
        return (model,)


class _Server:
    """What PromptExecutor needs of PromptServer; every message lands on the timeline."""

    def __init__(self, timeline: Timeline) -> None:
        self.client_id = "benchmark"  # ComfyUI sends node events only to a client (extra_data's)
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata: dict = {}
        self.timeline = timeline
        self.node: str | None = None  # the node running now (progress reports carry no node id)

    def send_sync(self, event: str, data: Any, sid: Any = None) -> None:
        if event == "executing":
            self.node = data.get("node")
            self.timeline.mark("node", node=self.node)
        elif event == "execution_cached":
            self.timeline.mark("cached", nodes=list(data.get("nodes", [])))

    def queue_updated(self) -> None:
        pass


def start_comfy(flags: list[str], base: Path) -> tuple[Any, Any]:
    """ComfyUI's modules with `flags` parsed as main.py parses them; returns (nodes, execution)."""
    comfy_dir = str(comfy_path())
    sys.path.insert(0, comfy_dir)
    import comfy.options

    comfy.options.enable_args_parsing()
    sys.argv = ["main.py", *flags, "--base-directory", str(base), "--disable-api-nodes"]
    import folder_paths  # noqa: F401, I001  (after the flags: reads the base directory at import)
    # utils.* before `nodes`: importing `nodes` puts comfy/ first on sys.path,
    # after which `utils` is comfy/utils.py.
    import utils.extra_config  # noqa: F401
    import utils.install_util  # noqa: F401

    import execution
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    nodes.NODE_CLASS_MAPPINGS.update({SMOKE_CLIP_VAE: TinyCLIPVAE, SMOKE_VISION: TinyCLIPVision})
    return nodes, execution


def pack_name() -> str:
    """The pack's package name as ComfyUI imported it."""
    return next(name for name, module in sys.modules.items()
                if name.endswith(PACK_DIR_NAME) and hasattr(module, "WEB_DIRECTORY"))


def set_flags(started: dict[str, Any], first: list[str], flags: list[str]) -> None:
    """ComfyUI's flags as if `flags` had been given instead of `first` (for a later run in this process):
    an option the two parse to differently takes its value from `flags`, every other one the
    value it had after the start (`started`: cli_args' post-processing, such as --fast's, kept)."""
    import comfy.cli_args

    was, now = (vars(comfy.cli_args.parser.parse_args(f)) for f in (first, flags))
    if now.get("force_fp16") or now.get("fast") != was.get("fast"):
        raise ValueError("--force-fp16 and --fast are not switched within one process")
    vars(comfy.cli_args.args).update({k: now[k] if was[k] != now[k] else started[k] for k in now})


def fresh_models() -> None:
    """Nothing loaded under the previous flags is reused: ComfyUI's loaded models unloaded,
    the pack's model caches (keyed by file and node options, not by ComfyUI's flags) emptied."""
    import comfy.model_management as mm

    mm.unload_all_models()
    cache_type = importlib.import_module(f"{pack_name()}.nodes.model_cache").ModelCache
    for name, module in list(sys.modules.items()):
        if name.startswith(f"{pack_name()}."):
            for value in vars(module).values():
                if isinstance(value, cache_type):
                    value.clear()
    mm.soft_empty_cache()


def run(spec: dict[str, Any], flags: list[str]) -> dict[str, Any]:
    base = make_base_dir(Path(spec["base"]))
    write_person(base / "input", spec.get("person"))
    _, execution = start_comfy(flags, base)
    return run_started(spec, execution)


def run_started(spec: dict[str, Any], execution: Any) -> dict[str, Any]:
    """SPEC's prompts in the ComfyUI this process started; the timeline and dtypes."""
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    timeline = Timeline()
    if spec.get("emulate"):  # a CPU taken for a half-precision device (benchmarks/gpu_check.py --tiny)
        emulate_half_device(spec["emulate"])
    import comfy.utils

    def progress(value: int, total: int, preview: Any, node_id: Any = None, **_: Any) -> None:
        if torch.cuda.is_available():  # a step's time includes its queued GPU work
            torch.cuda.synchronize()
        timeline.mark("step", value=value, total=total, node=node_id or server.node)

    server = _Server(timeline)
    comfy.utils.set_progress_bar_global_hook(progress)
    # main.py's default cache (CLASSIC): a node's outputs are kept while its inputs are unchanged.
    executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC,
                                        cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
    timeline.mark("ready")
    prompts = []
    for i, (text, seed) in enumerate(PROMPTS[: spec["prompts"]]):
        prompt = graph(spec, text, seed)
        ok, error, outputs, node_errors = asyncio.run(
            execution.validate_prompt(str(uuid.uuid4()), prompt, None))
        if not ok or node_errors:
            raise RuntimeError(f"invalid graph: {error} {node_errors}")
        timeline.mark("prompt", index=i)
        executor.execute(prompt, str(uuid.uuid4()), {"client_id": server.client_id}, outputs)
        timeline.mark("done", index=i)
        if not executor.success:
            raise RuntimeError(f"prompt {i} failed: {executor.status_messages[-1:]}")
        prompts.append(prompt)
        if i == 0:
            save_tensors(executor, out / "tensors.safetensors")
            dtypes = weight_dtypes(executor)
    return {"events": timeline.events, "nodes": {k: v["class_type"] for k, v in prompts[0].items()},
            "dtypes": dtypes}


def _output(executor: Any, node: str, slot: int) -> Any:
    """A node's cached output of the last prompt."""
    entry = executor.caches.outputs.get(node)
    if inspect.iscoroutine(entry):  # async in newer ComfyUI (0.33), plain in 0.3.75
        entry = asyncio.run(entry)
    return entry.outputs[slot][0]


def weight_dtypes(executor: Any) -> dict[str, str]:
    """The dtype each loaded model stores its weights in (ComfyUI picks it from its flags)."""

    def dtype(module: torch.nn.Module) -> str:  # the dtype holding most parameters (a scalar may differ)
        numel: dict[torch.dtype, int] = {}
        for p in module.parameters():
            numel[p.dtype] = numel.get(p.dtype, 0) + p.numel()
        return str(max(numel, key=numel.__getitem__)).removeprefix("torch.")

    return {
        "text encoder": dtype(_output(executor, "1", 0).cond_stage_model),
        "VAE": dtype(_output(executor, "1", 1).first_stage_model),
        "vision": dtype(_output(executor, "2", 0).model),
        "adapter": dtype(_output(executor, "5", 0).model),
        "UNet": dtype(_output(executor, "7", 0).model.diffusion_model),
    }


def save_tensors(executor: Any, path: Path) -> None:
    """The first prompt's non-model inputs (for the reference) and its final latent."""
    output = functools.partial(_output, executor)
    latent = output("11", 0)["samples"]
    tensors = {
        "garments": output("4", 0), "person": output("8", 0), "mask": output("10", 0), "pose": output("9", 0),
        "latent": latent, "image": output("11", 1),
    }
    meta = {"category": output("4", 2)}
    save_file({k: v.float().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=meta)


def main() -> None:
    spec_path, flags = sys.argv[1], sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    spec = json.loads(Path(spec_path).read_text())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with torch.inference_mode():  # as ComfyUI's prompt worker runs the executor
        result = run(spec, flags)
    write_json(Path(spec["out"]) / "result.json", result)
    if spec.get("then"):
        import comfy.cli_args
        import execution

        started = dict(vars(comfy.cli_args.args))  # as main.py's flags left them
        for step in spec["then"]:  # memory.py --smoke: the next weight storage in this process
            set_flags(started, flags, step["flags"])
            fresh_models()
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: each run's own peak
            with torch.inference_mode():
                result = run_started({**spec, **step}, execution)
            write_json(Path(step["out"]) / "result.json", result)


if __name__ == "__main__":
    main()
