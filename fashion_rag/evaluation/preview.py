"""The score node's preview: each result with its rank, its scores and the scored region drawn on it."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .crop import mask_box
from .scores import ImageScore

BOX_COLOUR = (255, 214, 10)
BAND_COLOUR = (0, 0, 0, 170)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def label_lines(item: ImageScore, rank: int) -> list[str]:
    """"#1  31.2" and "T 27.1  I 35.3" (plus the garment id when each image has its own)."""
    lines = [f"#{rank}  {_fmt(item.score)}", f"T {_fmt(item.clip_t)}  I {_fmt(item.clip_i)}"]
    if item.garment:
        lines.append(item.garment)
    return lines


def draw_scores(image: torch.Tensor, mask: torch.Tensor, item: ImageScore, rank: int) -> torch.Tensor:
    """image [H, W, 3] in [0, 1] with the mask's box outlined and the labels in a box at the top left."""
    h, w = image.shape[0], image.shape[1]
    pixels = (image[..., :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    canvas = Image.fromarray(pixels).convert("RGBA")
    overlay = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    x0, y0, x1, y1 = mask_box(mask)
    draw.rectangle((x0, y0, x1, y1), outline=BOX_COLOUR + (255,), width=max(1, w // 192))
    size = max(8, round(w / 16))
    fonts = [_font(size)] + [_font(max(7, round(size * 0.7)))] * 2
    lines = label_lines(item, rank)
    pad = max(2, size // 4)
    heights = [f.getbbox("Ag")[3] + pad for f in fonts[: len(lines)]]
    width = max(font.getlength(line) for line, font in zip(lines, fonts, strict=False))
    draw.rectangle((0, 0, min(w, width + 2 * pad), sum(heights) + pad), fill=BAND_COLOUR)
    y = pad
    for line, font, lh in zip(lines, fonts, heights, strict=False):
        draw.text((pad, y), line, fill=(255, 255, 255, 255), font=font)
        y += lh
    out = Image.alpha_composite(canvas, overlay).convert("RGB")
    return torch.from_numpy(np.asarray(out, dtype=np.float32) / 255.0).reshape(h, w, 3)
