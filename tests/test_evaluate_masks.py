"""Dress Code masks from label maps (fashion_rag/evaluation/dresscode_mask.py) against the reference's
recipe, written out here step by step in the reference's own operations (float sums of label
indicators, PIL's thick line, torchvision's masks_to_boxes, a 21x21 maximum filter for its five
5x5 dilations), on hand-made label maps: one case per category, both mask types, plus box corners
counted by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from scipy import ndimage
from torchvision.ops import masks_to_boxes

from fashion_rag.evaluation.dresscode_mask import MaskError, label_map_mask

H, W = 512, 384

# Keypoints (x, y) of a person facing the camera, COCO-18 order, in the 384x512 frame.
POSE = np.array([
    (192, 72), (192, 118), (146, 124), (126, 198), (116, 268), (238, 124), (258, 198), (268, 268),
    (166, 268), (162, 372), (160, 470), (218, 268), (222, 372), (224, 470), (183, 62), (201, 62),
    (172, 68), (212, 68)], dtype=np.float64)


def recipe(parse: np.ndarray, kp: np.ndarray, category: str, mask_type: str) -> np.ndarray:
    """The reference's dataset code for the inpainting mask, transcribed (labels by number), at the
    label map's own size."""
    p = parse
    h, w = p.shape
    head = sum((p == v).astype(np.float32) for v in (1, 2, 3, 11))
    fixed = sum((p == v).astype(np.float32) for v in (2, 9, 10, 1, 3, 17, 16))
    changeable = (p == 0).astype(np.float32)
    arms = (p == 14).astype(np.float32) + (p == 15).astype(np.float32)
    if category == "dresses":
        garment = (p == 7).astype(np.float32) + (p == 12) + (p == 13)
    elif category == "upper_body":
        garment = (p == 4).astype(np.float32)
        fixed = fixed + (p == 5) + (p == 6)
    else:
        garment = (p == 6).astype(np.float32) + (p == 12) + (p == 13)
        fixed = fixed + (p == 4) + (p == 14) + (p == 15)
    changeable = changeable + np.logical_and(p, np.logical_not(fixed))

    scale = h / 512.0
    pt = {i: np.multiply(tuple(kp[i][:2]), scale) for i in range(2, 8)}
    canvas = Image.new("L", (w, h))
    draw = ImageDraw.Draw(canvas)
    sr, er, wr, sl, el, wl = pt[2], pt[3], pt[4], pt[5], pt[6], pt[7]
    if wr[0] <= 1.0 and wr[1] <= 1.0:
        seq = (wl, el, sl, sr) if er[0] <= 1.0 and er[1] <= 1.0 else (wl, el, sl, sr, er)
    elif wl[0] <= 1.0 and wl[1] <= 1.0:
        seq = (sl, sr, er, wr) if el[0] <= 1.0 and el[1] <= 1.0 else (el, sl, sr, er, wr)
    else:
        seq = (wl, el, sl, sr, er, wr)
    draw.line(np.concatenate(seq).astype(np.uint16).tolist(), "white", 45, "curve")
    drawn = np.array(canvas)
    hands = np.logical_and(np.logical_not(drawn), arms)
    if category in ("dresses", "upper_body"):
        garment = garment + drawn
        fixed = fixed + hands

    head2 = head.copy()
    if category in ("dresses", "upper_body"):
        xs, ys = zip(pt[2], pt[5], strict=True)
        m, c = np.linalg.lstsq(np.vstack([xs, np.ones(2)]).T, ys, rcond=None)[0]
        for i in range(w):
            head2[int(i * m + c - 20 * scale):, i] = 0
    fixed = np.logical_or(fixed, head2)
    garment = garment + np.logical_or(garment, np.logical_and(head, np.logical_not(head2)))
    garment = ndimage.maximum_filter(garment, size=21, mode="constant", cval=0)  # five 5x5 dilations
    keep = np.logical_and(changeable, np.logical_not(garment))
    inpaint = torch.from_numpy(1 - np.logical_or(keep, fixed).astype(np.float32))
    if mask_type == "bounding_box":
        x0, y0, x1, y1 = masks_to_boxes(inpaint[None])[0].int().tolist()
        inside = torch.from_numpy(fixed[y0:y1 + 1, x0:x1 + 1])
        inpaint[y0:y1 + 1, x0:x1 + 1] = torch.logical_not(inside).float()
    return inpaint.numpy() > 0


def person(category: str) -> np.ndarray:
    """A hand-made label map around POSE: hair and face over the shoulder line, arms beyond the
    wrists (hands), shoes, a bag, and the category's garment (plus a skirt for the top's case)."""
    p = np.zeros((H, W), dtype=np.uint8)
    p[40:60, 165:220] = 2  # hair
    p[60:135, 170:215] = 11  # face and neck, down past the shoulder line
    p[125:270, 100:285] = 4 if category != "dresses" else 7
    p[190:300, 105:125] = 15  # right forearm, reaching past the wrist (a hand below y 290)
    p[190:300, 260:280] = 14
    if category == "dresses":
        p[270:380, 140:245] = 7
        p[380:470, 150:235] = 12
    elif category == "upper_body":
        p[270:380, 140:245] = 5  # a skirt: fixed when the top is repainted
        p[380:470, 150:235] = 13
    else:
        p[270:470, 140:245] = 6
    p[470:485, 140:175] = 10
    p[470:485, 205:240] = 9
    p[300:360, 300:340] = 16  # a bag
    return p


