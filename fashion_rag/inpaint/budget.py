"""The memory a pose or mask node may allocate for its outputs in one run, and the check.

A server runs every prompt in one process: a node asked for a huge pose (width = height = 8192,
or hundreds of frames) would take gigabytes that later prompts then miss. So the nodes compute
what their outputs will take before allocating anything, and refuse more than the budget with a
message that names the limit and the input.
"""

from __future__ import annotations

GiB = 1 << 30
# 2 GiB of outputs per node run: 130 frames at the model's 384x512, or one 4096x4096 frame of the
# pose node (18 heatmaps + an RGB preview, float32); the working memory on top is small (pose.py,
# mask.py).
MAX_NODE_BYTES = 2 * GiB
FLOAT32_BYTES = 4


class TooLargeError(ValueError):
    """A node's outputs would exceed MAX_NODE_BYTES."""


def frame_bytes(size: tuple[int, int], channels: int) -> int:
    """Bytes of one float32 frame of `channels` channels at `size` (width, height)."""
    w, h = size
    return w * h * channels * FLOAT32_BYTES


def check_budget(what: str, frames: int, size: tuple[int, int], channels: int, advice: str) -> None:
    """Refuse `frames` frames of `channels` float32 channels at `size` beyond MAX_NODE_BYTES."""
    per_frame = frame_bytes(size, channels)
    need = frames * per_frame
    if need <= MAX_NODE_BYTES:
        return
    w, h = size
    fit = MAX_NODE_BYTES // per_frame
    room = (f"at most {fit} frame(s) fit at {w}x{h}" if fit
            else f"one frame at {w}x{h} is already too large (at most "
                 f"{MAX_NODE_BYTES // (channels * FLOAT32_BYTES):,} pixels per frame)")
    raise TooLargeError(
        f"{what} of {frames} frame(s) at {w}x{h} would take {need / GiB:.2f} GiB ({channels} float32 "
        f"channels per pixel), more than the {MAX_NODE_BYTES / GiB:g} GiB a node may allocate; "
        f"{room}: {advice}"
    )
