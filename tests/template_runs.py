"""Run the example_workflows templates in real ComfyUI, small: what the template tests share.

The templates are made for 384x512 people and 50 steps; on 2 CPU cores the full-size demo VAE
alone takes ~30 s per 384x512 image. The tests run the templates' own graphs with the demo
person shrunk to 96x128 (the pose node's width/height follow; the keypoints JSON names its
384x512 frame, so the keypoints rescale), 2 sampling steps, and caption retrieval (the demo
encoder's weights are random).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tools.demo.person import PERSON_FILE, draw_person
from tools.harness import REPO

SMALL = (96, 128)  # width, height: divisible by 8, a 12x16 latent
SMALL_PERSON = "fashion_rag_demo_person_96x128.png"


def template(name: str) -> dict:
    """A template's API form (example_workflows/api/<name>.json)."""
    return json.loads((REPO / "example_workflows" / "api" / f"{name}.json").read_text())


def small_person(comfy) -> Path:
    """The demo person at SMALL size, in the input folder (as SMALL_PERSON)."""
    path = Path(comfy.base) / "input" / SMALL_PERSON
    if not path.exists():
        draw_person().resize(SMALL, Image.LANCZOS).save(path)
    return path


def small(api: dict, comfy, steps: int = 2, **retrieve_inputs) -> dict:
    """The template's graph on the small person, with `steps` steps and caption retrieval."""
    small_person(comfy)
    api = copy.deepcopy(api)
    for node in api.values():
        inputs, kind = node["inputs"], node["class_type"]
        if kind == "LoadImage" and inputs["image"] == PERSON_FILE:
            inputs["image"] = SMALL_PERSON
        elif kind == "FashionRAGPoseFromKeypoints":
            inputs["width"], inputs["height"] = SMALL
        elif kind == "FashionRAGInpaint":
            inputs["steps"] = steps
        elif kind == "FashionRAGTextGarmentRetrieve":
            inputs.update({"mode": "caption", **retrieve_inputs})
    return api


def ids_of(api: dict, class_type: str) -> list[str]:
    """Node ids of one type, in id order."""
    return sorted((i for i, n in api.items() if n["class_type"] == class_type), key=int)


def probe(api: dict, source: list, prefix: str, mask: bool = False) -> str:
    """Add a SaveImage (after MaskToImage for a MASK) of `source` [node id, slot]; its node id."""
    nid = str(max(int(i) for i in api) + 1)
    if mask:
        api[nid] = {"class_type": "MaskToImage", "inputs": {"mask": source}}
        source, nid = [nid, 0], str(int(nid) + 1)
    api[nid] = {"class_type": "SaveImage", "inputs": {"images": source, "filename_prefix": f"test/{prefix}"}}
    return nid


def saved(comfy, outputs: dict, node_id: str) -> list[np.ndarray]:
    """The images a SaveImage node wrote in this run, as uint8 arrays [H, W, 3]."""
    base = Path(comfy.base) / "output"
    return [np.asarray(Image.open(base / i["subfolder"] / i["filename"]).convert("RGB"))
            for i in outputs[node_id]["images"]]


def as_uint8(image: torch.Tensor) -> np.ndarray:
    """An IMAGE [H, W, 3] in [0, 1] as SaveImage stores it."""
    return np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)
