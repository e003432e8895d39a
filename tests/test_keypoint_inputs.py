"""The keypoint inputs the pose and mask nodes share (nodes/keypoint_inputs.py): which frame the
pixel coordinates are read in, and what an empty input says (mutation pass)."""

from __future__ import annotations

import importlib
import json

import pytest
import torch


def _pack(harness, module: str):
    return importlib.import_module(f"{harness.pack.__name__}.{module}")


def _openpose_text(nose: tuple[float, float]) -> str:
    """One person, 18 keypoints in pixels (no canvas): the nose at `nose`, the rest on a row at
    y = 400 (x = 20, 40, ...)."""
    pts = [list(nose)] + [[20.0 * i, 400.0] for i in range(1, 18)]
    return json.dumps({"people": [{"pose_keypoints_2d": [v for x, y in pts for v in (x, y, 1.0)]}]})


def _nose_peak(pose: torch.Tensor) -> tuple[int, int]:
    y, x = divmod(int(pose[0, 0].argmax()), pose.shape[-1])
    return x, y


def test_source_frame_is_width_then_height(comfy_runtime):
    """Pixels of a 384x512 source frame (nose at 192, 128) drawn on a 96x128 target: x scales by
    96/384 = 1/4 and y by 128/512 = 1/4, so the nose peaks at (48, 32). With width and height
    swapped (a 512x384 frame) it would land at (36, 43).
    Mutation caught: the source frame built as (source_height, source_width)."""
    node = _pack(comfy_runtime, "nodes.pose").FashionRAGPoseFromKeypoints
    pose, _, _ = node.execute(_openpose_text((192, 128)), 96, 128, source_width=384, source_height=512)
    assert _nose_peak(pose) == (48, 32)


@pytest.mark.parametrize("width,height", [(384, 0), (0, 512)])
def test_one_source_side_alone_is_ignored(comfy_runtime, width, height):
    """A source frame needs both sides: with one left at 0 the pixel coordinates are read in the
    target frame as they are (nose at 20, 100 on 96x128 stays at 20, 100).
    Mutation caught: `source_width and source_height` loosened to `or` (a 384x0 frame)."""
    node = _pack(comfy_runtime, "nodes.pose").FashionRAGPoseFromKeypoints
    pose, _, _ = node.execute(_openpose_text((20, 100)), 96, 128, source_width=width, source_height=height)
    assert _nose_peak(pose) == (20, 100)


@pytest.mark.parametrize("text", ["", "  \n\t "])
def test_no_keypoints_names_both_inputs_and_each_nodes_way_out(comfy_runtime, text):
    """Nothing connected and no JSON (or only whitespace): one message naming both inputs, ended
    by the remedy of the node asking (pose: leave the pose unconnected; mask: draw the MASK).
    Mutations caught: the node's hint dropped from the message; whitespace-only JSON parsed (a
    "not valid JSON" error instead)."""
    pose = _pack(comfy_runtime, "nodes.pose").FashionRAGPoseFromKeypoints
    with pytest.raises(ValueError) as err:
        pose.execute(text, 96, 128)
    msg = str(err.value)
    assert msg.startswith("No keypoints: connect a POSE_KEYPOINT")
    assert "paste keypoint JSON" in msg
    assert msg.endswith("leave the pose input of the Fashion-RAG inpaint node unconnected.")

    mask = _pack(comfy_runtime, "nodes.mask").FashionRAGGarmentMask
    with pytest.raises(ValueError) as err:
        mask.execute(torch.zeros(1, 16, 8, 3), "upper_body", text, 0, 0)
    assert str(err.value).startswith("No keypoints: connect a POSE_KEYPOINT")
    assert str(err.value).endswith("or draw the MASK yourself (any mask works with the inpaint node).")


def test_person_index_widget_starts_at_the_first_person(comfy_runtime):
    """A node added in the UI reads person 0 unless told otherwise: the widget's default is 0 on
    both nodes (ComfyUI's V1 INPUT_TYPES, as the front end receives it).
    Mutation caught: person_index defaulting to 1 (the second person)."""
    for module, cls in (("nodes.pose", "FashionRAGPoseFromKeypoints"),
                        ("nodes.mask", "FashionRAGGarmentMask")):
        node = getattr(_pack(comfy_runtime, module), cls)
        spec = node.INPUT_TYPES()["optional"]["person_index"]
        assert spec[0] == "INT" and spec[1]["default"] == 0 and spec[1]["min"] == 0
