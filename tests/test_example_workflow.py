"""The example workflow (text -> retrieve -> invert -> inpaint) through real ComfyUI.

It runs on the random-weight demo models of the real file formats (tools.demo.weights),
through the README's main command (`bash .ci/demo`, i.e. `python -m tools.demo`) against a real server.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tools.demo.contact_sheet import PAD, THUMB_H
from tools.harness import REPO
from tools.thumbnails import CLOSE_UPS, MAX_BYTES, workflow_digest
from workflow_ui import node_info, ui_to_api

API = REPO / "example_workflows" / "api" / "fashion_rag_text_to_tryon.json"
TEMPLATES = sorted(p.stem for p in (REPO / "example_workflows" / "api").glob("*.json"))


@pytest.mark.parametrize("name", TEMPLATES)
def test_ui_form_is_the_api_form(comfy, name):
    """Each template's UI workflow (what users drag in) converts back to exactly the API form we
    run, and every node and default file name of it resolves in real ComfyUI."""
    info = {name: node_info(cls) for name, cls in comfy.nodes.NODE_CLASS_MAPPINGS.items()}
    api = json.loads((REPO / "example_workflows" / "api" / f"{name}.json").read_text())
    ui = json.loads((REPO / "example_workflows" / f"{name}.json").read_text())
    assert ui_to_api(ui, info) == api
    ok, error, outputs, node_errors = comfy.validate(api)
    assert ok and not node_errors, (error, node_errors)


def test_every_example_has_a_thumbnail():
    """ComfyUI's template browser shows example_workflows/*.json with a same-name .jpg."""
    workflows = sorted(REPO.glob("example_workflows/*.json"))
    assert [w.stem for w in workflows] == TEMPLATES
    for wf in workflows:
        thumb = wf.with_suffix(".jpg")
        assert thumb.is_file(), f"{thumb.name} missing"
        assert Image.open(thumb).size[0] >= 256


@pytest.mark.parametrize("name", TEMPLATES)
def test_thumbnail_shows_the_current_workflow(name):
    """tools/thumbnails.py writes the digest of the UI form it ran into each picture's JPEG comment
    (the thumbnail and its close-ups): a template changed after its screenshot (a node, a link, a
    widget value, the layout) fails here until `python -m tools.thumbnails NAME` is run again.
    The pictures stay small (the README shows them all; the repository keeps every version)."""
    ui = json.loads((REPO / "example_workflows" / f"{name}.json").read_text())
    pictures = [REPO / "example_workflows" / f"{name}.jpg"]
    pictures += [picture for (template, _), picture in CLOSE_UPS.items() if template == name]
    for picture in pictures:
        comment = Image.open(picture).info.get("comment", b"").decode()
        assert comment == workflow_digest(ui), f"{picture.name} is stale: python -m tools.thumbnails {name}"
        assert picture.stat().st_size <= MAX_BYTES, f"{picture.name}: {picture.stat().st_size} bytes"


def test_the_digest_tells_one_widget_value_apart():
    """What makes the staleness test above able to fail: one changed widget, another digest."""
    ui = json.loads((REPO / "example_workflows" / f"{TEMPLATES[0]}.json").read_text())
    changed = json.loads(json.dumps(ui))
    node = next(n for n in changed["nodes"] if n.get("widgets_values"))
    node["widgets_values"][0] = f"{node['widgets_values'][0]}x"
    assert workflow_digest(changed) != workflow_digest(ui) == workflow_digest(json.loads(json.dumps(ui)))


def test_example_validates_in_process(comfy):
    """Every node and every default file name of the example resolves in real ComfyUI."""
    api = json.loads(API.read_text())
    ok, error, outputs, node_errors = comfy.validate(api)
    assert ok and not node_errors, (error, node_errors)
    saves = {nid for nid, node in api.items() if node["class_type"] == "SaveImage"}
    assert len(saves) == 4 and saves <= set(outputs)  # result, garments, pose, mask


@pytest.mark.slow
def test_demo_command_runs_the_example(comfy_server, comfy_base, tmp_path):
    """The README's main job, against a real server: outputs + contact sheet are written."""
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.demo", "--server", comfy_server.url,
         "--base", str(comfy_base), "--out", str(out), "--timeout", "1500"],
        cwd=REPO, capture_output=True, text=True, timeout=1600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:] + comfy_server.log()
    result = np.asarray(Image.open(out / "result.png"))
    assert result.shape == (512, 384, 3)
    assert result.std() > 0  # a decoded image, not a blank
    garments = sorted(out.glob("garments_*.png"))
    assert len(garments) == 3
    assert Image.open(garments[0]).size == (384, 512)
    assert (out / "mask.png").is_file() and (out / "pose.png").is_file()
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size[1] == 4 * (THUMB_H + PAD) + PAD  # garments, mask, pose, result rows
