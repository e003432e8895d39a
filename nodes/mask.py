"""FashionRAGGarmentMask: person IMAGE + category + keypoints -> MASK (1 = repaint) + preview."""

from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ..fashion_rag.categories import CATEGORIES, normalize_category
from ..fashion_rag.inpaint.budget import MAX_NODE_BYTES, GiB, check_budget, frame_bytes
from ..fashion_rag.inpaint.mask import garment_mask, masked_preview
from .compat import check_combos, require_combos
from .keypoint_inputs import frame_inputs, keypoints_json_input, pose_keypoint_input, read_keypoints

MASK_BYTES_CHANNELS = 1 + 3  # float32 per pixel of the outputs: the mask and the RGB preview


class FashionRAGGarmentMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FashionRAGGarmentMask",
            display_name="Fashion-RAG Garment Mask",
            category="fashion_rag/inpaint",
            description=(
                "Builds the region to repaint from the person's keypoints: the bounding box of the "
                "garment area of the category (upper body: shoulders to hips with the arms; lower body: "
                "hips to ankles; dress: shoulders to ankles) minus head, hands and feet. A convenience: "
                "any MASK (drawn, or from a segmentation pack) works with the Fashion-RAG inpaint nodes. "
                f"Limit: mask plus preview of the whole batch within {MAX_NODE_BYTES / GiB:g} GiB "
                f"({MASK_BYTES_CHANNELS} float32 values per pixel: "
                f"{MAX_NODE_BYTES // frame_bytes((4096, 4096), MASK_BYTES_CHANNELS)} images of 4096x4096)."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The person photo the mask is for (sets its size)."),
                io.Combo.Input(
                    "category", options=list(CATEGORIES), default="upper_body",
                    tooltip="Which garment to replace. Overridden by category_override when connected.",
                ),
                keypoints_json_input(),
                io.Int.Input(
                    "grow", default=0, min=-256, max=256, step=1,
                    tooltip="Pixels added to every side of the garment box (negative shrinks it). Head, "
                            "hands and feet stay excluded. Grow for loose or longer garments.",
                ),
                io.Int.Input(
                    "feather", default=0, min=0, max=256, step=1,
                    tooltip="Width in pixels of a soft ramp centred on the mask edge. The UNet binarises "
                            "the mask at 0.5 and so sees the same region; compositing gets soft edges.",
                ),
                pose_keypoint_input(),
                io.String.Input(
                    "category_override", optional=True, force_input=True,
                    tooltip="Connect Text → Garment Retrieve's category output to mask the region of the "
                            "garment it found (upper_body, lower_body, dresses or a synonym).",
                ),
                *frame_inputs("image"),
            ],
            outputs=[
                io.Mask.Output(display_name="mask", tooltip="[B, H, W], 1 = repaint."),
                io.Image.Output(
                    display_name="preview",
                    tooltip="The person with the repaint region in mid grey, as the UNet sees it.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, category: str | None = None) -> bool | str:
        # The same check and message on every ComfyUI version (see compat.py).
        return check_combos(cls, category=category)

    @classmethod
    def execute(cls, image: torch.Tensor, category: str, keypoints_json: str, grow: int, feather: int,
                pose_keypoint=None, category_override: str | None = None, person_index: int = 0,
                source_width: int = 0, source_height: int = 0) -> io.NodeOutput:
        if category_override:
            resolved = normalize_category(category_override)
            if resolved is None:
                raise ValueError(
                    f"category_override {category_override!r} is none of {', '.join(CATEGORIES)} "
                    "(or a synonym such as top, skirt, dress)."
                )
            category = resolved
        else:
            require_combos(cls, category=category)  # a linked value skipped validate_inputs
        people = read_keypoints(
            keypoints_json, pose_keypoint, person_index, source_width, source_height,
            ", or draw the MASK yourself (any mask works with the inpaint node).",
        )
        batch, height, width = image.shape[0], image.shape[1], image.shape[2]
        if len(people) not in (1, batch):
            raise ValueError(f"{len(people)} poses for {batch} images: give one pose, or one per image.")
        check_budget("a garment mask", batch, (width, height), MASK_BYTES_CHANNELS,
                     "give smaller images or fewer of them (split the batch)")
        # A MASK is float32, beside the image it masks (the library computes each frame on the CPU).
        masks = torch.empty((batch, height, width), dtype=torch.float32, device=image.device)
        for i, k in enumerate(people):
            # One pose for the whole batch: computed once, copied into every frame.
            frames = slice(None) if len(people) == 1 else slice(i, i + 1)
            masks[frames] = garment_mask(k.to_size((width, height)), category, width, height, grow, feather)
        preview = masked_preview(image, masks)
        return io.NodeOutput(masks, preview, ui=ui.PreviewImage(preview, cls=cls))


NODES: list[type[io.ComfyNode]] = [FashionRAGGarmentMask]
