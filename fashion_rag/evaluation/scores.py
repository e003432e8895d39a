"""CLIP-T and CLIP-I of inpainted results, as the reference's evaluation scores them, and a ranking.

For result image n with repaint mask m_n (regions: crop.py), E_img / E_txt an encoder's
L2-normalised image / text embeddings, cos their dot product:

    CLIP-T(n) = max(100 · cos(E_txt(text), E_img(clip_t_input(n))), 0)
        torchmetrics' CLIPScore (which the reference's evaluation calls) for one image: cosine
        x 100, clipped at 0.
    CLIP-I(n) = 100 · mean_j cos(E_img(clip_i_patch(n)), E_img(garment_j))
        the reference's "retrieved_score": the texture patch against each garment the image was
        generated from (all retrieved garments; or garment n alone for candidates, where image n
        wears garment n only), averaged. The reference reports the plain cosine mean; x 100
        puts it on CLIP-T's scale. Not clipped, as in the reference.
    score(n) = CLIP-T, CLIP-I, or their mean (rank_by "mean", the default; just the one there
        is when only one can be computed).

Images go to the encoder as 8-bit pictures (each value rounded to 1/255), through the encoder's
own preprocessing (for OpenCLIP: shortest side to its input size, bicubic, centre crop, its
mean/std), as the reference's CLIP processor receives them. Garments are the retrieved images
(384x512 on white), preprocessed the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from .crop import clip_i_patch, clip_t_input

RANK_BY = ("mean", "clip_t", "clip_i")
ALL_GARMENTS, OWN_GARMENT = "all", "one per image"
PAIRINGS = (ALL_GARMENTS, OWN_GARMENT)


class ImageEncoder(Protocol):
    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...


class TextImageEncoder(ImageEncoder, Protocol):
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class ImageScore:
    index: int  # position of the image in the scored batch
    score: float
    clip_t: float | None
    clip_i: float | None
    garment: str | None = None  # its own garment's id, for candidates

    def as_dict(self, rank: int) -> dict:
        return {"rank": rank, "index": self.index, "score": self.score, "clip_t": self.clip_t,
                "clip_i": self.clip_i, **({"garment": self.garment} if self.garment else {})}


def to_pil(chw: torch.Tensor) -> Image.Image:
    """[3, h, w] in [0, 1] -> an 8-bit RGB picture (rounded)."""
    array = (chw.clamp(0, 1) * 255).round().to(torch.uint8).movedim(0, -1).cpu().numpy()
    return Image.fromarray(array)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def per_image(masks: torch.Tensor, n: int) -> torch.Tensor:
    """[n, H, W]: one mask for every image, or one each."""
    if masks.ndim == 2:
        masks = masks[None]
    if masks.shape[0] not in (1, n):
        raise ValueError(f"{masks.shape[0]} masks for {n} images: give one mask, or one per image")
    return masks.expand(n, -1, -1)


def clip_t_scores(encoder: TextImageEncoder, images: torch.Tensor, masks: torch.Tensor,
                  text: str) -> np.ndarray:
    """CLIP-T of each image [N] (see the module docstring)."""
    masks = per_image(masks, images.shape[0])
    crops = [to_pil(clip_t_input(img, m)) for img, m in zip(images, masks, strict=True)]
    cos = _unit(encoder.encode_images(crops)) @ _unit(encoder.encode_texts([text]))[0]
    return np.maximum(100.0 * cos, 0.0)


def clip_i_scores(encoder: ImageEncoder, images: torch.Tensor, masks: torch.Tensor, garments: torch.Tensor,
                  category: str, pairing: str = ALL_GARMENTS) -> np.ndarray:
    """CLIP-I of each image [N] against garments [k, H, W, 3] (see the module docstring)."""
    n, k = images.shape[0], garments.shape[0]
    if pairing == OWN_GARMENT and k != n:
        raise ValueError(f"'{OWN_GARMENT}' pairs image i with garment i, but there are {n} images and {k} "
                         f"garments; use '{ALL_GARMENTS}' when every image was made from all garments")
    masks = per_image(masks, n)
    patches = [to_pil(clip_i_patch(img, m, category)) for img, m in zip(images, masks, strict=True)]
    pictures = [to_pil(g[..., :3].movedim(-1, 0)) for g in garments]
    cos = _unit(encoder.encode_images(patches)) @ _unit(encoder.encode_images(pictures)).T  # [n, k]
    each = np.diagonal(cos) if pairing == OWN_GARMENT else cos.mean(axis=1)
    return 100.0 * each


def rank(clip_t: np.ndarray | None, clip_i: np.ndarray | None, rank_by: str = "mean",
         garment_ids: Sequence[str] = ()) -> list[ImageScore]:
    """The images best first by `rank_by` (ties keep their order)."""
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by {rank_by!r}: expected one of {', '.join(RANK_BY)}")
    wanted = {"clip_t": clip_t, "clip_i": clip_i}.get(rank_by)
    if rank_by != "mean" and wanted is None:
        raise ValueError(f"rank_by {rank_by!r}, but {_MISSING[rank_by]}")
    present = [s for s in (clip_t, clip_i) if s is not None]
    if not present:
        raise ValueError(f"nothing to score: {_MISSING['clip_t']}; and {_MISSING['clip_i']}")
    score = wanted if wanted is not None else np.mean(present, axis=0)
    order = sorted(range(len(score)), key=lambda i: -float(score[i]))
    return [ImageScore(index=i, score=float(score[i]),
                       clip_t=None if clip_t is None else float(clip_t[i]),
                       clip_i=None if clip_i is None else float(clip_i[i]),
                       garment=garment_ids[i] if len(garment_ids) == len(score) else None)
            for i in order]


_MISSING = {
    "clip_t": "CLIP-T needs a text and a text encoder (the index's OpenCLIP encoder)",
    "clip_i": "CLIP-I needs the garments and an image encoder (the index's, or a CLIP_VISION)",
}
