"""Inpainting mask of a garment category from 18 body keypoints (a user convenience).

The reference evaluates with "the bounding box of the garment-region mask minus fixed parts
(head, hair, hands, shoes)". Without a human parser we build the same kind of mask from the
pose alone. The rule, in image pixels (pixel (x, y) is inside a shape when its centre is):

1. Body scale ``s`` = max(shoulder width, half the torso length neck→mid-hip); whichever of
   the two exists, else a sixth of the image height. Every margin below is a multiple of ``s``,
   so the mask scales with the person, not with the image.
2. Garment box, the bounding box of the category's keypoints plus margins:
   - ``upper_body``: shoulders, neck, elbows, wrists, hips; top = highest of shoulders/neck
     − 0.15·s, bottom = lowest hip + 0.2·s (or the wrists, when they hang lower), sides ± 0.2·s.
   - ``lower_body``: hips, knees, ankles; top = highest hip − 0.25·s (waistband), bottom =
     lowest ankle + 0.1·s (else lowest knee + 0.25·s), sides ± 0.25·s.
   - ``dresses``: the union of both: top as upper_body, bottom as lower_body, sides ± 0.2·s
     around arms and legs.
3. ``grow`` px enlarges the box on every side (negative shrinks it).
4. Minus, for every category, the parts the garment never covers:
   - head: a disc at the mean of the face keypoints (nose, eyes, ears), radius
     max(0.33·s, 0.6·|face − neck|), which keeps the chin and hair out of a neckline;
   - hands: per wrist, a disc centred 0.35·forearm beyond the wrist (along elbow→wrist),
     radius max(0.35·forearm, 0.12·s), i.e. from the wrist to 0.7 forearm past it;
     without the elbow a disc of 0.2·s at the wrist;
   - feet: per ankle, a disc centred 0.3·shin beyond the ankle (along knee→ankle), radius
     max(0.3·shin, 0.12·s), so it starts at the ankle and holds the shoe; without the knee a
     disc of 0.2·s centred 0.2·s below the ankle.
5. ``feather`` px: a linear ramp across the edge, ``feather`` px wide and centred on it
   (Chebyshev distance), so ``mask >= 0.5`` is exactly the hard mask of step 4: the UNet,
   which binarises at 0.5, sees the same region, and compositing gets soft edges.

Keypoints follow COCO-18 / OpenPose order (docs/method.md, "Inpainting"), in pixels of the image the
mask is for
(keypoints.py parses the JSON forms and rescales); a keypoint with x <= 0 and y <= 0, a
NaN, or a confidence of 0 is missing. 1 in the mask = repaint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..categories import CATEGORIES
from .keypoints import (
    L_ANKLE,
    L_EAR,
    L_ELBOW,
    L_EYE,
    L_HIP,
    L_KNEE,
    L_SHOULDER,
    L_WRIST,
    NECK,
    NOSE,
    R_ANKLE,
    R_EAR,
    R_ELBOW,
    R_EYE,
    R_HIP,
    R_KNEE,
    R_SHOULDER,
    R_WRIST,
    Keypoints,
)

SHOULDERS = (R_SHOULDER, L_SHOULDER)
ELBOWS = (R_ELBOW, L_ELBOW)
WRISTS = (R_WRIST, L_WRIST)
HIPS = (R_HIP, L_HIP)
KNEES = (R_KNEE, L_KNEE)
ANKLES = (R_ANKLE, L_ANKLE)
FACE = (NOSE, R_EYE, L_EYE, R_EAR, L_EAR)


@dataclass(frozen=True)
class MaskRegion:
    """The shapes of the rule (module docstring): one box minus discs, in image pixels."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1 (inclusive, pixel centres)
    excluded: tuple[tuple[str, float, float, float], ...]  # (part, cx, cy, radius)
    scale: float


def body_scale(kp: Keypoints, height: int) -> float:
    shoulder_width = None
    if kp.has(R_SHOULDER) and kp.has(L_SHOULDER):
        shoulder_width = float(np.linalg.norm(kp.xy[R_SHOULDER] - kp.xy[L_SHOULDER]))
    top = kp.xy[NECK] if kp.has(NECK) else kp.mean(*SHOULDERS)
    hip = kp.mean(*HIPS)
    half_torso = float(np.linalg.norm(top - hip)) / 2 if top is not None and hip is not None else None
    candidates = [v for v in (shoulder_width, half_torso) if v]
    return max(candidates) if candidates else height / 6.0


