"""The paper's evaluation metrics over a set of generated images (docs/metrics.md).

score_images gives one row per category and one for all with the reference's columns:
FID and KID against the test images (fid.py), CLIP-T and CLIP-I on the repainted region
(scores.py and crop.py, the score node's own code), and in paired runs LPIPS and SSIM against
the ground truth (perceptual.py). retrieval_scores (retrieval_metrics.py) and write_report
(report.py) complete the interface the `fashion-rag evaluate` command calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..categories import CATEGORIES
from ..files import MAX_IMAGE_BYTES, cached_sha256, open_regular
from ..logs import log
from .fid import (
    FeatureCache,
    frechet_distance,
    inception_features,
    kernel_distance,
    load_inception,
    read_rgb,
    real_features,
)
from .metric_weights import CLIP_ARCH, CLIP_TAG, MetricWeights, MetricWeightsError, find_metric_weights
from .report import write_report
from .retrieval_metrics import ALL, retrieval_scores

__all__ = ["MetricWeights", "MetricWeightsError", "ScoredImage", "find_metric_weights", "retrieval_scores",
           "score_images", "write_report", "COLUMNS", "PAIRED_COLUMNS"]

COLUMNS = ("FID", "KID", "CLIP-T", "CLIP-I")
PAIRED_COLUMNS = ("LPIPS", "SSIM")

# (stage, done, total): "test-set features", "generated features", "LPIPS/SSIM", "CLIP"
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ScoredImage:
    pair_id: str
    category: str  # "dresses" | "upper_body" | "lower_body"
    generated: Path  # the image the pack produced (PNG)
    target: Path | None  # the ground-truth person photo (paired runs)
    mask: np.ndarray  # [H, W] float in [0, 1], 1 = repainted region (at the generated size)
    caption: str  # the query text the image was generated from
    garments: list[Path] = field(default_factory=list)  # the retrieved garments it was conditioned on


def _image_size(item: ScoredImage) -> tuple[int, int]:
    """The generated image's (width, height), from its header: every pair is checked before the
    hours of scoring start."""
    try:
        with open_regular(item.generated, MAX_IMAGE_BYTES, "generated image") as f, Image.open(f) as img:
            return img.size
    except (OSError, ValueError) as exc:
        raise ValueError(f"pair {item.pair_id!r}: the generated image {item.generated} cannot be read "
                         f"({exc})") from None


def _check(images: list[ScoredImage], real: dict[str, list[Path]], weights: MetricWeights,
           paired: bool) -> None:
    if not images:
        raise ValueError("no images to score")
    seen: set[str] = set()
    for item in images:
        if item.pair_id in seen:
            raise ValueError(f"pair {item.pair_id!r} is listed twice: score each generated image once")
        seen.add(item.pair_id)
        if item.category not in CATEGORIES:
            raise ValueError(f"pair {item.pair_id!r}: category {item.category!r} is not one of "
                             f"{', '.join(CATEGORIES)}")
        if paired and item.target is None:
            raise ValueError(f"pair {item.pair_id!r} has no ground-truth image, which paired scoring "
                             "(LPIPS, SSIM) needs; score it as unpaired")
        mask = np.asarray(item.mask)
        valid = mask.size > 0 and np.isfinite(mask).all() and 0 <= mask.min() <= mask.max() <= 1
        if mask.ndim != 2 or not valid:
            values = f", values {mask.min()}..{mask.max()}" if mask.size else ""
            raise ValueError(f"pair {item.pair_id!r}: the mask must be [H, W] with values in [0, 1] "
                             f"(got shape {mask.shape}{values})")
        if not (mask >= 0.5).any():
            raise ValueError(f"pair {item.pair_id!r}: the mask is empty (no pixel >= 0.5): there is no "
                             "repainted region to score")
        width, height = _image_size(item)
        if mask.shape != (height, width):
            raise ValueError(f"pair {item.pair_id!r}: the mask is {mask.shape[1]}x{mask.shape[0]} but the "
                             f"image is {width}x{height}: score with the mask the image was inpainted with")
    for cat in {item.category for item in images}:
        if not real.get(cat):
            raise ValueError(f"no test images of category {cat!r} to compare its generated images with "
                             "(FID, KID)")
    if paired and (weights.lpips is None or weights.alexnet is None):
        raise MetricWeightsError("paired scoring needs the LPIPS files: find the metric weights with "
                                 "paired=True")


def _groups(images: list[ScoredImage]) -> list[tuple[str, list[int]]]:
    """(category, indices) for each category present in Dress Code's order, then ("all", every index)."""
    groups = [(cat, [i for i, item in enumerate(images) if item.category == cat]) for cat in CATEGORIES]
    return [(cat, idx) for cat, idx in groups if idx] + [(ALL, list(range(len(images))))]


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _stage(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    return None if progress is None else lambda done, total: progress(stage, done, total)


def _distances(images: list[ScoredImage], real: dict[str, list[Path]], weights: MetricWeights,
               cache_dir: Path, device: str,
               progress: Progress | None) -> dict[str, tuple[float | None, float | None]]:
    """{group: (FID, KID)}: each category's generated images against its test images; "all"
    against the test images of every category present."""
    net = load_inception(weights.inception, device)
    cache = FeatureCache(cache_dir, cached_sha256(weights.inception))
    gen = inception_features(net, [item.generated for item in images], "generated image",
                             progress=_stage(progress, "generated features"))
    cats = [cat for cat in CATEGORIES if any(item.category == cat for item in images)]
    paths = {cat: list(dict.fromkeys(Path(p) for p in real[cat])) for cat in cats}
    every = list(dict.fromkeys(p for cat in cats for p in paths[cat]))
    feats, computed = real_features(net, every, cache, _stage(progress, "test-set features"))
    del net  # freed before the next network is loaded
    log.info("FID/KID: %d test images (%d computed, the rest from the cache %s)", len(feats), computed,
             cache.root)
    by_path = dict(zip(every, feats, strict=True))
    out: dict[str, tuple[float | None, float | None]] = {}
    for group, idx in _groups(images):
        reference = np.stack([by_path[p] for p in (every if group == ALL else paths[group])])
        out[group] = (frechet_distance(gen[idx], reference), kernel_distance(gen[idx], reference))
    return out


def _paired(images: list[ScoredImage], weights: MetricWeights, device: str,
            progress: Progress | None) -> tuple[list[float], list[float]]:
    """Per image LPIPS and SSIM against its ground truth."""
    from .perceptual import load_lpips, lpips_distance, paired_pixels, ssim

    assert weights.alexnet is not None and weights.lpips is not None
    net = load_lpips(weights.alexnet, weights.lpips, device)
    lp, ss = [], []
    for n, item in enumerate(images, 1):
        assert item.target is not None
        gen, truth = paired_pixels(item.generated, item.target)
        lp.append(lpips_distance(net, gen, truth))
        ss.append(ssim(gen, truth))
        if progress:
            progress("LPIPS/SSIM", n, len(images))
    return lp, ss


def clip_encoder(path: Path, device: str = "cpu"):
    """The CLIP-T / CLIP-I model: OpenCLIP ViT-H-14 (laion2b_s32b_b79k, the model the reference's
    CLIPScore loads), or the architecture a demo file carries in its metadata."""
    from ..openclip_encoder import GarmentEncoder, weights_metadata

    carried = weights_metadata(path).get("open_clip")
    name = carried.get("name") if isinstance(carried, dict) else None
    arch = name if isinstance(name, str) else CLIP_ARCH
    encoder = GarmentEncoder(path, arch, CLIP_TAG if arch == CLIP_ARCH else None)
    encoder.module.to(device)
    return encoder


def _pixels(path: Path, what: str) -> torch.Tensor:
    """[H, W, 3] float in [0, 1], as ComfyUI's IMAGE holds a loaded picture."""
    return torch.from_numpy(read_rgb(path, what).astype(np.float32) / 255.0)


def _clip(images: list[ScoredImage], weights: MetricWeights, device: str,
          progress: Progress | None) -> tuple[list[float], list[float | None]]:
    """Per image CLIP-T and CLIP-I (None for an image made without garments), scores.py's values."""
    from .scores import clip_t_scores

    encoder = clip_encoder(weights.clip, device)
    clip_t: list[float] = []
    clip_i: list[float | None] = []
    for n, item in enumerate(images, 1):
        image = _pixels(item.generated, "generated image")[None]
        mask = torch.as_tensor(np.asarray(item.mask))  # its own dtype: no rounding near 0.5
        try:
            clip_t.append(float(clip_t_scores(encoder, image, mask, item.caption)[0]))
            clip_i.append(_clip_i(encoder, image, mask, item))
        except ValueError as exc:
            raise ValueError(f"pair {item.pair_id!r}: {exc}") from None
        if progress:
            progress("CLIP", n, len(images))
    return clip_t, clip_i


def _clip_i(encoder, image: torch.Tensor, mask: torch.Tensor, item: ScoredImage) -> float | None:
    from .scores import clip_i_scores

    garments = [_pixels(g, "retrieved garment") for g in item.garments]
    if not garments:
        return None
    # Garments of several sizes do not stack; the mean over them one by one is the same.
    stacks = [torch.stack(garments)] if len({g.shape for g in garments}) == 1 else [g[None] for g in garments]
    each = [clip_i_scores(encoder, image, mask, s, item.category)[0] * len(s) for s in stacks]
    return float(sum(each) / len(garments))


def score_images(images: list[ScoredImage], real: dict[str, list[Path]], weights: MetricWeights,
                 paired: bool, cache_dir: Path, device: str = "cpu",
                 progress: Progress | None = None) -> list[dict[str, object]]:
    """One row per category present (Dress Code's order) and one for "all":
    {"category", "n", "FID", "KID", "CLIP-T", "CLIP-I"} plus "LPIPS", "SSIM" when paired.

    `real[category]`: the test images FID/KID compare that category's generated images with
    (the reference: the person photos of test_pairs_paired.txt, in both settings). A value is
    None where it cannot be computed (FID/KID with fewer than two images, CLIP-I without
    garments). The networks are loaded one at a time, each freed before the next.
    """
    _check(images, real, weights, paired)
    distances = _distances(images, real, weights, Path(cache_dir), device, progress)
    lp, ss = _paired(images, weights, device, progress) if paired else ([], [])
    clip_t, clip_i = _clip(images, weights, device, progress)
    rows: list[dict[str, object]] = []
    for group, idx in _groups(images):
        fid, kid = distances[group]
        row: dict[str, object] = {"category": group, "n": len(idx), "FID": fid, "KID": kid,
                                  "CLIP-T": _mean([clip_t[i] for i in idx]),
                                  "CLIP-I": _mean([clip_i[i] for i in idx])}
        if paired:
            row["LPIPS"] = _mean([lp[i] for i in idx])
            row["SSIM"] = _mean([ss[i] for i in idx])
        rows.append(row)
    return rows
