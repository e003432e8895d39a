"""FashionRAGTextGarmentRetrieve: FASHION_RAG_INDEX + text (+ an optional picture) -> garment images
and FASHION_RAG_GARMENTS."""

from __future__ import annotations

import comfy.model_management as mm
from comfy_api.latest import io, ui

from ..fashion_rag.categories import CATEGORIES, normalize_category
from ..fashion_rag.evaluation.scores import to_pil
from ..fashion_rag.retrieval.garments import Garments
from ..fashion_rag.retrieval.search import DEFAULT_IMAGE_WEIGHT, MAX_K, MODES, request_problem, retrieve
from .compat import check_combos, require_combos
from .types import GarmentIndexType, GarmentsType


class FashionRAGTextGarmentRetrieve(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FashionRAGTextGarmentRetrieve",
            display_name="Fashion-RAG Text → Garment Retrieve",
            category="fashion_rag/retrieval",
            description=(
                "Finds the catalog garments that best match a text description (OpenCLIP text→image "
                "similarity, BM25 over captions, or both fused), or a garment picture (image–image "
                "similarity, weighted with the text's). Outputs the garment images (384×512, rank order) and "
                "the garment list for 'Fashion-RAG Garment Inversion'."
            ),
            is_output_node=True,  # shows its garments even when nothing is connected yet (browsing)
            inputs=[
                GarmentIndexType.Input("index", tooltip="From 'Fashion-RAG Garment Index Loader'."),
                io.String.Input(
                    "text", multiline=True, default="a red striped short-sleeve top",
                    tooltip="Describe the garment, e.g. 'a red floral midi dress with puff sleeves'.",
                ),
                io.Int.Input(
                    "k", default=3, min=1, max=MAX_K,
                    tooltip="How many garments. 1–3 for generation (the paper uses up to 3; each takes 16 "
                            f"prompt tokens), up to {MAX_K} for browsing the catalog (pinned ones included).",
                ),
                io.Combo.Input(
                    "category", options=["any", *CATEGORIES], default="any",
                    tooltip="Only garments of this category (Dress Code's three); 'any' searches all.",
                ),
                io.Combo.Input(
                    "mode", options=list(MODES), default="fusion",
                    tooltip="image: OpenCLIP text→image cosine (the paper's); caption: BM25 over the "
                            "catalog captions; fusion: reciprocal-rank fusion of both (falls back to image "
                            "when the catalog has no captions). Random demo encoder weights: use caption.",
                ),
                io.String.Input(
                    "pin_ids", default="",
                    tooltip="Comma-separated garment ids always returned first, in this order "
                            f"(clicking a garment in the gallery fills this); at most {MAX_K}.",
                ),
                io.String.Input(
                    "exclude_ids", default="",
                    tooltip="Comma-separated garment ids never returned.",
                ),
                io.Image.Input(
                    "image", optional=True,
                    tooltip="Optional: a garment photo or crop (the first of a batch) — 'more like this'. "
                            "Ranks by image–image similarity, weighted with the text by image_weight (modes "
                            "image and fusion).",
                ),
                io.Float.Input(
                    "image_weight", default=DEFAULT_IMAGE_WEIGHT, min=0.0, max=1.0, step=0.05, optional=True,
                    tooltip="With an image: score = (1 − w)·text cosine + w·image cosine; 1 ranks by the "
                            f"picture alone, 0 by the text alone (default {DEFAULT_IMAGE_WEIGHT}); mode "
                            "fusion also fuses in the text's caption ranking.",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="garments_image",
                                tooltip="The garments, [k, 512, 384, 3], rank order."),
                GarmentsType.Output(display_name="garments",
                                    tooltip="Ids, scores, categories, captions and images, "
                                            "for 'Fashion-RAG Garment Inversion'."),
                io.String.Output(display_name="category",
                                 tooltip="The top garment's category (upper_body, lower_body or dresses)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, text: str | None = None, pin_ids: str | None = None,
                        exclude_ids: str | None = None, category: str | None = None,
                        mode: str | None = None) -> bool | str:
        # k is left to ComfyUI's own min/max check. Inputs fed by links arrive as None (not
        # known yet); the library checks every input again at run time. The combos get the same
        # check and message on every ComfyUI version (compat.py).
        problem = request_problem(text, None, pin_ids, exclude_ids)
        return problem or check_combos(cls, category=category, mode=mode)

    @classmethod
    def execute(cls, index, text: str, k: int, category: str, mode: str, pin_ids: str,
                exclude_ids: str, image=None, image_weight: float = DEFAULT_IMAGE_WEIGHT) -> io.NodeOutput:
        require_combos(cls, category=category, mode=mode)  # linked values skip validate_inputs
        picture = to_pil(image[0].movedim(-1, 0)[:3]) if image is not None else None
        garments: Garments = retrieve(
            index, text, k, mode=mode, category=None if category == "any" else category,
            pin_ids=pin_ids, exclude_ids=exclude_ids, image=picture, image_weight=image_weight,
        )
        images = garments.images.to(mm.intermediate_device())
        top = garments.items[0]
        top_category = normalize_category(top.category) or top.category
        preview = ui.PreviewImage(images, cls=cls).as_dict()
        listing = [
            {"rank": i + 1, "id": g.id, "score": round(g.score, 6), "category": g.category,
             "caption": g.caption}
            for i, g in enumerate(garments.items)
        ]
        return io.NodeOutput(images, garments, top_category, ui={**preview, "fashion_rag_garments": listing})


NODES: list[type[io.ComfyNode]] = [FashionRAGTextGarmentRetrieve]