def _need(kp: Keypoints, category: str, what: str, *idx: int) -> np.ndarray:
    pts = kp.get(*idx)
    if not len(pts):
        raise ValueError(
            f"the {category} mask needs the {what} keypoints, and the pose has none of them; "
            "draw a MASK yourself (any mask works with the inpaint node) or use another pose"
        )
    return pts


def garment_region(keypoints: Keypoints | np.ndarray | Sequence, category: str, height: int,
                   grow: float = 0.0) -> MaskRegion:
    """The box and the excluded discs of the rule (module docstring) for one person."""
    kp = keypoints if isinstance(keypoints, Keypoints) else Keypoints(keypoints)
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
    s = body_scale(kp, height)

    if category in ("upper_body", "dresses"):
        top_pts = _need(kp, category, "shoulder or neck", *SHOULDERS, NECK)
        y0 = top_pts[:, 1].min() - 0.15 * s
    if category == "upper_body":
        pts = kp.get(*SHOULDERS, NECK, *ELBOWS, *WRISTS, *HIPS)
        hips = kp.get(*HIPS)
        bottom = hips[:, 1].max() + 0.2 * s if len(hips) else top_pts[:, 1].max() + 1.5 * s
        wrists = kp.get(*WRISTS)
        y1 = max(bottom, wrists[:, 1].max()) if len(wrists) else bottom
        margin = 0.2 * s
    else:
        ankles, knees = kp.get(*ANKLES), kp.get(*KNEES)
        if len(ankles):
            y1 = ankles[:, 1].max() + 0.1 * s
        elif len(knees):
            y1 = knees[:, 1].max() + 0.25 * s
        else:
            raise ValueError(
                f"the {category} mask needs knee or ankle keypoints, and the pose has none; "
                "draw a MASK yourself (any mask works with the inpaint node)"
            )
        if category == "lower_body":
            hips = _need(kp, category, "hip", *HIPS)
            y0 = hips[:, 1].min() - 0.25 * s
            pts = kp.get(*HIPS, *KNEES, *ANKLES)
            margin = 0.25 * s
        else:
            pts = kp.get(*SHOULDERS, NECK, *ELBOWS, *WRISTS, *HIPS, *KNEES, *ANKLES)
            margin = 0.2 * s
    x0, x1 = pts[:, 0].min() - margin, pts[:, 0].max() + margin
    box = (float(x0 - grow), float(y0 - grow), float(x1 + grow), float(y1 + grow))

    excluded: list[tuple[str, float, float, float]] = []
    face = kp.mean(*FACE)
    if face is not None:
        r = 0.33 * s
        if kp.has(NECK):
            r = max(r, 0.6 * float(np.linalg.norm(face - kp.xy[NECK])))
        excluded.append(("head", float(face[0]), float(face[1]), r))
    # Hands beyond the wrists along the forearm, feet below the ankles along the shin.
    for kind, tip, joint, reach, fallback in (
        ("hand", R_WRIST, R_ELBOW, 0.35, (0.0, 0.0)), ("hand", L_WRIST, L_ELBOW, 0.35, (0.0, 0.0)),
        ("foot", R_ANKLE, R_KNEE, 0.3, (0.0, 0.2 * s)), ("foot", L_ANKLE, L_KNEE, 0.3, (0.0, 0.2 * s)),
    ):
        if not kp.has(tip):
            continue
        t = kp.xy[tip]
        if kp.has(joint):
            d = t - kp.xy[joint]
            c, r = t + reach * d, max(reach * float(np.linalg.norm(d)), 0.12 * s)
        else:
            c, r = t + np.array(fallback), 0.2 * s
        excluded.append((kind, float(c[0]), float(c[1]), r))
    return MaskRegion(box=box, excluded=tuple(excluded), scale=float(s))


def _span(keep: torch.Tensor) -> slice:
    """The slice from the first to the last True of a 1-D bool tensor (empty if none)."""
    idx = torch.nonzero(keep).flatten()
    return slice(int(idx[0]), int(idx[-1]) + 1) if len(idx) else slice(0, 0)


