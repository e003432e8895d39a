"""FashionRAGPoseFromKeypoints: keypoints (JSON text or POSE_KEYPOINT) -> FASHION_RAG_POSE."""

from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io, ui

from ..fashion_rag.inpaint.pose import pose_heatmaps, render_skeleton
from ..fashion_rag.reference import IMAGE_SIZE
from .keypoint_inputs import frame_inputs, keypoints_json_input, pose_keypoint_input, read_keypoints
from .types import PoseType


class FashionRAGPoseFromKeypoints(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FashionRAGPoseFromKeypoints",
            display_name="Fashion-RAG Pose from Keypoints",
            category="fashion_rag/inpaint",
            description=(
                "Turns 18 body keypoints into the 18 Gaussian heatmaps (sigma 9) the Fashion-RAG "
                "UNet was trained with. Connect a DWPose/OpenPose estimator's POSE_KEYPOINT, or "
                "paste OpenPose or Dress Code keypoint JSON."
            ),
            inputs=[
                keypoints_json_input(),
                io.Int.Input("width", default=IMAGE_SIZE[0], min=8, max=8192, step=8,
                             tooltip="Width of the person image the pose is for."),
                io.Int.Input("height", default=IMAGE_SIZE[1], min=8, max=8192, step=8,
                             tooltip="Height of the person image the pose is for."),
                *frame_inputs("target"),
                pose_keypoint_input(),
            ],
            outputs=[
                PoseType.Output(display_name="pose", tooltip="[B, 18, H, W] heatmaps in [0, 1]."),
                io.Image.Output(display_name="preview", tooltip="The skeleton, for checking."),
            ],
        )

    @classmethod
    def execute(cls, keypoints_json: str, width: int, height: int, person_index: int = 0,
                source_width: int = 0, source_height: int = 0,
                pose_keypoint=None) -> io.NodeOutput:
        keypoints = read_keypoints(
            keypoints_json, pose_keypoint, person_index, source_width, source_height,
            ". To inpaint without a pose, leave the pose input of the Fashion-RAG inpaint node unconnected.",
        )
        size = (width, height)
        pose = pose_heatmaps(keypoints, size)
        preview = torch.from_numpy(np.stack([render_skeleton(k.to_size(size), size) for k in keypoints]))
        return io.NodeOutput(pose, preview, ui=ui.PreviewImage(preview, cls=cls))


NODES: list[type[io.ComfyNode]] = [FashionRAGPoseFromKeypoints]
