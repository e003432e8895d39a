"""One image that shows a run at a glance: labelled rows of thumbnails."""

from __future__ import annotations

from PIL import Image, ImageDraw

THUMB_H = 256
PAD = 8
LABEL_W = 110


def contact_sheet(rows: list[tuple[str, list[Image.Image]]]) -> Image.Image:
    """rows: (label, images) pairs, top to bottom; each image is scaled to THUMB_H high."""
    scaled = [
        (label, [im.convert("RGB").resize((max(1, round(im.width * THUMB_H / im.height)), THUMB_H))
                 for im in images])
        for label, images in rows
    ]
    width = LABEL_W + max((sum(im.width + PAD for im in ims) for _, ims in scaled), default=0) + PAD
    height = len(scaled) * (THUMB_H + PAD) + PAD
    sheet = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    y = PAD
    for label, ims in scaled:
        draw.text((PAD, y + THUMB_H // 2), label, fill=(20, 20, 20))
        x = LABEL_W
        for im in ims:
            sheet.paste(im, (x, y))
            x += im.width + PAD
        y += THUMB_H + PAD
    return sheet
