"""Garment mask from keypoints: geometry of the rule in fashion_rag/inpaint/mask.py, and the node."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fashion_rag.inpaint.mask import (
    MaskRegion,
    feather_mask,
    garment_mask,
    garment_region,
    masked_preview,
    rasterize,
)
from tools.demo import person as demo_person

W, H = demo_person.WIDTH, demo_person.HEIGHT
KP = np.array(demo_person.KEYPOINTS, dtype=float)
# COCO-18 / OpenPose keypoint order, written out here rather than taken from the pack, so a wrong
# index in fashion_rag.inpaint.mask (e.g. left and right swapped) cannot agree with its own test.
NOSE, NECK, R_ELBOW, R_WRIST, L_ELBOW, L_WRIST = 0, 1, 3, 4, 6, 7
L_KNEE, R_ANKLE, L_ANKLE = 12, 10, 13
SHOULDERS, HIPS, ANKLES = (2, 5), (8, 11), (10, 13)


def at(mask: torch.Tensor, xy) -> float:
    x, y = xy
    return float(mask[int(round(y)), int(round(x))])


def bbox(mask: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = torch.nonzero(mask >= 0.5, as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def mid(*idx: int) -> np.ndarray:
    return KP[list(idx)].mean(axis=0)


def test_upper_body_covers_torso_and_arms_not_head_hands_legs():
    m = garment_mask(KP, "upper_body", W, H)
    assert set(torch.unique(m).tolist()) == {0.0, 1.0}
    chest = (mid(*SHOULDERS) + mid(*HIPS)) / 2
    for p in (chest, KP[2], KP[5], KP[3], KP[6], mid(*HIPS), KP[NECK]):
        assert at(m, p) == 1.0, p
    for p in (KP[NOSE], KP[14], KP[15], KP[9], KP[12], KP[10], KP[13]):
        assert at(m, p) == 0.0, p
    # Each hand is cut out beyond its own wrist, each forearm kept (mutation caught: a wrist index
    # pointing at a knee in the pack's keypoint order; not caught: the two wrists swapped, which
    # moves only ~900 pixels at the sides of the hands).
    for elbow, wrist in ((R_ELBOW, R_WRIST), (L_ELBOW, L_WRIST)):
        assert at(m, KP[wrist] + 0.3 * (KP[wrist] - KP[elbow])) == 0.0, ("hand", wrist)
        assert at(m, KP[elbow] + 0.5 * (KP[wrist] - KP[elbow])) == 1.0, ("forearm", elbow)
    x0, y0, x1, y1 = bbox(m)
    assert y0 < KP[list(SHOULDERS), 1].min()  # collar above the shoulder keypoints
    assert y1 > KP[list(HIPS), 1].max()  # hem below the hip keypoints
    assert y1 < KP[9, 1]  # but well above the knees
    assert x0 < KP[:, 0][[3, 4]].min() and x1 > KP[:, 0][[6, 7]].max()  # arms included


def test_lower_body_covers_hips_to_ankles_not_chest_or_feet():
    m = garment_mask(KP, "lower_body", W, H)
    for p in (mid(*HIPS), KP[8], KP[11], KP[9], KP[12], (KP[9] + KP[10]) / 2):
        assert at(m, p) == 1.0, p
    chest = (mid(*SHOULDERS) + mid(*HIPS)) / 2
    shoe = KP[L_ANKLE] + 0.4 * (KP[L_ANKLE] - KP[L_KNEE])
    for p in (chest, KP[NECK], KP[NOSE], shoe):
        assert at(m, p) == 0.0, p
    x0, y0, x1, y1 = bbox(m)
    assert chest[1] < y0 < KP[list(HIPS), 1].min()  # waistband above the hip keypoints
    assert y1 >= KP[list(ANKLES), 1].max()


def test_dress_spans_shoulders_to_ankles_minus_head_and_feet():
    m = garment_mask(KP, "dresses", W, H)
    upper = garment_mask(KP, "upper_body", W, H)
    lower = garment_mask(KP, "lower_body", W, H)
    for p in (KP[2], KP[5], mid(*HIPS), KP[9], KP[12]):
        assert at(m, p) == 1.0, p
    for p in (KP[NOSE], KP[R_ANKLE] + 0.4 * (KP[R_ANKLE] - KP[9])):
        assert at(m, p) == 0.0, p
    # The dress box contains both others' boxes (same exclusions): nothing of them is lost.
    assert bool(((upper + lower).clamp(max=1) <= m).all())
    assert m.sum() > upper.sum() and m.sum() > lower.sum()


def test_grow_moves_every_side_by_exactly_grow_pixels():
    b0 = bbox(garment_mask(KP, "lower_body", W, H))
    b1 = bbox(garment_mask(KP, "lower_body", W, H, grow=10))
    b2 = bbox(garment_mask(KP, "lower_body", W, H, grow=-10))
    assert (b1[0], b1[1], b1[2], b1[3]) == (b0[0] - 10, b0[1] - 10, b0[2] + 10, b0[3] + 10)
    assert (b2[0], b2[1], b2[2], b2[3]) == (b0[0] + 10, b0[1] + 10, b0[2] - 10, b0[3] - 10)


def test_grow_does_not_eat_into_the_head():
    m = garment_mask(KP, "upper_body", W, H, grow=60)
    assert at(m, KP[NOSE]) == 0.0
    assert bbox(m)[1] < KP[NOSE][1]  # the box itself did grow past the face


def test_feather_is_a_centred_ramp_that_binarises_back_to_the_hard_mask():
    hard = garment_mask(KP, "upper_body", W, H)
    soft = garment_mask(KP, "upper_body", W, H, feather=16)
    assert torch.equal(soft >= 0.5, hard >= 0.5)
    assert ((soft > 0) & (soft < 1)).any()
    # Along a row through the chest, left edge: monotone ramp 16 px wide around the edge.
    y = int(KP[list(SHOULDERS), 1].mean() + 60)
    row = soft[y]
    x_edge = int(torch.nonzero(hard[y] >= 0.5)[0])
    seg = row[x_edge - 12 : x_edge + 12]
    assert bool((seg[1:] >= seg[:-1]).all())
    ramp = torch.nonzero((row > 0) & (row < 1)).flatten()
    left = ramp[ramp < x_edge + 12]
    assert 14 <= len(left) <= 17, left.tolist()
    assert float(row[x_edge - 1]) < 0.5 <= float(row[x_edge])


def test_feather_leaves_the_image_border_hard():
    mask = torch.zeros(20, 30)
    mask[:, :10] = 1  # touches the top, bottom and left borders
    soft = feather_mask(mask, 6)
    assert torch.equal(soft[:, 0], torch.ones(20))
    assert torch.equal(soft[0, :6], torch.ones(6))


def test_mask_scales_with_the_person():
    small = garment_mask(KP, "dresses", W, H, grow=4, feather=0)
    big = garment_mask(KP * 2, "dresses", W * 2, H * 2, grow=8, feather=0)
    down = torch.nn.functional.interpolate(big[None, None], size=(H, W), mode="area")[0, 0] >= 0.5
    iou = ((down & (small >= 0.5)).sum() / (down | (small >= 0.5)).sum()).item()
    assert iou > 0.98, iou


def test_missing_keypoints_are_skipped_not_drawn_at_the_origin():
    kp = KP.copy()
    kp[R_WRIST] = 0  # OpenPose writes missing points as 0, 0
    m = garment_mask(kp, "upper_body", W, H)
    x0, y0, _, _ = bbox(m)
    assert x0 > 50 and y0 > 50
    assert sum(part == "hand" for part, *_ in garment_region(kp, "upper_body", H).excluded) == 1
    conf = np.concatenate([KP, np.ones((18, 1))], axis=1)
    conf[R_WRIST, 2] = 0  # confidence 0 = missing too
    assert torch.equal(garment_mask(conf, "upper_body", W, H), m)


def test_lower_body_without_ankles_ends_below_the_knees():
    kp = KP.copy()
    kp[list(ANKLES)] = 0
    m = garment_mask(kp, "lower_body", W, H)
    _, _, _, y1 = bbox(m)
    assert KP[9, 1] < y1 < KP[10, 1] - 40


def test_unusable_pose_says_what_is_missing():
    kp = KP.copy()
    kp[list(HIPS)] = 0
    with pytest.raises(ValueError, match="hip"):
        garment_mask(kp, "lower_body", W, H)
    with pytest.raises(ValueError, match="category"):
        garment_mask(KP, "shoes", W, H)


def test_masked_preview_greys_the_repaint_region_only():
    img = torch.rand(1, H, W, 3)
    m = garment_mask(KP, "upper_body", W, H, feather=8)[None]
    out = masked_preview(img, m)
    inside, outside = m[0] == 1, m[0] == 0
    assert torch.allclose(out[0][inside], torch.full_like(out[0][inside], 0.5))
    assert torch.equal(out[0][outside], img[0][outside])


def full_grid_mask(region: MaskRegion, width: int, height: int) -> torch.Tensor:
    """The rule of mask.py restated on the full pixel grid: box test, then every disc's test."""
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    x0, y0, x1, y1 = region.box
    keep = (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
    for _part, cx, cy, r in region.excluded:
        keep &= (xx - cx) ** 2 + (yy - cy) ** 2 > r * r
    return torch.from_numpy(keep.astype(np.float32))


def full_image_feather(hard: np.ndarray, feather: float) -> np.ndarray:
    """feather_mask's ramp restated on the whole image with scipy's chessboard distances."""
    from scipy import ndimage

    inside = ndimage.distance_transform_cdt(hard, metric="chessboard")
    outside = ndimage.distance_transform_cdt(~hard, metric="chessboard")
    value = np.where(hard, 0.5 + (inside - 0.5) / feather, 0.5 - (outside - 0.5) / feather)
    return np.clip(value, 0.0, 1.0).astype(np.float32)


REGIONS = [
    MaskRegion((10.0, 8.0, 50.5, 60.0), (("head", 30.0, 10.0, 3.0), ("hand", 12.25, 40.7, 6.5)), 1.0),
    MaskRegion((-5.0, -3.0, 70.0, 20.0), (("foot", 69.0, 0.0, 12.0),), 1.0),  # touches three borders
    MaskRegion((20.0, 30.0, 21.0, 31.0), (), 1.0),  # 2x2 pixels
    MaskRegion((3.5, 4.5, 60.2, 55.9), (("head", 1e6, 5.0, 2.0), ("hand", 30.0, 30.0, 0.0)), 1.0),
]


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("feather", [0, 1, 2.5, 8, 17])
def test_mask_equals_the_full_grid_rule(region, feather):
    """rasterize tests each disc in its window only and feather_mask works on the mask's bounding
    box: the values must be those of the whole-image computation, bit for bit."""
    hard = rasterize(region, 64, 48)
    assert torch.equal(hard, full_grid_mask(region, 64, 48))
    soft = feather_mask(hard, feather)
    expected = full_image_feather(hard.numpy() >= 0.5, feather) if feather else hard.numpy()
    assert np.array_equal(soft.numpy(), expected)


# --- the ComfyUI node -------------------------------------------------------------------------


def _person_tensor(scale: int = 1) -> torch.Tensor:
    img = demo_person.draw_person().resize((W * scale, H * scale))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]


