"""`python -m fashion_rag demo`: run the example workflow through a real ComfyUI server.

Sets up a ComfyUI base directory (models, input, output, the pack in custom_nodes) outside the
checkout, installs the demo catalog index and random-weight demo models there (or uses the real
files you put in its models folder), starts ComfyUI, posts the example workflow's API form,
and writes the outputs plus a contact sheet (retrieved garments, mask, pose, result) to --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from PIL import Image

from .comfy_runner import REPO, ComfyServer, make_base_dir
from .contact_sheet import contact_sheet
from .demo_person import draw_person

WORKFLOW = REPO / "example_workflows" / "api" / "fashion_rag_text_to_tryon.json"
PERSON = "fashion_rag_demo_person.png"
# SaveImage filename prefixes in the example workflow -> contact sheet rows, in order.
ROWS = (("garments", "retrieved"), ("mask", "mask"), ("pose", "pose"), ("result", "result"))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the example workflow through real ComfyUI",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "out" / "demo", help="output folder")
    p.add_argument("--base", type=Path, default=Path.home() / ".cache" / "fashion-rag" / "demo-base",
                   help="ComfyUI base directory (models/, input/, output/) to use")
    p.add_argument("--workflow", type=Path, default=WORKFLOW, help="API-format workflow JSON")
    p.add_argument("--text", help="override the garment description of the example workflow")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the run")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from .demo_weights import install_demo_models

    base = make_base_dir(args.base.resolve())
    install_demo_models(base / "models", log=lambda m: print(m, file=sys.stderr))
    draw_person().save(base / "input" / PERSON)
    prompt = json.loads(args.workflow.read_text())
    if args.text:
        for node in prompt.values():
            if node["class_type"] == "FashionRAGTextGarmentRetrieve":
                node["inputs"]["text"] = args.text
    print(f"[fashion-rag] starting ComfyUI (base {base})", file=sys.stderr)
    server = ComfyServer(base)
    try:
        server.wait_ready()
        print("[fashion-rag] running the example workflow (CPU: a few minutes)", file=sys.stderr)
        entry = server.run(prompt, timeout=args.timeout)
    finally:
        server.stop()
    images = collect_outputs(prompt, entry, base / "output")
    write_outputs(images, args.out)
    print(f"[fashion-rag] wrote {args.out}/contact_sheet.png and {sum(map(len, images.values()))} "
          "images", file=sys.stderr)
    return 0


def collect_outputs(prompt: dict, entry: dict, output_dir: Path) -> dict[str, list[Path]]:
    """SaveImage files of a finished run, keyed by the last part of their filename prefix."""
    found: dict[str, list[Path]] = {}
    for node_id, out in entry.get("outputs", {}).items():
        prefix = prompt[node_id]["inputs"].get("filename_prefix", node_id)
        key = str(prefix).rsplit("/", 1)[-1]
        for im in out.get("images", []):
            if im.get("type") == "output":
                found.setdefault(key, []).append(output_dir / im["subfolder"] / im["filename"])
    return found


def write_outputs(images: dict[str, list[Path]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for key, label in ROWS:
        paths = images.get(key, [])
        for i, src in enumerate(paths):
            shutil.copyfile(src, out / (f"{key}_{i + 1}.png" if len(paths) > 1 else f"{key}.png"))
        if paths:
            rows.append((label, [Image.open(p) for p in paths]))
    contact_sheet(rows).save(out / "contact_sheet.png")
