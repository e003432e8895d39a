"""FashionRAGPoseFromKeypoints: keypoints (JSON text or POSE_KEYPOINT) -> FASHION_RAG_POSE."""

from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io, ui

from ..fashion_rag.pose import (
    DEFAULT_SIZE,
    PoseFormatError,
    parse_keypoints,
    pose_heatmaps,
    render_skeleton,
)
from .types import PoseKeypointType, PoseType


class FashionRAGPoseFromKeypoints(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FashionRAGPoseFromKeypoints",
            display_name="Fashion-RAG Pose from Keypoints",
            category="fashion_rag/pose",
            description=(
                "Turns 18 body keypoints into the 18 Gaussian heatmaps (sigma 9) the Fashion-RAG "
                "UNet was trained with. Connect a DWPose/OpenPose estimator's POSE_KEYPOINT, or "
                "paste OpenPose or Dress Code keypoint JSON."
            ),
            inputs=[
                io.String.Input(
                    "keypoints_json", multiline=True, default="",
                    placeholder='{"people": [{"pose_keypoints_2d": [x, y, c, ...]}]}',
                    tooltip="OpenPose JSON, Dress Code {\"keypoints\": [[x, y, score, id], ...]} "
                            "(384x512 frame) or [[x, y], ...] x18. Used when no POSE_KEYPOINT "
                            "is connected.",
                ),
                io.Int.Input("width", default=DEFAULT_SIZE[0], min=8, max=8192, step=8,
                             tooltip="Width of the person image the pose is for."),
                io.Int.Input("height", default=DEFAULT_SIZE[1], min=8, max=8192, step=8,
                             tooltip="Height of the person image the pose is for."),
                io.Int.Input("person_index", default=0, min=0, max=64, optional=True,
                             tooltip="Which detected person to use when there are several."),
                io.Int.Input("source_width", default=0, min=0, max=16384, optional=True,
                             tooltip="Width of the frame the pixel coordinates refer to; 0 = from "
                                     "the data (canvas size, Dress Code 384) or the target width."),
                io.Int.Input("source_height", default=0, min=0, max=16384, optional=True,
                             tooltip="Height of that frame; 0 = from the data or the target height."),
                PoseKeypointType.Input(
                    "pose_keypoint", optional=True,
                    tooltip="POSE_KEYPOINT from a DWPose/OpenPose estimator; wins over the JSON.",
                ),
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
        data = pose_keypoint if pose_keypoint is not None else keypoints_json
        if data is None or (isinstance(data, str) and not data.strip()):
            raise ValueError(
                "No keypoints: connect a POSE_KEYPOINT (e.g. from the DWPose Estimator node) or "
                "paste keypoint JSON. To inpaint without a pose, leave the pose input of the "
                "Fashion-RAG inpaint node unconnected."
            )
        try:
            keypoints = parse_keypoints(data, person=person_index)
        except PoseFormatError as exc:
            raise ValueError(str(exc)) from None
        if source_width and source_height:
            keypoints = [k if k.normalized else type(k)(k.xy, (source_width, source_height))
                         for k in keypoints]
        size = (width, height)
        pose = pose_heatmaps(keypoints, size)
        preview = torch.from_numpy(np.stack([render_skeleton(k.to_size(size), size) for k in keypoints]))
        return io.NodeOutput(pose, preview, ui=ui.PreviewImage(preview, cls=cls))


NODES: list[type[io.ComfyNode]] = [FashionRAGPoseFromKeypoints]