def test_node_accepts_openpose_and_dress_code_json_and_scales_to_the_image(comfy):
    GarmentMask = comfy.nodes.NODE_CLASS_MAPPINGS["FashionRAGGarmentMask"]
    openpose = demo_person.keypoints_json()
    dresscode = json.dumps({"keypoints": [[x, y, 1.0, i] for i, (x, y) in enumerate(demo_person.KEYPOINTS)]})
    expected = garment_mask(KP, "upper_body", W, H, grow=6, feather=4)
    for text in (openpose, dresscode):
        out = GarmentMask.execute(_person_tensor(), "upper_body", text, 6, 4)
        mask, preview = out.result
        assert mask.shape == (1, H, W) and preview.shape == (1, H, W, 3)
        assert torch.allclose(mask[0], expected)
    # A 2x image with the same 384x512 keypoints: the mask follows the person.
    out = GarmentMask.execute(_person_tensor(2), "upper_body", openpose, 6, 4)
    big = out.result[0][0]
    assert big.shape == (2 * H, 2 * W)
    assert at(big, KP[NOSE] * 2) == 0.0 and at(big, (mid(*SHOULDERS) + mid(*HIPS))) == 1.0


def test_node_runs_in_a_comfyui_prompt(comfy):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": W, "height": H, "batch_size": 1, "color": 0}},
        "2": {"class_type": "FashionRAGGarmentMask", "inputs": {
            "image": ["1", 0], "category": "dresses", "keypoints_json": demo_person.keypoints_json(),
            "grow": 0, "feather": 0}},
        "3": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 0]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    outputs = comfy.run(prompt)
    assert outputs["4"]["images"]


