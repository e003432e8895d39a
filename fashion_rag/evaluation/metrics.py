"""The paper's evaluation metrics over a set of generated images (issue 18, part A).

Interface first (the CLI of part B calls it); implemented in the modules named after what they
hold: metric_weights.py, fid.py, perceptual.py, retrieval_metrics.py, report.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class MetricWeights:
    """The files in --metric-weights DIR."""

    inception: Path  # FID/KID Inception-v3 (torch-fidelity's weights-inception-2015-12-05 state dict)
    lpips: Path | None  # LPIPS linear layers (alex.pth, v0.1); None: unpaired runs need none
    clip: Path  # the CLIP model CLIP-T / CLIP-I are scored with (OpenCLIP ViT-H-14 laion2b_s32b_b79k)
    alexnet: Path | None = None  # LPIPS backbone (torchvision's AlexNet state dict); None when lpips is


def find_metric_weights(folder: Path, paired: bool) -> MetricWeights:
    raise NotImplementedError


@dataclass(frozen=True)
class ScoredImage:
    pair_id: str
    category: str  # "dresses" | "upper_body" | "lower_body"
    generated: Path  # the image the pack produced (PNG)
    target: Path | None  # the ground-truth person photo (paired runs)
    mask: np.ndarray  # [H, W] float in [0, 1], 1 = repainted region (at the generated size)
    caption: str  # the query text the image was generated from
    garments: list[Path] = field(default_factory=list)  # the retrieved garments it was conditioned on


def score_images(images: list[ScoredImage], real: dict[str, list[Path]], weights: MetricWeights,
                 paired: bool, cache_dir: Path, device: str = "cpu") -> list[dict[str, object]]:
    raise NotImplementedError


def retrieval_scores(ranked: dict[str, list[str]], relevant: dict[str, set[str]],
                     categories: dict[str, str], ks: tuple[int, ...] = (1, 3, 5, 10, 20)
                     ) -> list[dict[str, object]]:
    raise NotImplementedError


def write_report(out: Path, rows: list[dict], retrieval_rows: list[dict] | None,
                 settings: dict[str, str]) -> None:
    raise NotImplementedError
