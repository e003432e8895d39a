"""Peak memory of the pose and mask nodes' computation, one fresh process per row.

    python -m benchmarks.pose_memory                 # the table below, within the node budget
    python -m benchmarks.pose_memory --unbounded     # also what 8192x8192 would take without it

Each row runs what the node runs (pose: heatmaps + skeleton preview; mask: garment mask with
feather 16 + the grey preview) in a new Python process and reports how far its resident memory
rose above the level before the call (the kernel's VmHWM minus VmRSS, Linux), next to the bytes
of the outputs themselves. A refused row (over MAX_NODE_BYTES) shows the rise of the refusal.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GiB = 1 << 30
ROWS = [  # (what, width, height, frames)
    ("pose", 384, 512, 1), ("pose", 384, 512, 16), ("pose", 1024, 1024, 1), ("pose", 2048, 2048, 1),
    ("pose", 4096, 4096, 1), ("pose", 8192, 8192, 1), ("pose", 384, 512, 131),
    ("mask", 2048, 2048, 1), ("mask", 4096, 4096, 1), ("mask", 8192, 8192, 1),
]


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure(what: str, width: int, height: int, frames: int, unbounded: bool) -> dict:
    """Run in the child process: one node computation, its peak rise and its outputs' bytes."""
    import numpy as np
    import torch

    from fashion_rag.inpaint import budget
    from fashion_rag.inpaint.keypoints import Keypoints
    from fashion_rag.inpaint.mask import garment_mask, masked_preview
    from fashion_rag.inpaint.pose import check_pose_budget, pose_heatmaps, skeleton_previews
    from tools.demo import person

    if unbounded:
        budget.MAX_NODE_BYTES = 1 << 40
    size = (width, height)
    kp = Keypoints(np.array(person.KEYPOINTS, dtype=np.float64), (person.WIDTH, person.HEIGHT))

    def run(size: tuple[int, int], frames: int, image: torch.Tensor | None) -> int:
        if what == "pose":
            check_pose_budget(frames, size)
            outputs = (pose_heatmaps([kp] * frames, size), skeleton_previews([kp] * frames, size))
        else:  # as nodes/mask.py: budget, one mask copied into the batch, preview of the image
            budget.check_budget("a garment mask", frames, size, 4, "")
            masks = torch.empty(frames, size[1], size[0])
            masks[:] = garment_mask(kp.to_size(size), "upper_body", size[0], size[1], 4, 16)
            outputs = (masks, masked_preview(image, masks))
        return sum(t.numel() * t.element_size() for t in outputs)

    run((64, 64), 1, torch.rand(1, 64, 64, 3))  # lazy imports and first-call set-up
    # The person image is the mask node's input (another node allocated it): made before measuring.
    image = torch.rand(frames, height, width, 3) if what == "mask" else None
    rss = _status("VmRSS")
    try:
        out_bytes, refused = run(size, frames, image), None
    except budget.TooLargeError as exc:
        out_bytes, refused = budget.frame_bytes(size, 21 if what == "pose" else 4) * frames, str(exc)
    return {"rise": _status("VmHWM") - rss, "outputs": out_bytes, "refused": refused}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unbounded", action="store_true", help="lift the node budget (needs ~7 GiB free)")
    ap.add_argument("--one", nargs=4, metavar=("WHAT", "W", "H", "FRAMES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        what, w, h, n = args.one
        print(json.dumps(measure(what, int(w), int(h), int(n), args.unbounded)))
        return
    lifted = " (budget lifted)" if args.unbounded else ""
    print(f"| node | size | frames | outputs GiB | peak rise GiB | rise / outputs | refused{lifted} |")
    print("|---|---|---|---|---|---|---|")
    for what, w, h, n in ROWS:
        cmd = [sys.executable, "-m", "benchmarks.pose_memory", "--one", what, str(w), str(h), str(n)]
        res = subprocess.run(cmd + (["--unbounded"] if args.unbounded else []), cwd=ROOT,
                             capture_output=True, text=True)
        if res.returncode:
            print(f"| {what} | {w}x{h} | {n} | failed: {res.stderr.strip().splitlines()[-1]} | | | |")
            continue
        r = json.loads(res.stdout)
        ratio = "" if r["refused"] else f"{r['rise'] / r['outputs']:.2f}"
        print(f"| {what} | {w}x{h} | {n} | {r['outputs'] / GiB:.3f} | {r['rise'] / GiB:.3f} | {ratio} | "
              f"{'yes' if r['refused'] else 'no'} |")


if __name__ == "__main__":
    main()
