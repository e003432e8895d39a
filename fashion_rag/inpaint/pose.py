"""Pose keypoints -> the 18 heatmaps the Fashion-RAG UNet sees, and a skeleton preview.

Keypoints are COCO-18 / OpenPose order (KEYPOINT_NAMES). The reference draws, for a keypoint k
in pixel coordinates of the 384x512 image, exp(-|p - k|^2 / sigma^2) with sigma = 9 (sigma
squared, not 2 sigma^2) over the integer pixel grid p = (column, row), divides by the map's
maximum (+ float32 eps) so the peak is 1, and leaves the channel all zero when x <= 0 and
y <= 0 (a missing keypoint). We reproduce that, including its normalisation.

Accepted inputs (`parse_keypoints`):
- OpenPose JSON: {"people": [{"pose_keypoints_2d": [x, y, c] * 18}], ...}, optionally with
  "canvas_width"/"canvas_height" (what ComfyUI's DWPose/OpenPose preprocessors emit as
  POSE_KEYPOINT: a list of such dicts, one per image), normalised (<= 1) or pixel coordinates;
  BODY_25 (25 points) is mapped to COCO-18;
- Dress Code: {"keypoints": [[x, y, score, id], ...]} in 384x512 pixel coordinates;
- plain lists: [[x, y], ...] or [[x, y, c], ...] (18, 17 = COCO-17, or 25 = BODY_25 points),
  or a flat [x, y, c] * N list.
A confidence of 0 (OpenPose's "not detected") marks a keypoint missing, as do x <= 0 and y <= 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
    "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip",
    "left_knee", "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)
SIGMA = 9.0
DEFAULT_SIZE = (384, 512)  # (width, height) of the reference
DRESSCODE_SIZE = (384, 512)  # Dress Code keypoints are given in this frame

# OpenPose BODY_25 index of each COCO-18 keypoint (BODY_25 adds mid-hip at 8 and feet at 19+).
_FROM_BODY25 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
# COCO-17 (no neck) index of each COCO-18 keypoint; the neck (-1) is the shoulders' midpoint.
_FROM_COCO17 = (0, -1, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)

# Limbs (pairs of COCO-18 indices) and colours of the usual OpenPose rendering.
LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
    (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)


class PoseFormatError(ValueError):
    """Keypoints in a form we cannot read; the message says which forms work."""


@dataclass(frozen=True)
class Keypoints:
    """18 keypoints of one person: xy [18, 2] in the frame `canvas` (width, height) or, when
    `normalized`, in [0, 1]; canvas None means "unknown" (the caller decides)."""

    xy: np.ndarray
    canvas: tuple[int, int] | None = None
    normalized: bool = False

    def present(self) -> np.ndarray:
        return np.any(self.xy > 0, axis=1)

    def to_size(self, size: tuple[int, int]) -> np.ndarray:
        """Pixel coordinates in an image of `size` (width, height); missing stay (0, 0)."""
        w, h = size
        if self.normalized:
            scale = np.array([w, h], dtype=np.float64)
        elif self.canvas is not None:
            scale = np.array([w / self.canvas[0], h / self.canvas[1]], dtype=np.float64)
        else:
            scale = np.ones(2)
        out = self.xy * scale
        out[~self.present()] = 0.0
        return out


_FORMS = ("an OpenPose JSON {'people': [{'pose_keypoints_2d': [x, y, c, ...]}]}, a list of "
          "those (POSE_KEYPOINT), Dress Code's {'keypoints': [[x, y, score, id], ...]}, or a "
          "list of 18 [x, y] pairs")


def _rows(values: Any, where: str) -> np.ndarray:
    """Keypoint rows [N, >=2] from nested or flat [x, y, c] lists."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise PoseFormatError(f"{where}: keypoints are not numbers; expected {_FORMS}") from None
    if arr.ndim == 1:
        if arr.size % 3:
            raise PoseFormatError(
                f"{where}: a flat keypoint list needs [x, y, c] triples, got {arr.size} values")
        arr = arr.reshape(-1, 3)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise PoseFormatError(f"{where}: keypoints have shape {arr.shape}; expected [N, 2+]")
    return arr


def _to_coco18(rows: np.ndarray, use_confidence: bool, where: str) -> np.ndarray:
    xy = rows[:, :2].copy()
    if use_confidence and rows.shape[1] >= 3:
        xy[rows[:, 2] <= 0] = 0.0
    xy[~np.any(xy > 0, axis=1)] = 0.0
    n = len(xy)
    if n == NUM_KEYPOINTS:
        return xy
    if n == 25:
        return xy[list(_FROM_BODY25)]
    if n == 17:
        out = np.zeros((NUM_KEYPOINTS, 2))
        for i, j in enumerate(_FROM_COCO17):
            if j >= 0:
                out[i] = xy[j]
        right, left = xy[6], xy[5]
        if np.any(right > 0) and np.any(left > 0):
            out[1] = (right + left) / 2
        return out
    raise PoseFormatError(
        f"{where}: {n} keypoints; expected 18 (COCO-18/OpenPose), 25 (BODY_25) or 17 (COCO)")


