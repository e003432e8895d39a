"""Test-only ComfyUI nodes: feed objects built by a test into a prompt, and capture what comes out."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class FRTestObjects:
    """Outputs the CLIP, CLIP_VISION and VAE a test stored under `key` (missing ones as None)."""

    OBJECTS: dict[str, tuple] = {}
    RETURN_TYPES = ("CLIP", "CLIP_VISION", "VAE")
    FUNCTION = "get"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"key": ("STRING", {"default": "tiny"})}}

    def get(self, key):
        return (*self.OBJECTS[key], None, None, None)[:3]


class FRTestCapture:
    """Output node keeping whatever it receives, under its tag; it always runs."""

    RESULTS: dict[str, dict[str, Any]] = {}
    RETURN_TYPES = ()
    FUNCTION = "capture"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"tag": ("STRING", {"default": "x"})},
                "optional": {"positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
                             "latent": ("LATENT",)}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # always run, so each test sees its own result

    def capture(self, tag, **received):
        self.RESULTS[tag] = received
        return {"ui": {"captured": [tag]}}


@contextlib.contextmanager
def probe_nodes(comfy, **objects: tuple) -> Iterator[None]:
    """Register the probe nodes in the in-process ComfyUI while the block runs."""
    FRTestObjects.OBJECTS.update(objects)
    mapping = comfy.nodes.NODE_CLASS_MAPPINGS
    mapping["FRTestObjects"], mapping["FRTestCapture"] = FRTestObjects, FRTestCapture
    try:
        yield
    finally:
        mapping.pop("FRTestObjects", None)
        mapping.pop("FRTestCapture", None)
