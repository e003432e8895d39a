"""The garment-mask rule (docs/method.md, fashion_rag/inpaint/mask.py) against hand-computed shapes.

Every expected box, disc and scale below is worked out by hand from the rule's text for two
poses: the demo person (tools/demo/person.py) and POSE, a narrow-shouldered person with hips
wider than the arms, ankles wider than the hips, short forearms and wrists below the hips, so
that each term of the rule (the torso half-length, the wrists' hem, each margin, each disc's
floor) decides some value. Variants drop keypoints to reach the fall-backs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from fashion_rag.inpaint.mask import feather_mask, garment_mask, garment_region, masked_preview
from tools.demo import person as demo_person

DEMO = np.array(demo_person.KEYPOINTS, dtype=float)

# COCO-18 / OpenPose order, written out: nose, neck, R shoulder/elbow/wrist, L shoulder/elbow/
# wrist, R hip/knee/ankle, L hip/knee/ankle, R eye, L eye, R ear, L ear.
POSE = np.array([
    (100, 20), (100, 50), (80, 60), (70, 260), (70, 300), (120, 60), (130, 260), (130, 300),
    (40, 240), (50, 350), (30, 450), (160, 260), (150, 350), (170, 450),
    (95, 15), (105, 15), (90, 18), (110, 18),
], dtype=float)
# POSE's scale: shoulder width 40 < half the torso: neck (100, 50) to mid-hip (100, 250) is 200,
# so s = 100 (the mean of the shoulders, (100, 60), would give 95).
S = 100.0
ELBOWS, KNEES, ANKLES, WRISTS = (3, 6), (9, 12), (10, 13), (4, 7)
NECK_ONLY = np.zeros((18, 2))
NECK_ONLY[1] = (100.0, 100.0)


def without(kp: np.ndarray, *idx: int) -> np.ndarray:
    out = kp.copy()
    out[list(idx)] = 0.0  # OpenPose's missing keypoint
    return out


# Demo person: s = shoulder width 92 (half torso 75). Face mean (192, 66.4), 51.6 above the neck:
# r = max(0.33 * 92, 0.6 * 51.6) = 30.96. Forearms (-10, 70) and (10, 70), |d| = sqrt(5000):
# centres wrist + 0.35 d, r = 0.35 sqrt(5000) = 24.7487. Shins (-2, 98), (2, 98), |d| = sqrt(9608):
# centres ankle + 0.3 d, r = 0.3 sqrt(9608) = 29.4061.
DEMO_DISCS = (("head", 192.0, 66.4, 30.96), ("hand", 112.5, 292.5, 24.7487), ("hand", 271.5, 292.5, 24.7487),
              ("foot", 159.4, 499.4, 29.4061), ("foot", 224.6, 499.4, 29.4061))
# POSE: face mean (100, 17.2), 32.8 above the neck: r = max(33, 19.68) = 33. Forearms (0, 40):
# r = max(0.35 * 40, 0.12 * 100) = 14, centres 14 below the wrists. Shins (-20, 100), (20, 100),
# |d| = sqrt(10400): centres ankle + 0.3 d, r = 0.3 sqrt(10400) = 30.5941.
POSE_DISCS = (("head", 100.0, 17.2, 33.0), ("hand", 70.0, 314.0, 14.0), ("hand", 130.0, 314.0, 14.0),
              ("foot", 24.0, 480.0, 30.5941), ("foot", 176.0, 480.0, 30.5941))
# Without elbows and knees: a disc of 0.2 s = 20 at each wrist, and 20 below each ankle.
FALLBACK_DISCS = (("head", 100.0, 17.2, 33.0), ("hand", 70.0, 300.0, 20.0), ("hand", 130.0, 300.0, 20.0),
                  ("foot", 30.0, 470.0, 20.0), ("foot", 170.0, 470.0, 20.0))

CASES = {
    # upper: y0 = 118 - 0.15*92, y1 = 268 + 0.2*92 (wrists at 268), x = [116, 268] -+ 0.2*92
    "demo upper": (DEMO, "upper_body", 512, 92.0, (97.6, 104.2, 286.4, 286.4), DEMO_DISCS),
    # lower: y0 = 268 - 0.25*92, y1 = 470 + 0.1*92, x = [160, 224] -+ 0.25*92
    "demo lower": (DEMO, "lower_body", 512, 92.0, (137.0, 245.0, 247.0, 479.2), DEMO_DISCS),
    "demo dress": (DEMO, "dresses", 512, 92.0, (97.6, 104.2, 286.4, 479.2), DEMO_DISCS),
    # upper: y0 = 50 - 15; the wrists (300) hang below the hem (260 + 20); x = hips [40, 160] -+ 20
    "pose upper": (POSE, "upper_body", 600, S, (20.0, 35.0, 180.0, 300.0), POSE_DISCS),
    # no wrists: the hem is the lowest hip + 0.2 s = 280 (the highest would give 260)
    "pose upper, no wrists": (without(POSE, *WRISTS), "upper_body", 600, S, (20.0, 35.0, 180.0, 280.0),
                              POSE_DISCS[:1] + POSE_DISCS[3:]),
    # lower: y0 = highest hip 240 - 25, y1 = 450 + 10, x = ankles [30, 170] -+ 25
    "pose lower": (POSE, "lower_body", 600, S, (5.0, 215.0, 195.0, 460.0), POSE_DISCS),
    # one ankle is enough for the ankle rule (the knees would give 375); x = [30, 160] -+ 25
    "pose lower, one ankle": (without(POSE, 13), "lower_body", 600, S, (5.0, 215.0, 185.0, 460.0),
                              POSE_DISCS[:4]),
    # no ankles: lowest knee + 0.25 s; x = hips and knees [40, 160] -+ 25
    "pose lower, no ankles": (without(POSE, *ANKLES), "lower_body", 600, S, (15.0, 215.0, 185.0, 375.0),
                              POSE_DISCS[:3]),
    # dress: x = ankles [30, 170] -+ 20
    "pose dress": (POSE, "dresses", 600, S, (10.0, 35.0, 190.0, 460.0), POSE_DISCS),
    "pose dress, no elbows or knees": (without(POSE, *ELBOWS, *KNEES), "dresses", 600, S,
                                       (10.0, 35.0, 190.0, 460.0), FALLBACK_DISCS),
    # only the neck: s = 600 / 6 = 100; the hem 1.5 s below the neck; x = 100 -+ 20; no discs
    "neck only": (NECK_ONLY, "upper_body", 600, S, (80.0, 85.0, 120.0, 250.0), ()),
}


@pytest.mark.parametrize("name", list(CASES))
def test_region_equals_the_rule_worked_by_hand(name):
    """Mutations caught: each constant of the rule changed (the 1/6-image-height scale, the half
    torso as a third, the collar 0.1 s, the waistband 0.15 s, the hem 0.2 s, the lower margins 0.2 s,
    the dress margins 0.25 s, the head radius 0.3 s, the left hand reach 0.3, the disc floor 0.2 s,
    the fall-back disc 0.12 s, the no-hip hem 2 s); the hem from the highest hip; the wrists not
    lowering the hem; the smaller of the two scales; the torso from the shoulders' mean; the hips
    or the ankles left out of the box's sides; the ankle rule only with both ankles; the face mean
    without the ears; the left foot's fall-back above the ankle."""
    kp, category, height, scale, box, discs = CASES[name]
    region = garment_region(kp, category, height)
    assert region.scale == pytest.approx(scale, abs=1e-9)
    assert region.box == pytest.approx(box, abs=1e-9)
    assert [d[0] for d in region.excluded] == [d[0] for d in discs]
    for got, want in zip(region.excluded, discs, strict=True):
        assert got[1:] == pytest.approx(want[1:], abs=1e-4), (got, want)


