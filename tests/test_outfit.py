"""The outfit template (example_workflows/fashion_rag_outfit.json) in real ComfyUI, demo weights:
a bottom, then a top over it, both masks and the pose from one set of keypoints."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from PIL import Image
from template_runs import SMALL, SMALL_PERSON, ids_of, probe, saved, small, template

from fashion_rag.inpaint.keypoints import parse_keypoints
from fashion_rag.inpaint.mask import garment_mask

OUTFIT = "fashion_rag_outfit"


def _structure(api: dict) -> tuple[str, list[str], list[str]]:
    """(pose node, the two mask nodes, the two inpaint nodes in pass order)."""
    (pose,) = ids_of(api, "FashionRAGPoseFromKeypoints")
    first, second = ids_of(api, "FashionRAGInpaint")
    if api[first]["inputs"]["image"] != ["6", 0] and api[second]["inputs"]["image"] == ["6", 0]:
        first, second = second, first
    return pose, [api[first]["inputs"]["mask"][0], api[second]["inputs"]["mask"][0]], [first, second]


def _expected_masks(api: dict, pose: str, masks: list[str]) -> list[np.ndarray]:
    """The masks the library makes from the pose node's keypoints, at the run's image size."""
    (kp,) = parse_keypoints(api[pose]["inputs"]["keypoints_json"])
    out = []
    for m in masks:
        inputs = api[m]["inputs"]
        mask = garment_mask(kp.to_size(SMALL), inputs["category"], *SMALL, inputs["grow"], inputs["feather"])
        out.append(mask.numpy() >= 0.5)
    return out


def test_template_shape():
    """Two retrieve -> invert -> inpaint passes; the second repaints the first's result and pastes
    it back outside its own mask; one keypoints source for both masks and the pose."""
    api = template(OUTFIT)
    pose, masks, (first, second) = _structure(api)
    assert api[second]["inputs"]["image"] == [first, 1]
    assert api[first]["inputs"]["paste_back"] is True and api[second]["inputs"]["paste_back"] is True
    assert api[first]["inputs"]["pose"] == api[second]["inputs"]["pose"] == [pose, 0]
    categories = []
    for m in masks:
        inputs = api[m]["inputs"]
        assert inputs["pose_keypoint"] == [pose, 2]  # the pose node's keypoints output
        assert not inputs["keypoints_json"].strip()  # and no pasted copy of its own
        retrieve = api[inputs["category_override"][0]]
        assert retrieve["class_type"] == "FashionRAGTextGarmentRetrieve"
        categories.append(retrieve["inputs"]["category"])
    assert categories == ["lower_body", "upper_body"]


@pytest.mark.slow  # two inpainting passes (demo weights, 96x128, 2 steps)
def test_second_pass_keeps_the_first_outside_its_mask(comfy):
    api = small(template(OUTFIT), comfy, k=1)
    pose, masks, (first, second) = _structure(api)
    save_first = next(i for i in ids_of(api, "SaveImage") if api[i]["inputs"]["images"] == [first, 1])
    save_outfit = next(i for i in ids_of(api, "SaveImage") if api[i]["inputs"]["images"] == [second, 1])
    probes = [probe(api, [m, 0], f"outfit_mask{i}", mask=True) for i, m in enumerate(masks)]

    out = comfy.run(api)
    (step1,) = saved(comfy, out, save_first)
    (outfit,) = saved(comfy, out, save_outfit)
    mask1, mask2 = (saved(comfy, out, p)[0][..., 0] >= 128 for p in probes)
    assert step1.shape == outfit.shape == (SMALL[1], SMALL[0], 3)

    # The masks are the library's masks of the one pose's keypoints, per category.
    expected = _expected_masks(api, pose, masks)
    assert np.array_equal(mask1, expected[0]) and np.array_equal(mask2, expected[1])
    assert (mask1 & mask2).any() and (mask1 & ~mask2).any()  # they overlap at the waist only

    # Pass 2 leaves every pixel outside its mask exactly as pass 1 left it (the bottom stays),
    # and repaints inside it.
    assert np.array_equal(outfit[~mask2], step1[~mask2])
    assert (outfit[mask2] != step1[mask2]).any()
    # Pass 1 kept the person outside its own mask (PNG levels: SaveImage truncates k/255 floats).
    person = np.asarray(Image.open(comfy.base / "input" / SMALL_PERSON).convert("RGB")).astype(int)
    assert np.abs(step1[~mask1].astype(int) - person[~mask1]).max() <= 1
    assert (step1[mask1] != person[mask1]).any()


def test_editing_the_one_keypoint_source_moves_both_masks(comfy):
    """No diffusion: the pose node and the two masks only. Shifting the keypoints in the pose
    node (the only place they are written) moves the lower- and the upper-body mask alike."""
    api = small(template(OUTFIT), comfy, k=1)
    pose, masks, _ = _structure(api)
    keep = {"3", "6", pose, *masks, *(api[m]["inputs"]["category_override"][0] for m in masks)}
    part = copy.deepcopy({i: n for i, n in api.items() if i in keep})
    for m in masks:
        part[m]["inputs"]["image"] = ["6", 0]  # the size only; pass 1's result is not in this graph
    data = json.loads(part[pose]["inputs"]["keypoints_json"])
    flat = data["people"][0]["pose_keypoints_2d"]
    data["people"][0]["pose_keypoints_2d"] = [v + 40 if i % 3 == 0 else v for i, v in enumerate(flat)]
    part[pose]["inputs"]["keypoints_json"] = json.dumps(data)
    probes = [probe(part, [m, 0], f"shifted_mask{i}", mask=True) for i, m in enumerate(masks)]

    out = comfy.run(part)
    got = [saved(comfy, out, p)[0][..., 0] >= 128 for p in probes]
    expected = _expected_masks(part, pose, masks)
    before = _expected_masks(api, pose, masks)
    for g, e, b in zip(got, expected, before, strict=True):
        assert np.array_equal(g, e)
        assert not np.array_equal(g, b)  # both moved with the one source
