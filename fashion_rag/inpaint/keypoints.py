"""18 body keypoints (COCO-18 / OpenPose order): the one type the pose heatmaps and the garment
mask share, and the JSON forms it is read from.

A keypoint is *missing* when x <= 0 and y <= 0 (the reference's rule), when it is not finite
(NaN, inf, or null in JSON), or when its detector confidence is 0; missing keypoints are stored
as (0, 0).

Accepted inputs (`parse_keypoints`):
- OpenPose JSON: {"people": [{"pose_keypoints_2d": [x, y, c] * 18}], ...}, optionally with
  "canvas_width"/"canvas_height" (what ComfyUI's DWPose/OpenPose preprocessors emit as
  POSE_KEYPOINT: a list of such dicts, one per image), normalised (<= 1) or pixel coordinates;
  BODY_25 (25 points) is mapped to COCO-18;
- Dress Code: {"keypoints": [[x, y, score, id], ...]} in 384x512 pixel coordinates;
- plain lists: [[x, y], ...] or [[x, y, c], ...] (18, 17 = COCO-17, or 25 = BODY_25 points),
  or a flat [x, y, c] * N list.

Anything else (wrong types, a canvas that is not a whole number of pixels from 1 to MAX_CANVAS,
coordinates beyond MAX_COORDINATE, more than MAX_FRAMES frames or MAX_PEOPLE people, text over
MAX_JSON_BYTES or nested too deeply) is a PoseFormatError: one line naming the field and what it
must be.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..files import MAX_JSON_BYTES
from ..reference import IMAGE_SIZE

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
    "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip",
    "left_knee", "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)
NOSE, NECK = 0, 1
R_SHOULDER, R_ELBOW, R_WRIST = 2, 3, 4
L_SHOULDER, L_ELBOW, L_WRIST = 5, 6, 7
R_HIP, R_KNEE, R_ANKLE = 8, 9, 10
L_HIP, L_KNEE, L_ANKLE = 11, 12, 13
R_EYE, L_EYE, R_EAR, L_EAR = 14, 15, 16, 17

DRESSCODE_SIZE = IMAGE_SIZE  # Dress Code keypoints are given in the reference's frame
MAX_CANVAS = 16384  # pixels per side of the frame that pixel coordinates refer to
MAX_COORDINATE = 1e6  # pixels: a keypoint further off than this is not a measurement
MAX_FRAMES = 1024  # poses (one per image) read at once
MAX_PEOPLE = 256  # people per frame

# OpenPose BODY_25 index of each COCO-18 keypoint (BODY_25 adds mid-hip at 8 and feet at 19+).
_FROM_BODY25 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
# COCO-17 (no neck) index of each COCO-18 keypoint; the neck (-1) is the shoulders' midpoint.
_FROM_COCO17 = (0, -1, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)

_FORMS = ("an OpenPose JSON {'people': [{'pose_keypoints_2d': [x, y, c, ...]}]}, a list of "
          "those (POSE_KEYPOINT), Dress Code's {'keypoints': [[x, y, score, id], ...]}, or a "
          "list of 18 [x, y] pairs")


class PoseFormatError(ValueError):
    """Keypoints in a form we cannot read; the message says which forms work."""


def _missing(rows: np.ndarray) -> np.ndarray:
    """[N] bool: the rule of the module docstring, on [N, 2+] rows (x, y[, confidence])."""
    xy = rows[:, :2]
    missing = ~np.isfinite(xy).all(axis=1) | ((xy[:, 0] <= 0) & (xy[:, 1] <= 0))
    if rows.shape[1] >= 3:
        missing |= np.isfinite(rows[:, 2]) & (rows[:, 2] <= 0)
    return missing


@dataclass(frozen=True)
class Keypoints:
    """One person's 18 keypoints: xy [18, 2] in the frame `canvas` (width, height) or, when
    `normalized`, in [0, 1]; canvas None means "already in the target frame"."""

    xy: np.ndarray
    canvas: tuple[int, int] | None = None
    normalized: bool = False

    def __post_init__(self) -> None:
        rows = np.asarray(self.xy, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[0] != NUM_KEYPOINTS or rows.shape[1] < 2:
            raise ValueError(f"expected 18 keypoints as [18, 2] or [18, 3], got shape {rows.shape}")
        xy = rows[:, :2].copy()
        xy[_missing(rows)] = 0.0
        object.__setattr__(self, "xy", xy)
        if self.canvas is not None and not all(
                isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in self.canvas):
            raise ValueError(f"canvas must be (width, height) in whole pixels >= 1, got {self.canvas}")

    @classmethod
    def none(cls) -> Keypoints:
        """All keypoints missing (a frame without people: zero heatmaps)."""
        return cls(np.zeros((NUM_KEYPOINTS, 2)))

    @property
    def present(self) -> np.ndarray:
        """[18] bool."""
        return ~((self.xy[:, 0] <= 0) & (self.xy[:, 1] <= 0))

    def has(self, i: int) -> bool:
        return bool(self.present[i])

    def get(self, *idx: int) -> np.ndarray:
        """The present ones among `idx`, as [n, 2]."""
        keep = [i for i in idx if self.present[i]]
        return self.xy[keep].reshape(-1, 2)

    def mean(self, *idx: int) -> np.ndarray | None:
        pts = self.get(*idx)
        return pts.mean(axis=0) if len(pts) else None

    def in_frame(self, size: tuple[int, int]) -> Keypoints:
        """The same keypoints in pixels of an image of `size` (width, height)."""
        w, h = size
        if self.normalized:
            scale = np.array([w, h], dtype=np.float64)
        elif self.canvas is not None:
            scale = np.array([w / self.canvas[0], h / self.canvas[1]], dtype=np.float64)
        else:
            scale = np.ones(2)
        xy = self.xy * scale
        xy[~self.present] = 0.0
        return Keypoints(xy)

    def to_size(self, size: tuple[int, int]) -> np.ndarray:
        """Pixel coordinates [18, 2] in an image of `size` (width, height); missing stay (0, 0)."""
        return self.in_frame(size).xy


def _show(value: Any) -> str:
    """A short JSON-like rendering of a bad value for an error message."""
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}" if value else "[]"
    if isinstance(value, dict):
        return "an object" if value else "{}"
    if value is None or isinstance(value, (str, bool, int, float)):
        text = json.dumps(value)
    else:
        text = type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _rows(values: Any, where: str, field: str) -> np.ndarray:
    """Keypoint rows [N, >=2] from nested or flat [x, y, c] lists of numbers (checked one by one:
    numpy would take true, "1.5" or ragged rows without a word)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
        arr = values.astype(np.float64)
    else:
        if not isinstance(values, (list, tuple)) or not values:
            raise PoseFormatError(f"{where}: {field} must be a non-empty list of keypoints, [x, y, c, ...] "
                                  f"or [[x, y], ...], got {_show(values)}")
        if isinstance(values[0], (list, tuple)):
            n = len(values[0])
            for i, row in enumerate(values):
                if not isinstance(row, (list, tuple)) or len(row) != n or n < 2:
                    raise PoseFormatError(f"{where}: {field}[{i}] must be an [x, y, ...] row of {max(n, 2)} "
                                          f"numbers like the first, got {_show(row)}")
                for j, v in enumerate(row):
                    if not (v is None or _is_number(v)):  # null: NaN, a missing value
                        raise PoseFormatError(f"{where}: {field}[{i}][{j}] must be a number, got {_show(v)}")
        else:
            for i, v in enumerate(values):
                if not (v is None or _is_number(v)):
                    raise PoseFormatError(f"{where}: {field}[{i}] must be a number, got {_show(v)}")
        try:
            arr = np.array(values, dtype=np.float64)
        except OverflowError:  # a JSON integer beyond float range
            raise PoseFormatError(f"{where}: {field} holds a number beyond float range; expected pixel "
                                  f"coordinates within ±{MAX_COORDINATE:g}") from None
    if arr.ndim == 1:
        if arr.size % 3:
            raise PoseFormatError(
                f"{where}: a flat keypoint list needs [x, y, c] triples, got {arr.size} values")
        arr = arr.reshape(-1, 3)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise PoseFormatError(f"{where}: keypoints have shape {arr.shape}; expected [N, 2+]")
    xy = arr[:, :2]
    far = np.isfinite(xy) & (np.abs(xy) > MAX_COORDINATE)
    if far.any():
        i = int(np.flatnonzero(far.any(axis=1))[0])
        raise PoseFormatError(
            f"{where}: keypoint {i} of {field} is at ({xy[i, 0]:g}, {xy[i, 1]:g}); coordinates must lie "
            f"within ±{MAX_COORDINATE:g} pixels (a missing keypoint is 0, 0)")
    return arr