def rasterize(region: MaskRegion, width: int, height: int) -> torch.Tensor:
    """The hard mask [H, W] (float32, 0/1) of a region.

    The box is the outer product of a row and a column test, and each disc is tested only in
    the rows and columns where (x - cx)^2 <= r^2 (resp. y) can hold: outside them
    (x - cx)^2 + (y - cy)^2 > r^2 holds in floating point too (adding a square never rounds
    below it), so the mask equals the full-grid test without [H, W] float64 grids.
    """
    # On the CPU whatever torch's default device is: the mask is computed here, then moved.
    ys = torch.arange(height, dtype=torch.float64, device="cpu")
    xs = torch.arange(width, dtype=torch.float64, device="cpu")
    x0, y0, x1, y1 = region.box
    mask = ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]
    for _part, cx, cy, r in region.excluded:
        dx2, dy2 = (xs - cx) ** 2, (ys - cy) ** 2
        rows, cols = _span(~(dy2 > r * r)), _span(~(dx2 > r * r))
        mask[rows, cols] &= dy2[rows, None] + dx2[None, cols] > r * r
    return mask.to(torch.float32)


def _ramp(hard: np.ndarray, feather: float) -> np.ndarray:
    """The ramp of feather_mask over all of `hard` (it has both values), in float32."""
    from scipy import ndimage

    inside = ndimage.distance_transform_cdt(hard, metric="chessboard")
    outside = ndimage.distance_transform_cdt(~hard, metric="chessboard")
    out = np.empty(hard.shape, dtype=np.float32)
    # float64 as before, but a few million values at a time instead of three full-size arrays.
    step = max(1, (1 << 22) // max(1, hard.shape[1]))
    for r in range(0, hard.shape[0], step):
        rows = slice(r, r + step)
        value = np.where(hard[rows], 0.5 + (inside[rows] - 0.5) / feather,
                         0.5 - (outside[rows] - 0.5) / feather)
        out[rows] = np.clip(value, 0.0, 1.0)
    return out


def feather_mask(mask: torch.Tensor, feather: float) -> torch.Tensor:
    """A linear ramp `feather` px wide centred on the edge of a hard [H, W] mask.

    Pixels at Chebyshev distance k from the other side (1 = touching it) get
    0.5 ± (k − 0.5)/feather, clipped to [0, 1]; so `result >= 0.5` equals `mask >= 0.5`
    exactly. The image border is not an edge.

    Computed on the mask's bounding box plus a margin only: a pixel more than feather/2 + 1
    outside the mask is 0 anyway, and within the margin the nearest pixel of either side lies
    inside the crop (its border rows and columns are outside the mask, or the image's own
    border), so the distances, and the values, are those of the whole image.
    """
    hard = (mask >= 0.5).cpu().numpy()
    if feather <= 0 or hard.all() or not hard.any():
        return torch.from_numpy(hard.astype(np.float32)) if feather > 0 else mask.clone()
    rows, cols = np.flatnonzero(hard.any(axis=1)), np.flatnonzero(hard.any(axis=0))
    pad = math.ceil(feather / 2) + 1
    crop = (slice(max(0, rows[0] - pad), rows[-1] + pad + 1),
            slice(max(0, cols[0] - pad), cols[-1] + pad + 1))
    out = np.zeros(hard.shape, dtype=np.float32)
    out[crop] = _ramp(hard[crop], feather)
    return torch.from_numpy(out)


def garment_mask(keypoints: Keypoints | np.ndarray | Sequence, category: str, width: int, height: int,
                 grow: float = 0.0, feather: float = 0.0) -> torch.Tensor:
    """The garment mask [H, W] float32 in [0, 1] (1 = repaint) for one person."""
    region = garment_region(keypoints, category, height, grow)
    return feather_mask(rasterize(region, width, height), feather)


def masked_preview(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The person as the inpainting UNet sees it: the repaint region filled with mid grey.

    image [B, H, W, 3] in [0, 1], mask [B, H, W]; grey 0.5 is 0 in the UNet's [-1, 1] range,
    which is what `image · (mask < 0.5)` gives there. Soft edges blend.
    """
    m = mask[..., None].to(image.dtype)
    out = image * (1 - m)
    return out.add_(0.5 * m)  # in place: no second image-sized sum
