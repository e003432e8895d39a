"""`python -m tools.thumbnails`: the example_workflows/*.jpg thumbnails, as screenshots of ComfyUI.

A developer tool (not part of the pack). For each template (example_workflows/<name>.json, UI
form) it starts a real ComfyUI with the demo models (or uses --server), opens the workflow in
ComfyUI's own frontend in Debian's headless chromium (driven by playwright, never a downloaded
browser), runs it from the page as a designer would, waits for the galleries and previews,
fits the whole graph in view and saves the screenshot as example_workflows/<name>.jpg, the
picture ComfyUI's template browser and the README show (and a few close-ups of one node:
CLOSE_UPS). The runs are full size on the demo
weights (pictures of noise, by design): on a 2-core CPU a template takes 2-5 minutes.

    python -m tools.thumbnails                         # every template
    python -m tools.thumbnails fashion_rag_outfit      # some of them
    python -m tools.thumbnails --out /tmp/thumbs       # somewhere else than example_workflows/
    python -m tools.thumbnails --no-run --out /tmp/t   # the layout only, in a minute
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

from tools.harness import REPO, ComfyClient, ComfyServer, make_base_dir

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
VIEWPORT = {"width": 1600, "height": 1000}  # the existing thumbnails' size
WORKFLOWS = REPO / "example_workflows"
APP = "const app = window.comfyAPI.app.app;"

# Pan/zoom so every node (galleries and previews grown by the run) is in view, at most 1:1, clear of
# the side bar (left), the menus (top) and the canvas controls (bottom).
FIT_VIEW = APP + """
const canvas = app.canvas;
canvas.deselectAll();
const boxes = app.graph.nodes.map(n => n.boundingRect);
const x0 = Math.min(...boxes.map(b => b[0])), y0 = Math.min(...boxes.map(b => b[1]));
const x1 = Math.max(...boxes.map(b => b[0] + b[2])), y1 = Math.max(...boxes.map(b => b[1] + b[3]));
const [left, top, right, bottom] = [80, 110, 30, 60];
const [w, h] = [canvas.canvas.clientWidth - left - right, canvas.canvas.clientHeight - top - bottom];
const scale = Math.min(1, w / (x1 - x0), h / (y1 - y0));
canvas.ds.scale = scale;
canvas.ds.offset[0] = left / scale - x0 + (w / scale - (x1 - x0)) / 2;
canvas.ds.offset[1] = top / scale - y0;
canvas.setDirty(true, true);
"""
# Close-ups, 1:1, of a node after its template ran: (template, node type) -> picture. The score
# node's preview (rank and scores drawn on each result) is its help page's and the README's picture.
CLOSE_UPS = {("fashion_rag_best_of_n", "FashionRAGScore"): REPO / "web" / "docs" / "FashionRAGScore.jpg"}
# Put one node at 1:1 in the top left corner; its box on the page.
SHOW_NODE = APP + """
const canvas = app.canvas;
canvas.deselectAll();
const [x, y, w, h] = app.graph.nodes.find(n => n.type === type).boundingRect;
canvas.ds.scale = 1;
canvas.ds.offset[0] = 100 - x;
canvas.ds.offset[1] = 110 - y;
canvas.setDirty(true, true);
return {x: 100, y: 110, width: w, height: h};
"""
# Every image a node shows (previews, the retrieve gallery) has arrived and decoded.
IMAGES_READY = APP + """
const shown = app.graph.nodes.filter(n => !n.flags?.collapsed);
const previews = shown.filter(n => n.imgs !== undefined);
const galleries = shown.filter(n => n.fashionRag).map(n => [...n.fashionRag.root.querySelectorAll('img')]);
return previews.every(n => n.imgs.length && n.imgs.every(i => i.complete && i.naturalWidth > 0))
    && galleries.every(imgs => imgs.length && imgs.every(i => i.complete && i.naturalWidth > 0));
