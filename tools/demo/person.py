"""A drawn stand-in person (384x512) with its 18 COCO/OpenPose keypoints, for the demo.

Real use takes a photo and keypoints from any pose estimator; this keeps the out-of-the-box
demo free of downloaded images.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

WIDTH, HEIGHT = 384, 512
# The example workflow's LoadImage input.
PERSON_FILE = "fashion_rag_demo_person.png"

# COCO-18 order (nose, neck, R-sho, R-elb, R-wri, L-sho, L-elb, L-wri, R-hip, R-knee, R-ank,
# L-hip, L-knee, L-ank, R-eye, L-eye, R-ear, L-ear) in 384x512 pixels; the person faces the
# camera, so their right side is on the image's left.
KEYPOINTS: list[tuple[float, float]] = [
    (192, 72), (192, 118), (146, 124), (126, 198), (116, 268), (238, 124), (258, 198),
    (268, 268), (166, 268), (162, 372), (160, 470), (218, 268), (222, 372), (224, 470),
    (183, 62), (201, 62), (172, 68), (212, 68),
]


def keypoints_json() -> str:
    """The keypoints as OpenPose JSON (the format the pose node reads)."""
    flat = [v for x, y in KEYPOINTS for v in (x, y, 1.0)]
    return json.dumps({"people": [{"pose_keypoints_2d": flat}], "canvas_width": WIDTH,
                       "canvas_height": HEIGHT})


def draw_person() -> Image.Image:
    img = Image.new("RGB", (WIDTH, HEIGHT), (232, 229, 224))
    d = ImageDraw.Draw(img)
    k = KEYPOINTS
    skin, shirt, trousers, shoe = (224, 182, 150), (120, 130, 140), (40, 52, 80), (30, 30, 30)

    def limb(a: int, b: int, colour: tuple[int, int, int], width: int) -> None:
        d.line([k[a], k[b]], fill=colour, width=width)
        for p in (k[a], k[b]):
            r = width // 2
            d.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=colour)

    for a, b in ((9, 10), (12, 13)):  # shins below the trousers
        limb(a, b, trousers, 30)
    for a in (10, 13):
        x, y = k[a]
        d.rounded_rectangle([x - 18, y - 4, x + 20, y + 12], 5, fill=shoe)
    d.polygon([k[8], k[11], (k[12][0] + 16, k[12][1]), (k[9][0] - 16, k[9][1])], fill=trousers)
    limb(8, 9, trousers, 36)
    limb(11, 12, trousers, 36)
    for a, b, c in ((2, 3, 4), (5, 6, 7)):
        limb(b, c, skin, 20)
        limb(a, b, shirt, 26)
    torso = [(k[2][0] - 6, k[2][1] - 6), (k[5][0] + 6, k[5][1] - 6),
             (k[11][0] + 8, k[11][1] + 6), (k[8][0] - 8, k[8][1] + 6)]
    d.polygon(torso, fill=shirt)
    d.rectangle([k[1][0] - 10, k[0][1] + 20, k[1][0] + 10, k[1][1]], fill=skin)
    x, y = k[0]
    d.ellipse([x - 26, y - 34, x + 26, y + 30], fill=skin)
    d.chord([x - 28, y - 38, x + 28, y + 10], 180, 360, fill=(70, 45, 30))
    return img


def install_demo_person(input_dir: Path) -> Path:
    """Write the example workflow's person image into a ComfyUI input folder."""
    path = Path(input_dir) / PERSON_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_person().save(path)
    return path