def test_grow_moves_the_box_and_not_the_discs():
    """grow = 7.5 px (off the pixel grid) on POSE's upper-body box (20, 35, 180, 300)."""
    region = garment_region(POSE, "upper_body", 600, grow=7.5)
    assert region.box == pytest.approx((12.5, 27.5, 187.5, 307.5))
    assert region.excluded == garment_region(POSE, "upper_body", 600).excluded


def test_a_missing_part_names_the_category_and_the_part():
    """Mutation caught: the category left out of the message."""
    with pytest.raises(ValueError, match="^the lower_body mask needs the hip keypoints, and the pose has"):
        garment_region(without(POSE, 8, 11), "lower_body", 600)
    with pytest.raises(ValueError, match="^the dresses mask needs the shoulder or neck keypoints"):
        garment_region(without(POSE, 1, 2, 5), "dresses", 600)
    with pytest.raises(ValueError, match="^the dresses mask needs knee or ankle keypoints"):
        garment_region(without(POSE, *KNEES, *ANKLES), "dresses", 600)


def test_feather_zero_returns_the_mask_as_given():
    """feather 0 keeps a soft mask's values (only feather > 0 binarises it, then ramps).
    Mutation caught: feather 0 binarising the mask."""
    mask = torch.tensor([[0.0, 0.3, 0.5], [0.49, 0.51, 1.0]])
    out = feather_mask(mask, 0)
    assert torch.equal(out, mask) and out is not mask


