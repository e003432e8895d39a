"""A synthetic mini Dress Code in the dataset's exact layout, for the quick evaluation run and the tests.

`python -m tools.demo.dresscode DIR [--per-category N]` writes N test pairs per category (drawn
people and garments, not photos): person and garment images, cleaned in-shop garments, Dress
Code keypoint files, label maps with Dress Code's label ids (palette PNGs), the paired and
unpaired pair lists (per category and the top-level paired one) and the Dress Code-multimodal
caption files. One extra pair per category has a garment without a caption: the reference
leaves such pairs out, and so does `fashion-rag evaluate`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from .catalog import COLOURS, PATTERNS, SHAPES, draw_garment
from .person import HEIGHT, KEYPOINTS, WIDTH, draw_person

# Dress Code numbers its test people per category in separate ranges.
FIRST_NUMBER = {"upper_body": 48000, "lower_body": 51000, "dresses": 52000}
# Dress Code's label ids the drawing uses.
BACKGROUND, HAIR, UPPER, PANTS, DRESS = 0, 2, 4, 6, 7
LEFT_SHOE, RIGHT_SHOE, HEAD, LEFT_LEG, RIGHT_LEG, LEFT_ARM, RIGHT_ARM = 9, 10, 11, 12, 13, 14, 15


def label_map(category: str) -> Image.Image:
    """A palette label map of the demo person (tools/demo/person.py) wearing the category's garment:
    a top and trousers, or a dress to the knees with bare shins."""
    k = KEYPOINTS
    img = Image.new("P", (WIDTH, HEIGHT), BACKGROUND)
    img.putpalette([v for i in range(256) for v in ((i * 67) % 256, (i * 131) % 256, (i * 29) % 256)])
    d = ImageDraw.Draw(img)

    def limb(a: int, b: int, label: int, width: int) -> None:
        d.line([k[a], k[b]], fill=label, width=width)
        r = width // 2
        for x, y in (k[a], k[b]):
            d.ellipse([x - r, y - r, x + r, y + r], fill=label)

    if category == "dresses":
        limb(9, 10, RIGHT_LEG, 30)
        limb(12, 13, LEFT_LEG, 30)
        d.polygon([(k[2][0] - 6, k[2][1] - 6), (k[5][0] + 6, k[5][1] - 6), (k[12][0] + 24, k[12][1]),
                   (k[9][0] - 24, k[9][1])], fill=DRESS)
    else:
        limb(9, 10, PANTS, 30)
        limb(12, 13, PANTS, 30)
        d.polygon([k[8], k[11], (k[12][0] + 16, k[12][1]), (k[9][0] - 16, k[9][1])], fill=PANTS)
        limb(8, 9, PANTS, 36)
        limb(11, 12, PANTS, 36)
        d.polygon([(k[2][0] - 6, k[2][1] - 6), (k[5][0] + 6, k[5][1] - 6), (k[11][0] + 8, k[11][1] + 6),
                   (k[8][0] - 8, k[8][1] + 6)], fill=UPPER)
    for ankle, label in ((10, RIGHT_SHOE), (13, LEFT_SHOE)):
        x, y = k[ankle]
        d.rectangle([x - 18, y - 4, x + 20, y + 12], fill=label)
    for (a, b, c), label in (((2, 3, 4), RIGHT_ARM), ((5, 6, 7), LEFT_ARM)):
        limb(b, c, label, 20)
        limb(a, b, UPPER if category != "dresses" else label, 26)
    d.rectangle([k[1][0] - 10, k[0][1] + 20, k[1][0] + 10, k[1][1]], fill=HEAD)  # the neck
    x, y = k[0]
    d.ellipse([x - 26, y - 34, x + 26, y + 30], fill=HEAD)
    d.chord([x - 28, y - 38, x + 28, y + 10], 180, 360, fill=HAIR)
    return img


def keypoints_file() -> dict:
    """Dress Code's keypoint form: [x, y, score, keypoint id] per COCO-18 keypoint, 384x512 frame."""
    return {"keypoints": [[float(x), float(y), 0.9, i] for i, (x, y) in enumerate(KEYPOINTS)]}


def _garment(category: str, i: int) -> tuple[Image.Image, list[str]]:
    shapes = list(SHAPES[category])
    colours, patterns = list(COLOURS), list(PATTERNS)
    shape, colour, pattern = shapes[i % len(shapes)], colours[i % len(colours)], patterns[i % len(patterns)]
    chunks = [f"{colour} {shape}", f"{PATTERNS[pattern]} pattern", "soft cotton fabric"]
    return draw_garment(SHAPES[category][shape], COLOURS[colour], pattern), chunks


def write_mini_dresscode(root: str | Path, per_category: int = 2) -> Path:
    """Write the mini dataset under `root` (module docstring); returns root."""
    root = Path(root)
    fine: dict[str, list[str]] = {}
    coarse: dict[str, list[str]] = {}
    top_paired: list[str] = []
    for c_index, category in enumerate(sorted(FIRST_NUMBER)):
        folder = root / category
        for sub in ("images", "cleaned_inshop_imgs", "keypoints", "label_maps"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(per_category + 1):  # the last one: a garment without a caption
            number = f"{FIRST_NUMBER[category] + i:06d}"
            colour = tuple(COLOURS.values())[(i + 3 * c_index) % len(COLOURS)]
            tint = Image.new("RGB", (WIDTH, HEIGHT), colour)
            Image.blend(draw_person(), tint, 0.15).save(folder / "images" / f"{number}_0.jpg", quality=95)
            garment, chunks = _garment(category, i + c_index)
            garment.save(folder / "images" / f"{number}_1.jpg", quality=95)
            garment.save(folder / "cleaned_inshop_imgs" / f"{number}_1_cleaned.jpg", quality=95)
            (folder / "keypoints" / f"{number}_2.json").write_text(json.dumps(keypoints_file()))
            label_map(category).save(folder / "label_maps" / f"{number}_4.png")
            if i < per_category:
                # Dress Code-multimodal: the first garment of each category has coarse captions only.
                (coarse if i == 0 else fine)[number] = chunks
            lines.append((f"{number}_0.jpg", f"{number}_1.jpg"))
        (folder / "test_pairs_paired.txt").write_text("".join(f"{p} {g}\n" for p, g in lines))
        garments = [g for _, g in lines]
        rotated = garments[1:] + garments[:1]  # unpaired: each person with another garment
        (folder / "test_pairs_unpaired.txt").write_text(
            "".join(f"{p} {g}\n" for (p, _), g in zip(lines, rotated, strict=True)))
        top_paired += [f"{p} {g}\n" for p, g in lines]
    (root / "test_pairs_paired.txt").write_text("".join(top_paired))
    (root / "fine_captions.json").write_text(json.dumps(fine, indent=1))
    (root / "coarse_captions.json").write_text(json.dumps(coarse, indent=1))
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.demo.dresscode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder to write the mini Dress Code into")
    p.add_argument("--per-category", type=int, default=2, help="captioned test pairs per category (2)")
    args = p.parse_args(argv)
    root = write_mini_dresscode(args.out, args.per_category)
    print(f"wrote a mini Dress Code ({args.per_category} pairs per category) to {root}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