def _canvas(d: dict) -> tuple[int, int] | None:
    w, h = d.get("canvas_width"), d.get("canvas_height")
    return (int(w), int(h)) if w and h else None


def _from_frame(frame: Any, person: int, where: str) -> Keypoints | None:
    """One image's keypoints, or None for a frame without people."""
    if isinstance(frame, dict) and "people" in frame:
        people = frame["people"] or []
        if not people:
            return None
        if person >= len(people):
            raise PoseFormatError(f"{where}: person {person} asked for, but only {len(people)} found")
        p = people[person]
        if not isinstance(p, dict) or not p.get("pose_keypoints_2d"):
            raise PoseFormatError(f"{where}: person {person} has no 'pose_keypoints_2d'")
        xy = _to_coco18(_rows(p["pose_keypoints_2d"], where), True, where)
        return _finish(xy, _canvas(frame))
    if isinstance(frame, dict) and "keypoints" in frame:  # Dress Code: fixed 384x512 frame
        rows = _rows(frame["keypoints"], where)
        return Keypoints(_to_coco18(rows, False, where), _canvas(frame) or DRESSCODE_SIZE)
    if isinstance(frame, (list, tuple)):
        return _finish(_to_coco18(_rows(frame, where), True, where), None)
    raise PoseFormatError(f"{where}: unrecognised keypoint data; expected {_FORMS}")


def _finish(xy: np.ndarray, canvas: tuple[int, int] | None) -> Keypoints:
    # Detectors emit either pixels or [0, 1] fractions; no real pixel pose fits in a 1x1 box.
    present = np.any(xy > 0, axis=1)
    normalized = bool(present.any()) and float(xy[present].max()) <= 1.0
    return Keypoints(xy, canvas, normalized)


def parse_keypoints(data: Any, person: int = 0) -> list[Keypoints]:
    """Keypoints of one person per image from JSON text or already-decoded data.

    A single pose gives a one-element list; POSE_KEYPOINT (a list of frames) gives one per
    frame. Frames without people give all-missing keypoints (zero heatmaps).
    """
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise PoseFormatError(f"keypoints are not valid JSON ({exc}); expected {_FORMS}") from None
    is_frame_list = isinstance(data, (list, tuple)) and data and all(
        isinstance(f, dict) for f in data)
    frames = list(data) if is_frame_list else [data]
    out = []
    for i, frame in enumerate(frames):
        kp = _from_frame(frame, person, f"pose {i}")
        out.append(kp if kp is not None else Keypoints(np.zeros((NUM_KEYPOINTS, 2))))
    return out


def keypoint_heatmaps(points: np.ndarray, size: tuple[int, int] = DEFAULT_SIZE,
                      sigma: float = SIGMA) -> torch.Tensor:
    """[18, H, W] float32 heatmaps for pixel coordinates `points` [18, 2] in an image of
    `size` (width, height), computed as the reference does (see the module docstring)."""
    w, h = size
    cols = np.arange(w, dtype=np.float64)
    rows = np.arange(h, dtype=np.float64)
    eps = float(np.finfo(np.float32).eps)
    maps = np.zeros((len(points), h, w), dtype=np.float64)
    for i, (x, y) in enumerate(np.asarray(points, dtype=np.float64)):
        if not (x > 0 or y > 0):
            continue
        # The Gaussian separates into a column and a row factor: cheap at any size.
        m = np.outer(np.exp(-((rows - y) ** 2) / sigma**2), np.exp(-((cols - x) ** 2) / sigma**2))
        maps[i] = m / (m.max() + eps)
    return torch.from_numpy(maps).float()


def pose_heatmaps(keypoints: list[Keypoints], size: tuple[int, int] = DEFAULT_SIZE,
                  sigma: float = SIGMA) -> torch.Tensor:
    """[B, 18, H, W] heatmaps, one per Keypoints, rescaled into an image of `size` (W, H)."""
    return torch.stack([keypoint_heatmaps(k.to_size(size), size, sigma) for k in keypoints])


def resize_pose(pose: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Heatmaps to another size the way the reference brings them to latent size (bilinear,
    align_corners=False, no antialiasing)."""
    if tuple(pose.shape[-2:]) == (height, width):
        return pose
    return torch.nn.functional.interpolate(pose, size=(height, width), mode="bilinear")


def render_skeleton(points: np.ndarray, size: tuple[int, int] = DEFAULT_SIZE) -> np.ndarray:
    """An OpenPose-style skeleton on black: float32 [H, W, 3] in [0, 1]."""
    from PIL import Image, ImageDraw

    w, h = size
    image = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(image)
    pts = np.asarray(points, dtype=np.float64)
    present = np.any(pts > 0, axis=1)
    scale = max(1.0, math.sqrt(w * h) / math.sqrt(384 * 512))
    width = max(1, round(4 * scale))
    for n, (a, b) in enumerate(LIMBS):
        if present[a] and present[b]:
            colour = tuple(int(c * 0.6) for c in COLOURS[n % len(COLOURS)])
            draw.line([tuple(pts[a]), tuple(pts[b])], fill=colour, width=width)
    r = max(2.0, 4 * scale)
    for i, (x, y) in enumerate(pts):
        if present[i]:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=COLOURS[i])
    return np.asarray(image, dtype=np.float32) / 255.0