def test_feather_binarises_at_one_half_inclusive():
    """Values 0.5 are inside (the UNet repaints mask >= 0.5). A 5x6 mask whose inside is the 0.5
    pixels of row 2 (cols 1..4), feather 4: inside pixels touch the outside (0.5 + 0.5/4), the
    outside ring is at Chebyshev distance 1 (0.5 - 0.5/4) and rows 0 and 4 at distance 2 (0.125).
    Mutation caught: binarising at > 0.5."""
    mask = torch.zeros(5, 6)
    mask[2, 1:5] = 0.5
    mask[1, 1] = 0.4999999  # just below: outside
    want = np.full((5, 6), 0.125, dtype=np.float32)
    want[1:4, :] = 0.375
    want[2, 1:5] = 0.625
    assert np.array_equal(feather_mask(mask, 4).numpy(), want)


def test_feather_of_a_wide_image_fills_every_row():
    """A mask 3 x 2^21 wide is ramped a row at a time or two (the ramp works in chunks of 2^22
    values): the single inside row (cols 1..W-2) must be 0.5 + 0.5/4 and every other pixel, at
    Chebyshev distance 1, 0.5 - 0.5/4. Mutation caught: a chunk one row short (rows left unset)."""
    w = 1 << 21
    mask = torch.zeros(3, w)
    mask[1, 1:-1] = 1.0
    out = feather_mask(mask, 4).numpy()
    assert np.all(out[1, 1:-1] == 0.625)
    assert np.all(out[[0, 2]] == 0.375) and np.all(out[1, [0, -1]] == 0.375)


def test_feather_matches_scipy_on_the_demo_person():
    """The node's feathered mask = the hard mask ramped with scipy's chessboard distances over
    the whole image (feather 9, odd)."""
    hard = garment_mask(DEMO, "dresses", 384, 512).numpy() >= 0.5
    inside = ndimage.distance_transform_cdt(hard, metric="chessboard")
    outside = ndimage.distance_transform_cdt(~hard, metric="chessboard")
    want = np.clip(np.where(hard, 0.5 + (inside - 0.5) / 9, 0.5 - (outside - 0.5) / 9), 0, 1)
    assert np.array_equal(garment_mask(DEMO, "dresses", 384, 512, feather=9).numpy(), want.astype(np.float32))


def test_masked_preview_blends_soft_edges():
    """A soft mask value m gives image * (1 - m) + 0.5 m (values off the 8-bit grid).
    Mutation caught: the preview binarising the mask."""
    image = torch.tensor([[[[0.1, 0.7, 0.33], [0.9, 0.2, 0.6]]]])  # [1, 1, 2, 3]
    mask = torch.tensor([[[0.25, 0.8]]])
    want = torch.tensor([[[[0.2, 0.65, 0.3725], [0.58, 0.44, 0.52]]]])
    assert torch.allclose(masked_preview(image, mask), want, atol=1e-6)


# --- the node ---------------------------------------------------------------------------------


def test_node_empty_override_and_half_images(comfy):
    """An empty category_override (an unconnected text) keeps the combo's category; a float16
    IMAGE still gives a float32 MASK (ComfyUI's MASK type). Mutations caught: an empty override
    read as a value (refused); the mask in the image's dtype."""
    node = comfy.nodes.NODE_CLASS_MAPPINGS["FashionRAGGarmentMask"]
    image = torch.full((1, 512, 384, 3), 0.3, dtype=torch.float16)
    mask = node.execute(image, "lower_body", demo_person.keypoints_json(), 0, 0,
                        category_override="").result[0]
    assert mask.dtype == torch.float32
    assert torch.equal(mask[0], garment_mask(DEMO, "lower_body", 384, 512))


def test_node_budget_message_gives_width_by_height(comfy):
    """17 images 4096 wide and 2048 high: 17 x 4096 x 2048 x 16 bytes = 2.125 GiB > 2 GiB.
    Mutation caught: the size given to the budget as height x width (the message says 2048x4096)."""
    node = comfy.nodes.NODE_CLASS_MAPPINGS["FashionRAGGarmentMask"]
    images = torch.zeros(1, 1, 1, 3).expand(17, 2048, 4096, 3)
    with pytest.raises(ValueError, match=r"^a garment mask of 17 frame\(s\) at 4096x2048 would take 2.12"):
        node.execute(images, "upper_body", demo_person.keypoints_json(), 0, 0)


def test_node_scales_pixel_keypoints_of_another_canvas(comfy):
    """OpenPose JSON for a 384x512 canvas on a 192x256 image: every keypoint halves, so the mask is
    the rule for DEMO / 2 at 192x256."""
    node = comfy.nodes.NODE_CLASS_MAPPINGS["FashionRAGGarmentMask"]
    image = torch.zeros(1, 256, 192, 3)
    mask = node.execute(image, "upper_body", demo_person.keypoints_json(), 0, 0).result[0]
    assert torch.equal(mask[0], garment_mask(DEMO / 2, "upper_body", 192, 256))