"""


MAX_BYTES = 150_000  # the README shows four of them; the repository keeps every version
DIGEST_PREFIX = "fashion_rag workflow sha256="


def workflow_digest(graph: dict) -> str:
    """What a thumbnail records of the workflow it shows: a digest of the UI form (its nodes, links,
    widget values and layout), so a test can tell a thumbnail that no longer shows its template."""
    return DIGEST_PREFIX + hashlib.sha256(json.dumps(graph, sort_keys=True).encode()).hexdigest()


def save_thumbnail(image: Image.Image, out: Path, comment: str) -> None:
    """Save as JPEG under MAX_BYTES (the highest quality that fits), the digest as its comment."""
    image = image.convert("RGB")
    for quality in range(88, 40, -4):
        image.save(out, quality=quality, optimize=True, comment=comment.encode())
        if out.stat().st_size <= MAX_BYTES:
            return
    raise RuntimeError(f"{out.name}: over {MAX_BYTES} bytes even at JPEG quality {quality}")


def _post(url: str, path: str, body: dict) -> None:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30):
        pass


def _wait_for_run(client: ComfyClient, prompt_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = client.get(f"/history/{prompt_id}").get(prompt_id)
        status = (entry or {}).get("status", {})
        if status.get("completed") is not None:
            if status.get("status_str") != "success":
                raise RuntimeError(f"the run failed: {json.dumps(status)[:3000]}")
            return
        time.sleep(1.0)
    raise TimeoutError(f"the run did not finish in {timeout:.0f} s")


def screenshot(page, client: ComfyClient, workflow: Path, out: Path, timeout: float,
               close_ups: dict[str, Path], run: bool = True) -> None:
    """Open, run and photograph one UI-form workflow (and close-ups of its nodes: type -> picture)."""
    graph = json.loads(workflow.read_text())
    page.evaluate("async ([g, name]) => { " + APP + " await app.loadGraphData(g, true, true, name); }",
                  [graph, workflow.stem])
    page.wait_for_function("() => { " + APP + " return app.graph.nodes.length > 1; }")
    started = time.monotonic()
    if run:
        with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/prompt")) as info:
            page.locator('[data-testid="queue-button"]').click()
        response = info.value
        if response.status != 200:
            raise RuntimeError(f"{workflow.name}: ComfyUI refused the prompt: {response.text()[:3000]}")
        _wait_for_run(client, response.json()["prompt_id"], timeout)
        page.wait_for_function("() => { " + IMAGES_READY + " }", timeout=120_000)
    page.evaluate("() => { " + FIT_VIEW + " }")
    page.wait_for_timeout(1000)  # the DOM widgets follow the canvas on the next frames
    png = out.with_suffix(".png")
    page.screenshot(path=str(png))
    save_thumbnail(Image.open(png), out, workflow_digest(graph))
    for node_type, picture in close_ups.items():
        box = page.evaluate("(type) => { " + SHOW_NODE + " }", node_type)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(png), clip=box)
        save_thumbnail(Image.open(png), picture, workflow_digest(graph))
        print(f"[thumbnails] {picture}", file=sys.stderr)
    png.unlink()
    print(f"[thumbnails] {out} ({time.monotonic() - started:.0f} s)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.thumbnails", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help="template names (default: every example_workflows/*.json)")
    p.add_argument("--out", type=Path, default=WORKFLOWS, help="folder for the .jpg files")
    p.add_argument("--base", type=Path, default=Path.home() / ".cache" / "fashion-rag" / "thumbnails-base",
                   help="ComfyUI base directory for the server this tool starts (demo models go there)")
    p.add_argument("--server", help="use this running ComfyUI (URL); it needs the demo models and person")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for one run")
    p.add_argument("--no-run", action="store_true",
                   help="photograph the graphs without running them (a quick look at the layout)")
    args = p.parse_args(argv)
    names = args.names or sorted(w.stem for w in WORKFLOWS.glob("*.json"))
    workflows = [WORKFLOWS / f"{n}.json" for n in names]
    missing = [str(w) for w in workflows if not w.is_file()]
    if missing:
        p.error(f"no such template: {', '.join(missing)}")
    if not Path(CHROMIUM).exists():
        p.error(f"{CHROMIUM} not found: apt-get install chromium (bash .ci/browser does it)")
    from playwright.sync_api import sync_playwright

    server = None
    if args.server:
        client = ComfyClient(args.server)
    else:
        from .demo.person import install_demo_person
        from .demo.weights import install_demo_models

        base = make_base_dir(args.base.resolve())
        install_demo_models(base / "models", log=lambda m: print(m, file=sys.stderr))
        install_demo_person(base / "input")
        server = client = ComfyServer(base)
        server.wait_ready()
    profile = Path(tempfile.mkdtemp(prefix="fr-thumbnails-"))
    try:
        # A first visit opens the template browser and tips over the canvas; a designer closes them once.
        # A whole graph in view is zoomed out below the level where nodes lose their text (LOD): keep it.
        _post(client.url, "/settings", {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
                                        "Comfy.Graph.CanvasInfo": False,
                                        "LiteGraph.Canvas.MinFontSizeForLOD": 0})
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS, viewport=VIEWPORT)
            context.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(120_000)
            page.goto(client.url)
            page.wait_for_function("() => window.comfyAPI?.app?.app?.vueAppReady && window.comfyAPI.app.app"
                                   ".graph && window.LiteGraph?.registered_node_types?.FashionRAGScore")
            args.out.mkdir(parents=True, exist_ok=True)
            for workflow in workflows:
                close_ups = {node: picture if args.out == WORKFLOWS else args.out / picture.name
                             for (template, node), picture in CLOSE_UPS.items() if template == workflow.stem}
                screenshot(page, client, workflow, args.out / f"{workflow.stem}.jpg", args.timeout, close_ups,
                           run=not args.no_run)
            context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
