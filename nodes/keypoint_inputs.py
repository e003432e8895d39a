"""Keypoint inputs shared by the pose and mask nodes: the widgets and how they are read."""

from __future__ import annotations

from comfy_api.latest import io

from ..fashion_rag.inpaint.keypoints import MAX_CANVAS, Keypoints, PoseFormatError, parse_keypoints
from .types import PoseKeypointType

_NO_KEYPOINTS = (
    "No keypoints: connect a POSE_KEYPOINT (e.g. from the DWPose Estimator node) or paste keypoint JSON"
)


def keypoints_json_input() -> io.String.Input:
    return io.String.Input(
        "keypoints_json", multiline=True, default="",
        placeholder='{"people": [{"pose_keypoints_2d": [x, y, c, ...]}]}',
        tooltip="OpenPose JSON, Dress Code {\"keypoints\": [[x, y, score, id], ...]} (384x512 frame) "
                "or [[x, y], ...] x18 in COCO-18 order. Used when no POSE_KEYPOINT is connected.",
    )


def pose_keypoint_input() -> io.Input:
    return PoseKeypointType.Input(
        "pose_keypoint", optional=True,
        tooltip="POSE_KEYPOINT from a DWPose/OpenPose estimator; wins over the JSON.",
    )


def frame_inputs(target: str) -> list[io.Input]:
    """person_index, source_width, source_height; `target` names what 0 falls back to."""
    return [
        io.Int.Input("person_index", default=0, min=0, max=64, optional=True,
                     tooltip="Which detected person to use when there are several."),
        io.Int.Input("source_width", default=0, min=0, max=MAX_CANVAS, optional=True,
                     tooltip="Width of the frame the pixel coordinates refer to; 0 = from the "
                             f"data (canvas size, Dress Code 384) or the {target} width."),
        io.Int.Input("source_height", default=0, min=0, max=MAX_CANVAS, optional=True,
                     tooltip=f"Height of that frame; 0 = from the data or the {target} height."),
    ]


def read_keypoints(keypoints_json: str | None, pose_keypoint, person_index: int, source_width: int,
                   source_height: int, hint: str) -> list[Keypoints]:
    """The people's keypoints from whichever input is given; a clear error naming `hint` if none."""
    data = pose_keypoint if pose_keypoint is not None else keypoints_json
    if data is None or (isinstance(data, str) and not data.strip()):
        raise ValueError(_NO_KEYPOINTS + hint)
    try:
        people = parse_keypoints(data, person=person_index)
    except PoseFormatError as exc:
        raise ValueError(str(exc)) from None
    if source_width and source_height:
        people = [k if k.normalized else type(k)(k.xy, (source_width, source_height)) for k in people]
    return people
