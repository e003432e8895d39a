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
from .keypoints import Keypoints

SIGMA = 9.0

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


def pose_heatmaps(keypoints: list[Keypoints], size: tuple[int, int] = IMAGE_SIZE,
                  sigma: float = SIGMA) -> torch.Tensor:
    """[B, 18, H, W] heatmaps, one per Keypoints, rescaled into an image of `size` (W, H)."""
    return torch.stack([keypoint_heatmaps(k.to_size(size), size, sigma) for k in keypoints])


def resize_pose(pose: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Heatmaps to another size the way the reference brings them to latent size (bilinear,
    align_corners=False, no antialiasing)."""
    if tuple(pose.shape[-2:]) == (height, width):
        return pose
    return torch.nn.functional.interpolate(pose, size=(height, width), mode="bilinear")


def render_skeleton(points: np.ndarray, size: tuple[int, int] = IMAGE_SIZE) -> np.ndarray:
    """An OpenPose-style skeleton on black: float32 [H, W, 3] in [0, 1]."""
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
    return np.asarray(image, dtype=np.float32) / 255.0
