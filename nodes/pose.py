"""FashionRAGPoseFromKeypoints: keypoints (JSON text or POSE_KEYPOINT) -> FASHION_RAG_POSE.

It also passes the keypoints on, parsed and in the person image's pixels, as POSE_KEYPOINT: every
'Fashion-RAG Garment Mask' of a workflow (one per garment of an outfit) then reads the one pose
the heatmaps come from, instead of a pasted copy that could drift from it.
"""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..fashion_rag.inpaint.budget import MAX_NODE_BYTES, GiB, frame_bytes
from ..fashion_rag.inpaint.keypoints import MAX_FRAMES, openpose_frames
from ..fashion_rag.inpaint.pose import (
    POSE_BYTES_CHANNELS,
    check_pose_budget,
    pose_heatmaps,
    skeleton_previews,
)
from ..fashion_rag.reference import IMAGE_SIZE
from .keypoint_inputs import frame_inputs, keypoints_json_input, pose_keypoint_input, read_keypoints
from .types import PoseKeypointType, PoseType

# One 4096x4096 frame (18 heatmaps + preview, float32: 1.31 GiB) fits the node budget; 8192 would not.
MAX_SIDE = 4096
_LIMITS = (f"Limits: at most {MAX_FRAMES} frames, and heatmaps plus preview ({POSE_BYTES_CHANNELS} float32 "
           f"values per pixel per frame) within {MAX_NODE_BYTES / GiB:g} GiB: "
           f"{MAX_NODE_BYTES // frame_bytes(IMAGE_SIZE, POSE_BYTES_CHANNELS)} frames at "
           f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, one at {MAX_SIDE}x{MAX_SIDE}.")


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
                "paste OpenPose or Dress Code keypoint JSON. Passes the keypoints on (POSE_KEYPOINT) so "
                "every garment mask of the workflow reads the same pose. " + _LIMITS
            ),
            inputs=[
                keypoints_json_input(),
                io.Int.Input("width", default=IMAGE_SIZE[0], min=8, max=MAX_SIDE, step=8,
                             tooltip=f"Width of the person image the pose is for (up to {MAX_SIDE})."),
                io.Int.Input("height", default=IMAGE_SIZE[1], min=8, max=MAX_SIDE, step=8,
                             tooltip=f"Height of the person image the pose is for (up to {MAX_SIDE})."),
                *frame_inputs("target"),
                pose_keypoint_input(),
            ],
            outputs=[
                PoseType.Output(display_name="pose", tooltip="[B, 18, H, W] heatmaps in [0, 1]."),
                io.Image.Output(display_name="preview", tooltip="The skeleton, for checking."),
                PoseKeypointType.Output(
                    display_name="keypoints",
                    tooltip="The same keypoints as POSE_KEYPOINT in pixels of width x height (the chosen "
                            "person as person 0), for the pose_keypoint input of each 'Fashion-RAG Garment "
                            "Mask', so all masks and the pose read one source.",
                ),
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
        check_pose_budget(len(keypoints), size)  # before the heatmaps or the preview take anything
        pose = pose_heatmaps(keypoints, size)
        preview = skeleton_previews(keypoints, size)
        return io.NodeOutput(pose, preview, openpose_frames(keypoints, size),
                             ui=ui.PreviewImage(preview, cls=cls))


NODES: list[type[io.ComfyNode]] = [FashionRAGPoseFromKeypoints]