def test_node_category_override_and_batches(comfy):
    GarmentMask = comfy.nodes.NODE_CLASS_MAPPINGS["FashionRAGGarmentMask"]
    images = _person_tensor().repeat(2, 1, 1, 1)
    out = GarmentMask.execute(images, "upper_body", demo_person.keypoints_json(), 0, 0,
                              category_override="skirt")
    mask = out.result[0]
    assert mask.shape == (2, H, W)
    assert torch.equal(mask[0], garment_mask(KP, "lower_body", W, H)) and torch.equal(mask[0], mask[1])
    with pytest.raises(ValueError, match="category_override"):
        GarmentMask.execute(images, "upper_body", demo_person.keypoints_json(), 0, 0, category_override="hat")
    three_poses = json.dumps([json.loads(demo_person.keypoints_json())] * 3)
    with pytest.raises(ValueError, match="3 poses for 2 images"):
        GarmentMask.execute(images, "upper_body", three_poses, 0, 0)


def test_node_rejects_bad_keypoints_with_a_clear_message(comfy):
    GarmentMask = comfy.nodes.NODE_CLASS_MAPPINGS["FashionRAGGarmentMask"]
    with pytest.raises(ValueError, match="keypoints"):
        GarmentMask.execute(_person_tensor(), "upper_body", "not json", 0, 0)


