"""Keypoints -> the 18 heatmaps the Fashion-RAG UNet sees, and a skeleton preview.

The reference draws, for a keypoint k in pixel coordinates of the 384x512 image,
exp(-|p - k|^2 / sigma^2) with sigma = 9 (sigma squared, not 2 sigma^2) over the integer pixel
grid p = (column, row), divides by the map's maximum (+ float32 eps) so the peak is 1, and
leaves the channel all zero for a missing keypoint. We reproduce that, including its
normalisation. Keypoints and their JSON forms: keypoints.py.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..reference import IMAGE_SIZE
from .budget import check_budget
from .keypoints import NUM_KEYPOINTS, Keypoints

SIGMA = 9.0
PREVIEW_CHANNELS = 3
# float32 channels per pixel of the pose node's outputs: the heatmaps and the RGB preview.
POSE_BYTES_CHANNELS = NUM_KEYPOINTS + PREVIEW_CHANNELS

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


def keypoint_heatmaps(points: np.ndarray, size: tuple[int, int] = IMAGE_SIZE,
                      sigma: float = SIGMA, out: torch.Tensor | None = None) -> torch.Tensor:
    """[18, H, W] float32 heatmaps for pixel coordinates `points` [18, 2] in an image of
    `size` (width, height), computed as the reference does (see the module docstring); written
    into `out` (zeros of that shape) when given.

    Only the window where a Gaussian is not 0 in float64 (about 490 px square for sigma 9) is
    computed, in float64 as before, and rounded into the float32 map: outside it the full-grid
    product is exactly 0, so the values are those of the full [H, W] float64 grid, without its
    8 bytes per pixel per channel.
    """
    w, h = size
    if out is None:
        out = torch.zeros((len(points), h, w), dtype=torch.float32, device="cpu")  # filled from numpy
    cols = np.arange(w, dtype=np.float64)
    rows = np.arange(h, dtype=np.float64)
    eps = float(np.finfo(np.float32).eps)
    for i, (x, y) in enumerate(np.asarray(points, dtype=np.float64)):
        if not (x > 0 or y > 0):
            continue
        # A keypoint far off the image squares to inf: exp(-inf) = 0 is the right value.
        with np.errstate(over="ignore"):
            fy = np.exp(-((rows - y) ** 2) / sigma**2)
            fx = np.exp(-((cols - x) ** 2) / sigma**2)
        ry, rx = np.flatnonzero(fy), np.flatnonzero(fx)
        if not len(ry) or not len(rx):
            continue  # the whole map is 0 (the reference's m / (0 + eps))
        y0, y1, x0, x1 = ry[0], ry[-1] + 1, rx[0], rx[-1] + 1
        # max of the outer product = product of the maxima: rounding is monotonic.
        peak = fy.max() * fx.max()
        m = np.outer(fy[y0:y1], fx[x0:x1]) / (peak + eps)
        out[i, y0:y1, x0:x1] = torch.from_numpy(m)
    return out


def check_pose_budget(frames: int, size: tuple[int, int]) -> None:
    """Refuse a pose whose heatmaps and preview would exceed MAX_NODE_BYTES (budget.py)."""
    check_budget("a pose", frames, size, POSE_BYTES_CHANNELS,
                 "lower width/height or give fewer frames (split the batch)")


def pose_heatmaps(keypoints: list[Keypoints], size: tuple[int, int] = IMAGE_SIZE,
                  sigma: float = SIGMA) -> torch.Tensor:
    """[B, 18, H, W] heatmaps, one per Keypoints, rescaled into an image of `size` (W, H).
    TooLargeError before allocating when heatmaps and preview would exceed the budget."""
    check_pose_budget(len(keypoints), size)
    w, h = size
    # On the CPU whatever torch's default device is: filled from numpy, moved by whoever uses it.
    out = torch.zeros((len(keypoints), NUM_KEYPOINTS, h, w), dtype=torch.float32, device="cpu")
    for b, k in enumerate(keypoints):
        keypoint_heatmaps(k.to_size(size), size, sigma, out=out[b])
    return out


def resize_pose(pose: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Heatmaps to another size the way the reference brings them to latent size (bilinear,
    align_corners=False, no antialiasing)."""
    if tuple(pose.shape[-2:]) == (height, width):
        return pose
    return torch.nn.functional.interpolate(pose, size=(height, width), mode="bilinear")


def render_skeleton(points: np.ndarray, size: tuple[int, int] = IMAGE_SIZE,
                    out: np.ndarray | None = None) -> np.ndarray:
    """An OpenPose-style skeleton on black: float32 [H, W, 3] in [0, 1] (into `out` when given)."""
    from PIL import Image, ImageDraw

    w, h = size
    image = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(image)
    pts = np.asarray(points, dtype=np.float64)
    present = np.any(pts > 0, axis=1)
    scale = max(1.0, math.sqrt(w * h) / math.sqrt(IMAGE_SIZE[0] * IMAGE_SIZE[1]))
    width = max(1, round(4 * scale))
    for n, (a, b) in enumerate(LIMBS):
        if present[a] and present[b]:
            colour = tuple(int(c * 0.6) for c in COLOURS[n % len(COLOURS)])
            draw.line([tuple(pts[a]), tuple(pts[b])], fill=colour, width=width)
    r = max(2.0, 4 * scale)
    for i, (x, y) in enumerate(pts):
        if present[i]:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=COLOURS[i])
    if out is None:
        out = np.empty((h, w, PREVIEW_CHANNELS), dtype=np.float32)
    # Straight from uint8 into float32: no float32 copy of the image beside the result.
    return np.divide(np.asarray(image), np.float32(255.0), out=out)


def skeleton_previews(keypoints: list[Keypoints], size: tuple[int, int] = IMAGE_SIZE) -> torch.Tensor:
    """[B, H, W, 3] skeletons (IMAGE), one per Keypoints, in an image of `size` (W, H)."""
    w, h = size
    out = np.empty((len(keypoints), h, w, PREVIEW_CHANNELS), dtype=np.float32)
    for b, k in enumerate(keypoints):
        render_skeleton(k.to_size(size), size, out=out[b])
    return torch.from_numpy(out)