def _to_coco18(rows: np.ndarray, use_confidence: bool, where: str) -> np.ndarray:
    xy = rows[:, :2].copy()
    xy[_missing(rows if use_confidence else rows[:, :2])] = 0.0
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
            out[NECK] = (right + left) / 2
        return out
    raise PoseFormatError(
        f"{where}: {n} keypoints; expected 18 (COCO-18/OpenPose), 25 (BODY_25) or 17 (COCO)")


def _canvas_side(value: Any, field: str, where: str) -> int:
    ok = _is_number(value) and math.isfinite(value) and 1 <= value <= MAX_CANVAS and value == int(value)
    if not ok:
        got = ("nothing: give canvas_width and canvas_height together, or neither" if value is None
               else _show(value))
        raise PoseFormatError(f"{where}: {field} must be a whole number of pixels from 1 to {MAX_CANVAS}, "
                              f"got {got}")
    return int(value)


def _canvas(d: dict, where: str) -> tuple[int, int] | None:
    w, h = d.get("canvas_width"), d.get("canvas_height")
    if w is None and h is None:
        return None
    return _canvas_side(w, "canvas_width", where), _canvas_side(h, "canvas_height", where)


def _detected(xy: np.ndarray, canvas: tuple[int, int] | None) -> Keypoints:
    # Detectors emit either pixels or [0, 1] fractions; no real pixel pose fits in a 1x1 box.
    kp = Keypoints(xy, canvas)
    normalized = bool(kp.present.any()) and float(kp.xy[kp.present].max()) <= 1.0
    return Keypoints(kp.xy, canvas, normalized)


