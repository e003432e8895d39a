"""The pack in ComfyUI's real browser frontend: Debian's chromium, a real ComfyUI server.

Opens THE example workflow (example_workflows/fashion_rag_text_to_tryon.json, UI form) the way
a designer does, from the Templates browser, queues it from the page and checks what they see:
the garment gallery (k thumbnails with rank, score, category), pin/exclude clicks landing in
the node's `pin_ids` / `exclude_ids` widgets, those surviving undo/redo and a save/reload of the
workflow and steering the next retrieval, the index summary, the full pipeline's outputs, and
no console errors from our extension. Every prompt the page sends is compared with the API form
(example_workflows/api/), which also proves the UI form is what the real frontend runs.

Runs: two retrieval-only ones ("Queue Selected Output Nodes", seconds) for the gallery and the
pins, then ONE full pipeline run (inversion + inpainting: a minute on CPU). Like the demo
command, the designer first sets the retrieve node's mode to "caption" (the demo index's
encoder weights are random; its loader says so): the full run is then the very prompt
`python -m tools.demo` sends, which conftest.py runs next on the same server, from ComfyUI's
output cache instead of a second minute-long run.
Screenshots go to pytest's temp folder (the path is printed; pytest keeps the last three runs).
"""

from __future__ import annotations

import json
import math
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from tools.demo.run import demo_prompt
from tools.harness import PACK_DIR_NAME, REPO
from tools.thumbnails import FIT_VIEW

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
WORKFLOW = REPO / "example_workflows" / "fashion_rag_text_to_tryon.json"  # UI form
API_FORM = REPO / "example_workflows" / "api" / WORKFLOW.name
FULL_RUN_TIMEOUT_S = 15 * 60  # ViT-H vision and the SD VAE at full size on 2 CPU cores
RETRIEVAL_TIMEOUT_S = 180
CAPTION = {"mode": "caption"}  # the retrieve node's inputs as the demo sets them (tools/demo/run.py)
EXTENSION_NAME = "FashionRAG.Gallery"
VIEWPORT = {"width": 1600, "height": 1000}
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]


# JS helpers run in the page. `app` is ComfyUI's app singleton.
JS_PRELUDE = """
const app = window.comfyAPI.app.app;
const retrieveNode = () => app.graph.nodes.find(n => n.comfyClass === 'FashionRAGTextGarmentRetrieve');
const indexNode = () => app.graph.nodes.find(n => n.comfyClass === 'FashionRAGGarmentIndexLoader');
const widget = (node, name) => node.widgets.find(w => w.name === name);
"""


def js(body: str) -> str:
    """A page function for page.evaluate (may await)."""
    return f"async (arg) => {{ {JS_PRELUDE} {body} }}"


def wait_for(page, body: str, timeout_ms: float = 60_000) -> None:
    """Poll a synchronous page predicate until it holds."""
    page.wait_for_function(f"() => {{ {JS_PRELUDE} {body} }}", timeout=timeout_ms)


