"""`python -m tools.demo` (what `bash .ci/demo` runs): run the example workflow through a real ComfyUI server.

Sets up a ComfyUI base directory (models, input, output, the pack in custom_nodes) outside the
checkout, installs the demo catalog index and random-weight demo models there (or uses the real
files you put in its models folder), starts ComfyUI, posts the example workflow's API form,
and writes the outputs plus a contact sheet (retrieved garments, mask, pose, result) to --out.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import sys
import time
from pathlib import Path

from PIL import Image

from .catalog import TINY_WEIGHTS_NAME
from .contact_sheet import contact_sheet
from .person import install_demo_person
from fashion_rag.files import MAX_JSON_BYTES, atomic_write, read_regular
from tools.harness import REPO, ComfyClient, ComfyServer, make_base_dir

WORKFLOW = REPO / "example_workflows" / "api" / "fashion_rag_text_to_tryon.json"
# SaveImage filename prefixes in the example workflow -> contact sheet rows, in order.
ROWS = (("garments", "retrieved"), ("mask", "mask"), ("pose", "pose"), ("result", "result"))


def main(argv: list[str] | None = None) -> int:
    return run_demo(parse_args(argv))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "out" / "demo", help="output folder")
    p.add_argument("--base", type=Path, default=None,
                   help="ComfyUI base directory (models/, input/, output/) to use (default: demo-base in "
                        "the cache, $FASHION_RAG_CACHE or ~/.cache/fashion-rag)")
    p.add_argument("--workflow", type=Path, default=WORKFLOW, help="API-format workflow JSON")
    p.add_argument("--text", help="override the garment description of the example workflow")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the run")
    p.add_argument("--server", help="use this running ComfyUI (URL) instead of starting one; "
                   "--base must then be its base directory")
    args = p.parse_args(argv)
    if args.base is None:  # beside the venv and the demo weights, wherever the cache is
        from .weights import _cache_dir

        args.base = _cache_dir().parent / "demo-base"
    return args


# The last demo run's wall time on this machine (estimate for the next), beside the demo weights.
RUN_RECORD = "demo-run.json"
# What a run says before this machine has a time of its own (README, "The two commands"; measured
# 2026-12-03 with the v3 demo UNet: 49.6 s wall quiet, 53 s at load average 1.5, 87 s at load ~3).
FIRST_RUN_ESTIMATE = ("generating ~2.7 GB of random demo weights (once, cached), then running the example "
                      "at 384x512, 50 steps: a few minutes on a quiet 2-core CPU, up to ~10 on a busy one")
WARM_ESTIMATE = ("running the example at 384x512, 50 steps: about 50 s on a quiet 2-core CPU, ~90 s with "
                 "another job on it, several minutes on a busy one")


def _record_path() -> Path:
    from .weights import _cache_dir

    return _cache_dir().parent / RUN_RECORD


def time_estimate() -> str:
    """What to expect, said before anything slow starts: the last run's time here, or the first
    run's measured estimate."""
    from .weights import missing_demo_weights

    if missing_demo_weights():
        return f"first run: {FIRST_RUN_ESTIMATE}"
    try:
        last = json.loads(read_regular(_record_path(), MAX_JSON_BYTES, "the demo's run record"))
        return f"the last demo run here took {int(last['seconds'])} s"
    except (OSError, ValueError, KeyError, TypeError):
        return WARM_ESTIMATE


def _record_time(seconds: float) -> None:
    path = _record_path()
    body = json.dumps({"seconds": round(seconds, 1), "cpus": os.cpu_count(),
                       "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()]})
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_text(body))
    except OSError:  # a read-only cache costs only the next run's estimate
        pass


def run_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    base = make_base_dir(args.base.resolve())
    # ComfyUI starts first: its ~10 s of imports overlap this process's own (torch, for the time
    # estimate and the model files) and the install; it reads the models folder at the prompt.
    server = None if args.server else ComfyServer(base)
    client: ComfyClient = server or ComfyClient(args.server)
    try:
        from .weights import install_demo_models

        print(f"[fashion-rag] {time_estimate()}", file=sys.stderr)
        if server:
            print(f"[fashion-rag] starting ComfyUI (base {base})", file=sys.stderr)
        install_demo_models(base / "models", log=lambda m: print(m, file=sys.stderr))
        install_demo_person(base / "input")
        prompt = demo_prompt(json.loads(args.workflow.read_text()), args.text)
        if server:
            server.wait_ready()
        print("[fashion-rag] running the example workflow", file=sys.stderr)
        entry = client.run(prompt, timeout=args.timeout)
        images = collect_outputs(prompt, entry)
        write_outputs(client, images, args.out)
    finally:
        if server:
            server.stop()
    seconds = time.monotonic() - started
    if not args.server:  # a run on someone else's (perhaps busy) server says nothing about this one
        _record_time(seconds)
    print(f"[fashion-rag] wrote {args.out}/contact_sheet.png and {sum(map(len, images.values()))} "
          f"images in {seconds:.0f} s", file=sys.stderr)
    if args.workflow == WORKFLOW:
        print("[fashion-rag] the example uses random-weight demo models of the real formats: the "
              "result is noise by design. Put the real weights into "
              f"{base / 'models'} (README, 'Model files') and select them in the workflow.",
              file=sys.stderr)
    return 0


def demo_prompt(api: dict, text: str | None = None) -> dict:
    """The API-form prompt the demo sends: `text` as the garment description, and caption
    retrieval where the index reads with the random demo encoder. A copy; `api` is unchanged."""
    prompt = copy.deepcopy(api)
    for node in prompt.values():
        if node["class_type"] == "FashionRAGTextGarmentRetrieve":
            if text:
                node["inputs"]["text"] = text
            if _uses_demo_encoder(prompt, node):
                # Random encoder weights rank images by noise: the demo ranks by captions instead.
                node["inputs"]["mode"] = "caption"
    return prompt


def _uses_demo_encoder(prompt: dict, retrieve: dict) -> bool:
    link = retrieve["inputs"].get("index")
    loader = prompt.get(str(link[0])) if isinstance(link, list) else None
    return bool(loader) and loader["inputs"].get("encoder_weights") == TINY_WEIGHTS_NAME


def collect_outputs(prompt: dict, entry: dict) -> dict[str, list[dict]]:
    """SaveImage entries of a finished run, keyed by the last part of their filename prefix."""
    found: dict[str, list[dict]] = {}
    for node_id, out in entry.get("outputs", {}).items():
        prefix = prompt[node_id]["inputs"].get("filename_prefix", node_id)
        key = str(prefix).rsplit("/", 1)[-1]
        found.setdefault(key, []).extend(im for im in out.get("images", []) if im.get("type") == "output")
    return found


def write_outputs(client: ComfyClient, images: dict[str, list[dict]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for key, label in ROWS:
        entries = images.get(key, [])
        loaded = []
        for i, entry in enumerate(entries):
            data = client.view(entry)
            (out / (f"{key}_{i + 1}.png" if len(entries) > 1 else f"{key}.png")).write_bytes(data)
            loaded.append(Image.open(io.BytesIO(data)))
        if loaded:
            rows.append((label, loaded))
    contact_sheet(rows).save(out / "contact_sheet.png")