def _from_frame(frame: Any, person: int, where: str) -> Keypoints | None:
    """One image's keypoints, or None for a frame without people."""
    if isinstance(frame, dict) and "people" in frame:
        canvas = _canvas(frame, where)
        people = frame["people"] if frame["people"] is not None else []
        if not isinstance(people, (list, tuple)):
            raise PoseFormatError(f"{where}: people must be a list of {{'pose_keypoints_2d': [x, y, c, "
                                  f"...]}} objects, got {_show(people)}")
        if len(people) > MAX_PEOPLE:
            raise PoseFormatError(
                f"{where}: people lists {len(people)} people; at most {MAX_PEOPLE} are read")
        if not people:
            return None
        if person >= len(people):
            raise PoseFormatError(f"{where}: person {person} asked for, but only {len(people)} found")
        p = people[person]
        if not isinstance(p, dict) or not p.get("pose_keypoints_2d"):
            raise PoseFormatError(f"{where}: person {person} has no 'pose_keypoints_2d'")
        rows = _rows(p["pose_keypoints_2d"], where, "pose_keypoints_2d")
        return _detected(_to_coco18(rows, True, where), canvas)
    if isinstance(frame, dict) and "keypoints" in frame:  # Dress Code: fixed 384x512 frame
        canvas = _canvas(frame, where)
        rows = _rows(frame["keypoints"], where, "keypoints")
        return Keypoints(_to_coco18(rows, False, where), canvas or DRESSCODE_SIZE)
    if isinstance(frame, (list, tuple)):
        return _detected(_to_coco18(_rows(frame, where, "keypoints"), True, where), None)
    raise PoseFormatError(f"{where}: unrecognised keypoint data; expected {_FORMS}")


def openpose_frames(people: list[Keypoints], size: tuple[int, int]) -> list[dict[str, Any]]:
    """POSE_KEYPOINT (what DWPose/OpenPose estimators emit): one OpenPose frame per image, each
    holding one person in pixels of an image of `size` (width, height), a missing keypoint as
    (0, 0, 0) and a person without keypoints as an empty frame. parse_keypoints reads it back
    unchanged, so several nodes can share one parsed pose."""
    w, h = size
    frames = []
    for kp in people:
        xy = kp.to_size(size)
        flat = [float(v) for (x, y), present in zip(xy, kp.present, strict=True)
                for v in (x, y, 1.0 if present else 0.0)]
        people_out = [{"pose_keypoints_2d": flat}] if kp.present.any() else []
        frames.append({"people": people_out, "canvas_width": int(w), "canvas_height": int(h)})
    return frames


def parse_keypoints(data: Any, person: int = 0) -> list[Keypoints]:
    """Keypoints of one person per image from JSON text or already-decoded data.

    A single pose gives a one-element list; POSE_KEYPOINT (a list of frames) gives one per
    frame. Frames without people give all-missing keypoints (zero heatmaps).
    """
    if isinstance(data, (str, bytes)):
        if len(data) > MAX_JSON_BYTES:
            raise PoseFormatError(
                f"keypoint JSON of {len(data)} characters; at most {MAX_JSON_BYTES} are read")
        try:
            data = json.loads(data)
        except RecursionError:
            raise PoseFormatError(f"keypoint JSON nested too deeply; expected {_FORMS}") from None
        except ValueError as exc:  # JSONDecodeError, bad UTF-8, an integer of over 4300 digits
            raise PoseFormatError(f"keypoints are not valid JSON ({exc}); expected {_FORMS}") from None
    is_frame_list = isinstance(data, (list, tuple)) and data and all(isinstance(f, dict) for f in data)
    frames = list(data) if is_frame_list else [data]
    if len(frames) > MAX_FRAMES:
        raise PoseFormatError(f"{len(frames)} frames of keypoints; at most {MAX_FRAMES} are read at once: "
                              "split the batch")
    return [_from_frame(frame, person, f"pose {i}") or Keypoints.none() for i, frame in enumerate(frames)]
