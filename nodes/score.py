"""FashionRAGScore: result images -> CLIP-T / CLIP-I scores (fashion_rag.evaluation), best first.

The scoring is the library's; this module picks the encoders (the index's OpenCLIP model, or a
CLIP_VISION for CLIP-I) and turns the ranking into ComfyUI outputs and a ui entry
("fashion_rag_scores", which `python -m fashion_rag batch` records per row).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import comfy.model_management as mm
import numpy as np
import torch
from comfy_api.latest import io, ui
from PIL import Image

from ..fashion_rag.categories import CATEGORIES, normalize_category
from ..fashion_rag.evaluation.preview import draw_scores
from ..fashion_rag.evaluation.scores import (
    ALL_GARMENTS,
    OWN_GARMENT,
    PAIRINGS,
    RANK_BY,
    ImageScore,
    clip_i_scores,
    clip_t_scores,
    per_image,
    rank,
)
from .compat import check_combos, require_combos
from .types import GarmentIndexType, GarmentsType


class ClipVisionImages:
    """A CLIP_VISION as an image encoder: ComfyUI's own preprocessing (shortest side to its input
    size, centre crop, its mean/std) and projected image embeddings, L2-normalised."""

    def __init__(self, clip_vision: Any) -> None:
        self.clip_vision = clip_vision

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        rows = []
        for picture in images:  # one at a time: patches and garments differ in size
            # An IMAGE as ComfyUI's nodes hold one (float32 on the intermediate device);
            # encode_image moves it to the vision model's device and casts it.
            pixels = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0)[None].to(
                device=mm.intermediate_device(), dtype=torch.float32)
            with torch.no_grad():
                embeds = self.clip_vision.encode_image(pixels, crop=True)["image_embeds"]
            rows.append(embeds.float().cpu().numpy()[0])
        out = np.stack(rows)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def _report(items: list[ImageScore], rank_by: str, text: str, t_model: str | None, i_model: str | None,
            garments: int, pairing: str) -> str:
    head = [f"Fashion-RAG Score, best first by {rank_by} (cosine x 100 on the repainted region)"]
    if t_model:
        head.append(f"CLIP-T: {t_model}, text {text!r}")
    if i_model:
        against = "its own garment" if pairing == OWN_GARMENT else f"{garments} garment(s)"
        head.append(f"CLIP-I: {i_model}, against {against}")
    rows = []
    for r, s in enumerate(items, 1):
        parts = [f"#{r} image {s.index}: score {s.score:.2f}"]
        if s.clip_t is not None:
            parts.append(f"CLIP-T {s.clip_t:.2f}")
        if s.clip_i is not None:
            parts.append(f"CLIP-I {s.clip_i:.2f}")
        if s.garment:
            parts.append(f"garment {s.garment}")
        rows.append("  ".join(parts))
    return "\n".join(head + rows)


class FashionRAGScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FashionRAGScore",
            display_name="Fashion-RAG Score",
            category="fashion_rag/evaluation",
            description=(
                "Ranks result images as the reference's evaluation scores them, on the repainted region "
                "only: CLIP-T (text vs the garment crop, torchmetrics' CLIPScore: cosine x 100, clipped "
                "at 0) and CLIP-I (a texture patch vs the retrieved garments, cosine x 100). Outputs the "
                "images best first, the scores, a report and a preview with the scores drawn on it."
            ),
            is_output_node=True,  # its preview and scores show (and reach batch runs) unconnected
            inputs=[
                io.Image.Input("images", tooltip="The results to rank (a batch: seeds or candidates)."),
                io.Mask.Input("mask", tooltip="The repaint mask they were inpainted with (one, or one per "
                                              "image); the scores look at its bounding box only."),
                GarmentsType.Input("garments", optional=True,
                                   tooltip="From 'Fashion-RAG Text → Garment Retrieve': CLIP-I compares the "
                                           "results with them, and their text is CLIP-T's default text."),
                GarmentIndexType.Input("index", optional=True,
                                       tooltip="From 'Fashion-RAG Garment Index Loader': its OpenCLIP "
                                               "encoder computes CLIP-T (and CLIP-I without a clip_vision)."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Optional: CLIP-I with this vision model instead (CLIP ViT-H/14, "
                                            "the reference's CLIP-I model)."),
                io.String.Input("text", multiline=True, default="", optional=True,
                                tooltip="CLIP-T's text; empty = the text the garments were retrieved for."),
                io.Combo.Input("rank_by", options=list(RANK_BY), default="mean",
                               tooltip="mean: the mean of CLIP-T and CLIP-I (whichever can be computed); "
                                       "clip_t or clip_i alone."),
                io.Combo.Input("clip_i_garments", options=list(PAIRINGS), default=ALL_GARMENTS,
                               tooltip=f"{ALL_GARMENTS}: each image against every garment, averaged "
                                       f"(made from all of them: seeds); {OWN_GARMENT}: image i against "
                                       "garment i (candidates, one garment each)."),
                io.Combo.Input("category", options=["auto", *CATEGORIES], default="auto",
                               tooltip="Where CLIP-I's texture patch lies: the crop's centre, or for "
                                       "lower_body near its top; auto = the first garment's category."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The images, best first."),
                io.Float.Output(display_name="scores", is_output_list=True,
                                tooltip="Their scores, best first, as a list."),
                io.String.Output(display_name="report", tooltip="Rank, image, scores as text."),
                io.Image.Output(display_name="preview", tooltip="The images best first with rank, scores "
                                                                "and the scored box drawn on them."),
            ],
        )

    @classmethod
    def validate_inputs(cls, rank_by: str | None = None, clip_i_garments: str | None = None,
                        category: str | None = None) -> bool | str:
        # The same check and message on every ComfyUI version (see compat.py).
        return check_combos(cls, rank_by=rank_by, clip_i_garments=clip_i_garments, category=category)

    @classmethod
    def execute(cls, images: torch.Tensor, mask: torch.Tensor, rank_by: str, clip_i_garments: str,
                category: str, garments: Any | None = None, index: Any | None = None,
                clip_vision: Any | None = None, text: str = "") -> io.NodeOutput:
        require_combos(cls, rank_by=rank_by, clip_i_garments=clip_i_garments, category=category)
        images = images[..., :3].float().cpu()
        masks = per_image(mask.float().cpu(), images.shape[0])
        encoder = getattr(index, "encoder", None)
        text = (text or "").strip() or (getattr(garments, "query", "") or "").strip()
        if category == "auto":
            first = garments.items[0].category if garments is not None and len(garments) else None
            category = normalize_category(first) or "upper_body"

        clip_t = t_model = None
        if encoder is not None and text:
            clip_t, t_model = clip_t_scores(encoder, images, masks, text), encoder.describe()
        clip_i = i_model = None
        image_encoder = ClipVisionImages(clip_vision) if clip_vision is not None else encoder
        if image_encoder is not None and garments is not None and len(garments):
            clip_i = clip_i_scores(image_encoder, images, masks, garments.images.float().cpu(), category,
                                   clip_i_garments)
            i_model = "the connected CLIP_VISION" if clip_vision is not None else encoder.describe()
        own = garments is not None and clip_i_garments == OWN_GARMENT
        ids = [g.id for g in garments.items] if own else []
        items = rank(clip_t, clip_i, rank_by, ids)

        order = [s.index for s in items]
        preview = torch.stack([draw_scores(images[s.index], masks[s.index], s, r)
                               for r, s in enumerate(items, 1)])
        report = _report(items, rank_by, text, t_model, i_model, len(garments or ()), clip_i_garments)
        listing = [s.as_dict(r) for r, s in enumerate(items, 1)]
        shown = {**ui.PreviewImage(preview, cls=cls).as_dict(), "fashion_rag_scores": listing}
        return io.NodeOutput(images[order], [s.score for s in items], report, preview, ui=shown)


NODES: list[type[io.ComfyNode]] = [FashionRAGScore]
