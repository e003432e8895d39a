"""FashionRAGGarmentMask: person IMAGE + category + keypoints -> MASK (1 = repaint) + preview."""

from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ..fashion_rag.categories import CATEGORIES, normalize_category
from ..fashion_rag.mask import garment_mask, masked_preview
from ..fashion_rag.pose import PoseFormatError, parse_keypoints
from .types import PoseKeypointType


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
                "any MASK (drawn, or from a segmentation pack) works with the Fashion-RAG inpaint nodes."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The person photo the mask is for (sets its size)."),
                io.Combo.Input(
                    "category", options=list(CATEGORIES), default="upper_body",
                    tooltip="Which garment to replace. Overridden by category_override when connected.",
                ),
                io.String.Input(
                    "keypoints_json", multiline=True, default="",
                    placeholder='{"people": [{"pose_keypoints_2d": [x, y, c, ...]}]}',
                    tooltip="OpenPose JSON, Dress Code {\"keypoints\": [[x, y, score, id], ...]} (384x512 "
                            "frame) or [[x, y], ...] x18 in COCO-18 order: the same forms as Fashion-RAG "
                            "Pose from Keypoints. Used when no POSE_KEYPOINT is connected.",
                ),
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
                PoseKeypointType.Input(
                    "pose_keypoint", optional=True,
                    tooltip="POSE_KEYPOINT from a DWPose/OpenPose estimator; wins over the JSON.",
                ),
                io.String.Input(
                    "category_override", optional=True, force_input=True,
                    tooltip="Connect Text → Garment Retrieve's category output to mask the region of the "
                            "garment it found (upper_body, lower_body, dresses or a synonym).",
                ),
                io.Int.Input("person_index", default=0, min=0, max=64, optional=True,
                             tooltip="Which detected person to use when there are several."),
                io.Int.Input("source_width", default=0, min=0, max=16384, optional=True,
                             tooltip="Width of the frame the pixel coordinates refer to; 0 = from the "
                                     "data (canvas size, Dress Code 384) or the image width."),
                io.Int.Input("source_height", default=0, min=0, max=16384, optional=True,
                             tooltip="Height of that frame; 0 = from the data or the image height."),
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
        data = pose_keypoint if pose_keypoint is not None else keypoints_json
        if data is None or (isinstance(data, str) and not data.strip()):
            raise ValueError(
                "No keypoints: connect a POSE_KEYPOINT (e.g. from the DWPose Estimator node) or paste "
                "keypoint JSON, or draw the MASK yourself (any mask works with the inpaint node)."
            )
        try:
            people = parse_keypoints(data, person=person_index)
        except PoseFormatError as exc:
            raise ValueError(str(exc)) from None
        if source_width and source_height:
            people = [k if k.normalized else type(k)(k.xy, (source_width, source_height)) for k in people]
        batch, height, width = image.shape[0], image.shape[1], image.shape[2]
        if len(people) == 1:
            people = people * batch
        elif len(people) != batch:
            raise ValueError(f"{len(people)} poses for {batch} images: give one pose, or one per image.")
        masks = torch.stack([
            garment_mask(k.to_size((width, height)), category, width, height, grow, feather) for k in people
        ]).to(image.device)
        preview = masked_preview(image, masks)
        return io.NodeOutput(masks, preview, ui=ui.PreviewImage(preview, cls=cls))


NODES: list[type[io.ComfyNode]] = [FashionRAGGarmentMask]