def _post(comfy_server, path: str, body: dict) -> None:
    """POST to a ComfyUI route that answers with an empty body (ComfyServer.post parses JSON)."""
    request = urllib.request.Request(
        comfy_server.url + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        assert r.status == 200, (path, r.status)


@pytest.fixture(scope="module")
def browser_page(request, tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(
            "Debian chromium not installed: apt-get install chromium (bash .ci/browser does it)"
        )
    sync_api = pytest.importorskip("playwright.sync_api")
    comfy_server = request.getfixturevalue("comfy_server")  # only once we know a browser exists
    profile = tmp_path_factory.mktemp("chromium-profile")
    # A first visit opens the templates browser over the canvas; a designer closes it once.
    _post(comfy_server, "/settings", {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
                                      "Comfy.Graph.CanvasInfo": False})
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport=VIEWPORT,
        )
        # The "Nodes 2.0" banner would cover the top of the screenshots.
        context.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(60_000)
        console: list[dict] = []
        page.on("console", lambda m: console.append(
            {"type": m.type, "text": m.text, "url": m.location.get("url", "")}))
        page.on("pageerror", lambda e: console.append(
            {"type": "pageerror", "text": f"{e}\n{e.stack or ''}", "url": ""}))
        page.goto(comfy_server.url)
        page.wait_for_function(
            "() => window.comfyAPI?.app?.app?.vueAppReady && window.comfyAPI.app.app.graph"
            " && window.LiteGraph?.registered_node_types?.FashionRAGTextGarmentRetrieve",
            timeout=120_000,
        )
        try:
            yield page, console
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    """Where the screenshots go: a temp folder, never the checkout."""
    folder = tmp_path_factory.mktemp("browser_screenshots")
    print(f"\nbrowser screenshots: {folder}")
    return folder


def _open_template(page) -> None:
    """Templates browser -> our pack's category -> the example's card, as a designer opens it."""
    page.evaluate(js("await app.extensionManager.command.execute('Comfy.BrowseTemplates');"))
    page.get_by_role("button", name=PACK_DIR_NAME).click()
    card = page.locator(f'[data-testid="template-workflow-{WORKFLOW.stem}"]')
    # Its thumbnail is example_workflows/<name>.jpg (the frontend shows it from a blob: URL).
    thumb = card.locator("img").first.element_handle()
    page.wait_for_function("i => i.complete && i.naturalWidth > 0", arg=thumb)
    assert thumb.evaluate("i => i.naturalWidth") == Image.open(WORKFLOW.with_suffix(".jpg")).size[0]
    card.click()
    wait_for(page, "return app.graph.nodes.length > 1 && !!retrieveNode()?.fashionRag "
                   "&& !document.querySelector('.p-dialog');")


def _api(prompt: dict) -> dict:
    """A prompt as the page sends it, without the frontend's display-only `_meta` titles."""
    return {nid: {k: v for k, v in node.items() if k != "_meta"} for nid, node in prompt.items()}


def _expected(**retrieve_inputs) -> dict:
    """The example's API form, with some inputs of the retrieve node changed."""
    api = json.loads(API_FORM.read_text())
    for node in api.values():
        if node["class_type"] == "FashionRAGTextGarmentRetrieve":
            node["inputs"].update(retrieve_inputs)
    return api


def _queue(page, comfy_server, start, timeout_s: float) -> tuple[dict, dict]:
    """Queue from the page (`start(page)` clicks or runs a command), wait for the run to end.

    Returns the body the page POSTed to /prompt and the finished history entry."""
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/prompt")) as info:
        start(page)
    response = info.value
    assert response.status == 200, response.text()[:3000]
    body = response.request.post_data_json
    pid = response.json()["prompt_id"]
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        entry = comfy_server.get(f"/history/{pid}").get(pid)
        if entry and entry.get("status", {}).get("completed") is not None:
            assert entry["status"].get("status_str") == "success", json.dumps(entry["status"])[:3000]
            print(f"[browser] prompt {pid} ran in {time.monotonic() - t0:.1f}s")
            return body, entry
        page.wait_for_timeout(500)
    raise TimeoutError(f"the queued prompt did not finish in {timeout_s}s:\n{comfy_server.log()}")


def run_button(page) -> None:
    """The Run button (queues the whole workflow)."""
    page.locator('[data-testid="queue-button"]').click()


def run_retrieval(page) -> None:
    """Select the index loader and the retrieve node, then "Queue Selected Output Nodes": only
    those outputs and what feeds them execute (the retrieve node is an output node)."""
    page.evaluate(js("""
        app.canvas.deselectAll();
        app.canvas.selectNodes([indexNode(), retrieveNode()]);
        await app.extensionManager.command.execute('Comfy.QueueSelectedOutputNodes');
        app.canvas.deselectAll();"""))


def _cards(page) -> list[dict]:
    return page.evaluate(js("""
        return [...retrieveNode().fashionRag.root.querySelectorAll('.fashion-rag-card')].map(c => ({
          id: c.dataset.garmentId, state: c.dataset.state, rank: c.dataset.rank,
          score: c.querySelector('.fr-score').textContent,
          shownId: c.querySelector('.fr-id').textContent,
          category: c.querySelector('.fr-category').textContent, img: c.querySelector('img')?.src ?? null,
          loaded: !!c.querySelector('img')?.complete && c.querySelector('img').naturalWidth > 0,
        }));"""))


def _gallery(page, k: int) -> list[dict]:
    """The gallery once it shows k cards with their thumbnails loaded."""
    wait_for(page, "return retrieveNode().fashionRag.root.querySelectorAll('.fashion-rag-card')"
                   f".length === {k};")
    wait_for(page, "return [...retrieveNode().fashionRag.root.querySelectorAll('img')]"
                   ".every(i => i.complete && i.naturalWidth > 0);")
    cards = _cards(page)
    assert [c["rank"] for c in cards] == [str(i) for i in range(1, k + 1)], cards
    for c in cards:
        assert c["loaded"], c  # the thumbnail came back from ComfyUI's /view
        assert "type=temp" in c["img"]
        assert math.isfinite(float(c["score"])), c  # cosine, BM25 or fused score, as a number
        assert c["shownId"] == c["id"]
        assert c["category"] in ("upper_body", "lower_body", "dresses"), c
    return cards


def _cards_match_the_run(cards: list[dict], entry: dict, retrieve_id: str) -> None:
    """Each card shows its own garment of the retrieve node's ui output in the server's history
    entry: id, rank, category, score (to 3 decimals) and its own preview image."""
    out = entry["outputs"][retrieve_id]
    garments, images = out["fashion_rag_garments"], out["images"]
    assert len(cards) == len(garments) == len(images), (cards, out)
    for card, garment, image in zip(cards, garments, images, strict=True):
        assert (card["id"], card["rank"], card["category"]) == (
            garment["id"], str(garment["rank"]), garment["category"]), (card, garment)
        assert abs(float(card["score"]) - garment["score"]) <= 0.0005 + 1e-9, (card, garment)
        assert f"filename={image['filename']}" in card["img"], (card, image)


def _undo_steps(page) -> int:
    """Length of the open workflow's undo queue (ComfyUI's change tracker)."""
    tracker = "app.extensionManager.workflow.activeWorkflow.changeTracker"
    return page.evaluate(js(f"return {tracker}.undoQueue.length;"))


def _pins(page) -> list[str]:
    """[pin_ids, exclude_ids] widget values of the retrieve node."""
    return page.evaluate(js("const n = retrieveNode(); return [widget(n, 'pin_ids').value, "
                            "widget(n, 'exclude_ids').value];"))


def _show_graph(page) -> None:
    """Pan/zoom the canvas so the whole graph (galleries, previews) is on screen, at most 1:1,
    clear of the side bar (left), the menus (top) and the canvas controls (bottom right)."""
    page.evaluate("() => { " + FIT_VIEW + " }")  # the thumbnails' view
    page.wait_for_timeout(500)


def _click_empty_canvas(page) -> None:
    """Click the canvas where there is no node (keyboard focus on the graph)."""
    xy = page.evaluate(js("""
        const c = app.canvas, r = c.canvas.getBoundingClientRect();
        for (let sy = r.height * 0.5; sy > 120; sy -= 40)
          for (let sx = r.width - 60; sx > 100; sx -= 40) {
            const [gx, gy] = c.ds.convertOffsetToCanvas([sx, sy]);
            if (!app.graph.getNodeOnPos(gx, gy, app.graph.nodes, 40)) return [r.left + sx, r.top + sy];
          }
        return null;"""))
    assert xy, "no empty spot on the canvas"
    page.mouse.click(*xy)


def _wait_for_previews(page, node_ids: list[str]) -> None:
    """The image previews of these nodes (those not collapsed) have arrived and decoded."""
    wait_for(page, f"return {json.dumps(node_ids)}.map(id => app.graph.getNodeById(+id))"
                   ".filter(n => !n.flags?.collapsed).every(n => n.imgs?.length"
                   " && n.imgs.every(i => i.complete && i.naturalWidth > 0));",
             timeout_ms=120_000)


@pytest.mark.slow  # one full pipeline run
def test_example_workflow_in_the_browser(browser_page, comfy_server, screenshots):
    page, console = browser_page
    api_form = json.loads(API_FORM.read_text())
    retrieve_id = next(i for i, n in api_form.items() if n["class_type"] == "FashionRAGTextGarmentRetrieve")
    index_id = next(i for i, n in api_form.items() if n["class_type"] == "FashionRAGGarmentIndexLoader")
    saves = sorted((i for i, n in api_form.items() if n["class_type"] == "SaveImage"), key=int)
    k = api_form[retrieve_id]["inputs"]["k"]
    assert k >= 2, "this test pins one garment and excludes another: the example needs k >= 2"

    # Templates -> Fashion-RAG -> the example. Before any run: the gallery exists, empty.
    _open_template(page)
    empty = page.evaluate(js("return retrieveNode().fashionRag.root.textContent;"))
    assert empty.startswith("Run the workflow"), empty
    # The prompt the frontend builds from the UI form is exactly the API form we run elsewhere.
    assert _api(page.evaluate(js("return (await app.graphToPrompt()).output;"))) == api_form
    # Caption retrieval, as the demo runs the example (random encoder weights rank by noise): the
    # mode combo set as its own click would, then every prompt from the page carries it.
    page.evaluate(js("const w = widget(retrieveNode(), 'mode'); w.value = arg; w.callback?.(arg);"
                     "app.graph.setDirtyCanvas(true, true);"), CAPTION["mode"])
    assert _api(page.evaluate(js("return (await app.graphToPrompt()).output;"))) == _expected(**CAPTION)

    # Retrieval only: select the loader and the retrieve node, "Queue Selected Output Nodes".
    body, entry = _queue(page, comfy_server, run_retrieval, RETRIEVAL_TIMEOUT_S)
    assert _api(body["prompt"]) == _expected(**CAPTION)
    assert retrieve_id in body["partial_execution_targets"], body["partial_execution_targets"]
    assert set(body["partial_execution_targets"]) <= {retrieve_id, index_id}
    _show_graph(page)
    cards = _gallery(page, k)
    assert all(c["state"] == "none" for c in cards), cards
    # Mutations caught: the rank shown as the score; every card with the first thumbnail.
    _cards_match_the_run(cards, entry, retrieve_id)
    first_ids = [c["id"] for c in cards]

    # Index summary from the loader's ui output.
    summary = page.evaluate(js("return indexNode().fashionRagSummary.root.innerText;"))
    assert "garments" in summary and "encoder:" in summary and "built:" in summary, summary
    items = int(page.evaluate(js("return indexNode().fashionRagSummary.root.dataset.items;")))
    rows = page.evaluate(js("return [...indexNode().fashionRagSummary.root.querySelectorAll('td.fr-num')]"
                            ".map(t => +t.textContent);"))
    assert items > 0 and sum(rows) == items, (items, rows, summary)
    # The table's rows and encoder line are the loader's own (ui output in the server's history).
    # Mutations caught: each row labelled with the index name; the encoder line showing the name.
    index_info = entry["outputs"][index_id]["fashion_rag_index"][0]
    labels = page.evaluate(js("return [...indexNode().fashionRagSummary.root.querySelectorAll('tr')]"
                              ".map(r => r.cells[0].textContent);"))
    assert dict(zip(labels, rows, strict=True)) == index_info["per_category"], (labels, rows, index_info)
    encoder = page.evaluate(js("return indexNode().fashionRagSummary.root.querySelector('.fr-encoder')"
                               ".textContent;"))
    assert encoder == f"encoder: {index_info['encoder']}", (encoder, index_info)

    page.screenshot(path=str(screenshots / "browser_gallery.png"))

    # A real click on the last card pins it; two clicks on the first exclude it.
    last, first = cards[-1]["id"], cards[0]["id"]
    steps_before = _undo_steps(page)
    page.locator(f'.fashion-rag-card[data-garment-id="{last}"]').click()
    page.locator(f'.fashion-rag-card[data-garment-id="{first}"]').click()
    page.locator(f'.fashion-rag-card[data-garment-id="{first}"]').click()
    assert _pins(page) == [last, first]
    # Each click is its own undo step at once. The frontend's change tracker looks at the graph
    # on mouseup, before a click handler runs, and frontend 1.49.6 (ComfyUI 0.33.0) folds a change
    # made within 50 ms of a look into the step before: there Ctrl+Z below undid two clicks.
    # Mutation caught: the gallery's click without its own undo step (2 steps here, not 3).
    assert _undo_steps(page) - steps_before == 3
    states = {c["id"]: c["state"] for c in _cards(page)}
    assert states[last] == "pin" and states[first] == "exclude"
    page.screenshot(path=str(screenshots / "browser_gallery_pinned.png"))

    # Ctrl+Z undoes the last click (ComfyUI rebuilds the nodes; the gallery comes back), Ctrl+Y redoes it.
    _click_empty_canvas(page)
    page.keyboard.press("Control+z")
    wait_for(page, f"return widget(retrieveNode(), 'exclude_ids').value === '' && "
                   f"widget(retrieveNode(), 'pin_ids').value === '{last}, {first}';")
    states = {c["id"]: c["state"] for c in _cards(page)}
    assert len(states) == k and states[first] == states[last] == "pin", states
    page.keyboard.press("Control+y")
    wait_for(page, f"return widget(retrieveNode(), 'exclude_ids').value === '{first}';")
    assert _pins(page) == [last, first]

    # Save -> reload the workflow: the pins are part of it and of the prompt it queues.
    # As a saved .json file holds it (JSON drops undefined fields; a Python round trip would not).
    saved = page.evaluate(js("return JSON.stringify(app.graph.serialize());"))
    node = next(n for n in json.loads(saved)["nodes"] if n["type"] == "FashionRAGTextGarmentRetrieve")
    assert last in node["widgets_values"] and first in node["widgets_values"], node["widgets_values"]
    page.evaluate(js("await app.loadGraphData(JSON.parse(arg));"), saved)
    wait_for(page, "return !!retrieveNode()?.fashionRag;")
    assert _pins(page) == [last, first]
    chips = page.evaluate(js("const root = retrieveNode().fashionRag.root;"
                             "return [...root.querySelectorAll('.fashion-rag-chip')]"
                             ".map(c => [c.dataset.garmentId, c.dataset.state]);"))
    assert chips == [[last, "pin"], [first, "exclude"]]
    _show_graph(page)
    page.screenshot(path=str(screenshots / "browser_gallery_reloaded.png"))
    prompt = page.evaluate(js("return (await app.graphToPrompt()).output;"))
    assert _api(prompt) == _expected(**CAPTION, pin_ids=last, exclude_ids=first)
    assert not any("fashion_rag_gallery" in json.dumps(n["inputs"]) for n in prompt.values())

    # The next retrieval honours them: the excluded garment is gone, the pinned one is there, marked.
    # (Retrieval only: the pins' effect on inversion + inpainting is the same graph run again.)
    body, entry = _queue(page, comfy_server, run_retrieval, RETRIEVAL_TIMEOUT_S)
    assert _api(body["prompt"]) == _expected(**CAPTION, pin_ids=last, exclude_ids=first)
    cards = _gallery(page, k)
    _cards_match_the_run(cards, entry, retrieve_id)
    states = {c["id"]: c["state"] for c in cards}
    assert first not in states and states.get(last) == "pin", states
    assert cards[0]["id"] == last and cards[0]["rank"] == "1", cards  # pins come first
    _show_graph(page)
    page.screenshot(path=str(screenshots / "browser_gallery_rerun.png"))

    # Clear them from the gallery (pin -> exclude -> clear on the card; the excluded one's chip).
    page.locator(f'.fashion-rag-card[data-garment-id="{last}"]').click()
    page.locator(f'.fashion-rag-card[data-garment-id="{last}"]').click()
    page.locator(f'.fashion-rag-chip[data-garment-id="{first}"]').click()
    assert _pins(page) == ["", ""]

    # The full pipeline from the Run button: the page sends exactly the example's API form
    # (caption retrieval), the prompt the demo command sends.
    body, entry = _queue(page, comfy_server, run_button, FULL_RUN_TIMEOUT_S)
    assert _api(body["prompt"]) == _expected(**CAPTION) == demo_prompt(api_form)
    assert not body.get("partial_execution_targets"), body["partial_execution_targets"]
    for save in saves:
        images = entry["outputs"].get(save, {}).get("images", [])
        assert images and all(i["type"] == "output" for i in images), (save, entry["outputs"].get(save))
    cards = _gallery(page, k)
    assert [(c["id"], c["state"]) for c in cards] == [(i, "none") for i in first_ids], cards
    _show_graph(page)
    _wait_for_previews(page, saves)
    page.screenshot(path=str(screenshots / "browser_example_run.png"))

    # Nothing the designer would have to dismiss: no error or warning toast, no dialog (e.g. an invalid
    # workflow alert after the reload, the templates browser left open).
    popups = page.evaluate("() => [...document.querySelectorAll("
                           "'.p-dialog, .p-toast-message-error, .p-toast-message-warn')]"
                           ".filter(e => e.offsetParent !== null).map(e => e.innerText)")
    assert not popups, popups

    # No console errors that come from our extension or our files (others are listed if this fails).
    ours = [m for m in console if m["type"] in ("error", "pageerror", "warning")
            and ("fashion_rag" in (m["text"] + m["url"]).lower() or EXTENSION_NAME in m["text"])]
    assert not ours, ours
    registered = page.evaluate(js("return app.extensions.map(e => e.name);"))
    assert EXTENSION_NAME in registered


def test_every_node_has_docs_the_frontend_can_fetch(comfy_server):
    """The frontend asks /extensions/<pack>/docs/<NodeId>.md for a custom node's help page."""
    info = comfy_server.get("/object_info")
    ours = {name: i for name, i in info.items() if name.startswith("FashionRAG")}
    assert len(ours) >= 10, sorted(ours)
    for name, node in ours.items():
        module = node["python_module"].replace("\\", "/").split(".")
        assert module[0] == "custom_nodes", node["python_module"]
        url = f"/extensions/{module[1].split('@')[0]}/docs/{name}.md"
        with urllib.request.urlopen(comfy_server.url + url, timeout=30) as r:
            text = r.read().decode()
        assert text.startswith("# "), (url, text[:80])
        inputs = [n for group in ("required", "optional") for n in node["input"].get(group, {})]
        undocumented = [n for n in inputs if f"`{n}`" not in text]
        assert not undocumented, f"{name}.md does not mention inputs {undocumented}"
    with urllib.request.urlopen(comfy_server.url + f"/extensions/{module[1]}/js/fashion_rag.js") as r:
        assert b"registerExtension" in r.read()