@pytest.mark.parametrize("mask_type", ["bounding_box", "mask"])
@pytest.mark.parametrize("category", ["dresses", "upper_body", "lower_body"])
def test_label_map_masks_follow_the_reference_recipe(category, mask_type):
    parse = person(category)
    ours = label_map_mask(parse, POSE, category, mask_type)
    expected = recipe(parse, POSE, category, mask_type)
    assert ours.shape == (H, W) and ours.dtype == bool
    assert 1000 < expected.sum() < H * W / 2  # a real region, not an empty or full mask
    np.testing.assert_array_equal(ours, expected)


def test_a_missing_wrist_shortens_the_arm_line():
    pose = POSE.copy()
    pose[4] = 0  # right wrist missing: the line ends at the right elbow
    parse = person("upper_body")
    for mask_type in ("bounding_box", "mask"):
        np.testing.assert_array_equal(label_map_mask(parse, pose, "upper_body", mask_type),
                                      recipe(parse, pose, "upper_body", mask_type))
    assert (label_map_mask(parse, pose, "upper_body", "mask") != label_map_mask(parse, POSE, "upper_body",
                                                                                 "mask")).any()


def test_missing_shoulders_put_the_shoulder_line_at_the_top():
    """Both shoulders missing (0, 0): the line is y = 0, moved up 20 px; the reference's slice from
    row -20 then cuts the head at the image's last 20 rows, not at the top."""
    pose = POSE.copy()
    pose[[2, 5]] = 0
    parse = person("dresses")
    parse[495:512, 20:60] = 11  # a head label in the last rows (a hand-held face photo, say)
    for mask_type in ("bounding_box", "mask"):
        ours = label_map_mask(parse, pose, "dresses", mask_type)
        np.testing.assert_array_equal(ours, recipe(parse, pose, "dresses", mask_type))
    mask = label_map_mask(parse, pose, "dresses", "mask")
    assert mask[500, 40] and not mask[100, 192]  # the bottom head pixels repainted, the face kept


def test_box_corners_counted_by_hand():
    """Trousers alone (no arm line or neck rule for lower_body): the box is the trousers grown by 10 px
    on every side, minus the shoes inside it."""
    p = np.zeros((H, W), dtype=np.uint8)
    p[300:400, 150:250] = 6
    p[405:415, 150:180] = 9  # a shoe inside the grown box: fixed
    box = label_map_mask(p, POSE, "lower_body", "bounding_box")
    rows, cols = np.nonzero(box)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (290, 409, 140, 259)
    assert not box[405:410, 150:180].any() and box[405:410, 181:259].all()
    mask = label_map_mask(p, POSE, "lower_body", "mask")
    assert mask[290, 140] and not mask[289, 140] and not mask[290, 139]  # the 21x21 square's corner
    assert mask.sum() == 120 * 120 - 5 * 30  # grown trousers minus the shoe pixels inside


def test_nothing_to_repaint_is_an_error():
    everything_fixed = np.full((H, W), 2, dtype=np.uint8)  # all hair
    with pytest.raises(MaskError, match="nothing to repaint"):
        label_map_mask(everything_fixed, POSE, "lower_body", "bounding_box")


# --- boundaries of the recipe, one per rule (mutation pass) ----------------------------------------


def _same_as_recipe(parse, pose, category, mask_types=("bounding_box", "mask")):
    for mask_type in mask_types:
        np.testing.assert_array_equal(label_map_mask(parse, pose, category, mask_type),
                                      recipe(parse, pose, category, mask_type))


def test_a_wrist_at_exactly_one_pixel_is_missing():
    """The arm rule's missing test is x <= 1 and y <= 1: a wrist at (1.0, 1.0) is left out.
    Mutation caught: the arm rule's `<= 1.0` made `< 1.0` (the line ran to the corner)."""
    pose = POSE.copy()
    pose[4] = (1.0, 1.0)
    parse = person("upper_body")
    _same_as_recipe(parse, pose, "upper_body", ("mask",))
    assert not label_map_mask(parse, pose, "upper_body", "mask")[5, 5]  # no line to the corner: kept


def test_a_missing_left_wrist_and_elbow_start_the_line_at_the_shoulder():
    """Left wrist and elbow missing: the line is shoulder, shoulder, elbow, wrist (no point at 0, 0).
    Mutation caught: a missing left elbow kept in the line."""
    pose = POSE.copy()
    pose[[6, 7]] = 0
    _same_as_recipe(person("dresses"), pose, "dresses", ("mask",))


def test_arm_coordinates_are_truncated_not_rounded():
    """Keypoints 0.7 px off the grid: the reference truncates them (uint16) before PIL draws the line.
    Mutation caught: the arm coordinates rounded instead of truncated."""
    _same_as_recipe(person("upper_body"), POSE + 0.7, "upper_body")


def test_a_shoulder_line_above_the_image_truncates_toward_zero():
    """Shoulders at y 2.5: the start row is int(2.5 - 20) = -17 (Python's truncation), so the
    last 17 rows are 'below the line' and row 494 is not.
    Mutation caught: the start row floored (-18) instead of truncated."""
    pose = POSE.copy()
    pose[2, 1] = pose[5, 1] = 2.5
    parse = person("dresses")
    parse[490:512, 20:60] = 11  # head labels in the last rows
    _same_as_recipe(parse, pose, "dresses", ("mask",))
    mask = label_map_mask(parse, pose, "dresses", "mask")
    assert mask[495, 40] and not mask[494, 40]


def test_a_half_height_label_map_scales_keypoints_and_neck_shift_by_h_over_512():
    """A 256x384 label map (aspect not 3:4): keypoints and the 20 px neck shift are scaled by
    H / 512 = 0.5, as the reference does, not by W / 384.
    Mutation caught: keypoints scaled by W / 384; the neck shift left unscaled."""
    parse = person("upper_body")[::2]
    assert parse.shape == (256, 384)
    _same_as_recipe(parse, POSE, "upper_body")
