"""The repaint mask of a Dress Code test pair, built from its label map the way the reference's
evaluation builds it (docs/evaluation.md, "Masks").

Inputs are the human-parsing label map (Dress Code's ids, `LABELS`) and the 18 keypoints, both
in the 384x512 frame the reference resizes everything to. The region that must stay as it is
("keep") is worked out first:

1. fixed parts, never repainted: hair, hat, sunglasses, scarf, bag, shoes; for upper_body also
   skirt and trousers, for lower_body also the upper clothes and both arms;
2. the garment area: dresses = dress + legs, upper_body = upper clothes, lower_body = trousers +
   legs; for dresses and upper_body also a thick polyline (45 px, PIL's "curve" joints) through
   wrists, elbows and shoulders (an arm whose wrist is missing is left out), and the part of the
   head/neck labels below the shoulder line shifted up by 20 px; the garment area grows by 10 px
   (a 5x5 square, five times);
3. changeable = background plus every labelled pixel that is not fixed (computed before step 4);
4. for dresses and upper_body, the arm pixels outside the polyline (hands) become fixed, and so
   does the head above the shifted shoulder line;
5. keep = (changeable minus the grown garment area) or fixed; `mask` = not keep.

`bounding_box` (the reference's default, and what its evaluation actually uses) is the bounding
box of `mask`, minus the fixed parts. 1 = repaint, as everywhere in the pack.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ..categories import CATEGORIES

MASK_TYPES: tuple[str, ...] = ("bounding_box", "mask")

# Dress Code's human-parsing label ids.
LABELS: dict[str, int] = {
    "background": 0, "hat": 1, "hair": 2, "sunglasses": 3, "upper_clothes": 4, "skirt": 5, "pants": 6,
    "dress": 7, "belt": 8, "left_shoe": 9, "right_shoe": 10, "head": 11, "left_leg": 12, "right_leg": 13,
    "left_arm": 14, "right_arm": 15, "bag": 16, "scarf": 17,
}
_HEAD = ("hat", "hair", "sunglasses", "head")
_ALWAYS_FIXED = ("hair", "left_shoe", "right_shoe", "hat", "sunglasses", "scarf", "bag")
_ARMS = ("left_arm", "right_arm")
_LEGS = ("left_leg", "right_leg")
_GARMENT = {"dresses": ("dress", *_LEGS), "upper_body": ("upper_clothes",), "lower_body": ("pants", *_LEGS)}
_ALSO_FIXED = {"dresses": (), "upper_body": ("skirt", "pants"), "lower_body": ("upper_clothes", *_ARMS)}

ARM_LINE_WIDTH = 45  # px, whatever the image height (the reference does not scale it)
NECK_SHIFT = 20  # px: the shoulder line moved up by this much separates head from neck
GROW_STEPS, GROW_KERNEL = 5, 5  # the garment area grows 5 times by a 5x5 square

# COCO-18 indices the arm polyline and the shoulder line use.
_R_SHOULDER, _R_ELBOW, _R_WRIST, _L_SHOULDER, _L_ELBOW, _L_WRIST = 2, 3, 4, 5, 6, 7


class MaskError(ValueError):
    """A label map or keypoints that give no usable mask (the message says which and why)."""


def _labelled(parse: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    return np.isin(parse, [LABELS[n] for n in names])


def _missing(point: np.ndarray) -> bool:
    # The arm rule's own test: both coordinates at most 1 px (Dress Code writes 0, 0).
    return bool(point[0] <= 1.0 and point[1] <= 1.0)


def arm_polyline(points: np.ndarray) -> list[np.ndarray]:
    """The keypoints the arm line runs through, in order: left wrist, elbow, shoulder, then the right
    side mirrored; a side whose wrist is missing ends at its elbow, or at the shoulder when that
    is missing too (only one side is shortened: the right one when both wrists are missing)."""
    sr, sl = points[_R_SHOULDER], points[_L_SHOULDER]
    er, el = points[_R_ELBOW], points[_L_ELBOW]
    wr, wl = points[_R_WRIST], points[_L_WRIST]
    if _missing(wr):
        right = [] if _missing(er) else [er]
        return [wl, el, sl, sr, *right]
    if _missing(wl):
        left = [] if _missing(el) else [el]
        return [*left, sl, sr, er, wr]
    return [wl, el, sl, sr, er, wr]


def draw_arms(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """[H, W] bool: the thick arm polyline (PIL draws it, as the reference does)."""
    # Coordinates are truncated to unsigned 16-bit integers before drawing, as the reference does.
    flat = np.concatenate(arm_polyline(points)).astype(np.uint16).tolist()
    canvas = Image.new("L", (width, height))
    ImageDraw.Draw(canvas).line(flat, fill=255, width=ARM_LINE_WIDTH, joint="curve")
    return np.asarray(canvas) > 0


def below_shoulder_line(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """[H, W] bool: the rows from the shoulder line (fitted through both shoulders by least
    squares, moved up NECK_SHIFT px) down, per column, with Python's slicing rules as the
    reference applies them (a start row truncated toward zero; a negative one counts from the
    bottom)."""
    xs = np.array([points[_R_SHOULDER][0], points[_L_SHOULDER][0]], dtype=np.float64)
    ys = np.array([points[_R_SHOULDER][1], points[_L_SHOULDER][1]], dtype=np.float64)
    slope, offset = np.linalg.lstsq(np.stack([xs, np.ones(2)], axis=1), ys, rcond=None)[0]
    below = np.zeros((height, width), dtype=bool)
    for col in range(width):
        start = int(col * slope + offset - NECK_SHIFT * height / 512)
        below[start:, col] = True
    return below


def label_map_mask(parse: np.ndarray, keypoints: np.ndarray, category: str,
                   mask_type: str = "bounding_box") -> np.ndarray:
    """[H, W] bool repaint mask of one person (module docstring). `parse` holds label ids [H, W];
    `keypoints` [18, 2+] are pixel (x, y) in the same frame, scaled as the reference scales them
    (both coordinates by H / 512)."""
    if category not in CATEGORIES:
        raise MaskError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
    if mask_type not in MASK_TYPES:
        raise MaskError(f"unknown mask type {mask_type!r}; expected one of {', '.join(MASK_TYPES)}")
    parse = np.asarray(parse)
    height, width = parse.shape
    points = np.asarray(keypoints, dtype=np.float64)[:, :2] * (height / 512.0)

    fixed = _labelled(parse, _ALWAYS_FIXED + _ALSO_FIXED[category])
    changeable = (parse == LABELS["background"]) | ((parse != 0) & ~fixed)
    garment = _labelled(parse, _GARMENT[category])
    head = _labelled(parse, _HEAD)
    if category in ("dresses", "upper_body"):
        arms_drawn = draw_arms(points, width, height)
        fixed |= _labelled(parse, _ARMS) & ~arms_drawn  # the hands
        head_above = head & ~below_shoulder_line(points, width, height)
        garment |= arms_drawn | (head & ~head_above)  # the neck goes with the garment
    else:
        head_above = head
    fixed |= head_above
    grown = ndimage.binary_dilation(garment, np.ones((GROW_KERNEL, GROW_KERNEL), bool), GROW_STEPS)
    keep = (changeable & ~grown) | fixed
    mask = ~keep
    if mask_type == "mask":
        return mask
    rows, cols = np.nonzero(mask)
    if not len(rows):
        raise MaskError("the label map leaves nothing to repaint (no garment, arms or background "
                        "pixels outside the fixed parts)")
    box = np.zeros_like(mask)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    return box & ~fixed