def test_node_refuses_a_batch_beyond_the_budget(comfy):
    """9 images of 4096x4096: mask + preview would be 9 x 4096^2 x 4 x 4 bytes = 2.25 GiB > 2 GiB;
    refused before any mask is drawn (the images are one expanded pixel: no memory)."""
    GarmentMask = comfy.nodes.NODE_CLASS_MAPPINGS["FashionRAGGarmentMask"]
    images = torch.zeros(1, 1, 1, 3).expand(9, 4096, 4096, 3)
    with pytest.raises(ValueError) as err:
        GarmentMask.execute(images, "upper_body", demo_person.keypoints_json(), 0, 0)
    message = str(err.value)
    assert message.startswith("a garment mask of 9 frame(s) at 4096x4096 would take 2.25 GiB"), message
    assert "at most 8 frame(s) fit at 4096x4096" in message


def test_node_one_pose_per_image_masks_each_image_with_its_own(comfy):
    """Two images, two poses (the second the first moved 30 px right, whole pixels): frame 1 is
    frame 0 moved 30 px right (torch.roll; nothing reaches the border), not a copy of either.
    Mutation caught: every pose written into the whole batch (the last pose's mask everywhere)."""
    GarmentMask = comfy.nodes.NODE_CLASS_MAPPINGS["FashionRAGGarmentMask"]
    frame = json.loads(demo_person.keypoints_json())
    moved = json.loads(demo_person.keypoints_json())
    flat = moved["people"][0]["pose_keypoints_2d"]
    moved["people"][0]["pose_keypoints_2d"] = [v + 30 if i % 3 == 0 else v for i, v in enumerate(flat)]
    images = _person_tensor().repeat(2, 1, 1, 1)
    mask = GarmentMask.execute(images, "upper_body", json.dumps([frame, moved]), 0, 0).result[0]
    assert mask.shape == (2, H, W)
    assert mask[0].any() and not mask[0][:, W - 30 :].any()
    assert torch.equal(mask[1], torch.roll(mask[0], 30, dims=1))


def test_node_refuses_fewer_poses_than_images(comfy):
    """2 poses for 3 images (neither one pose for all nor one per image) is an error, not a third
    frame left unmasked. Mutation caught: only more poses than images refused."""
    GarmentMask = comfy.nodes.NODE_CLASS_MAPPINGS["FashionRAGGarmentMask"]
    images = _person_tensor().repeat(3, 1, 1, 1)
    two = json.dumps([json.loads(demo_person.keypoints_json())] * 2)
    with pytest.raises(ValueError, match="2 poses for 3 images: give one pose, or one per image"):
        GarmentMask.execute(images, "upper_body", two, 0, 0)
