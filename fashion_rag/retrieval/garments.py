"""What retrieval hands to the later stages (the GARMENTS socket)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Garment:
    id: str
    score: float
    category: str  # one of categories.CATEGORIES, or the catalog's free text
    path: str  # the image's path in the catalog it was built from (for people: never read again)
    caption: str = ""


@dataclass(frozen=True)
class Garments:
    """Retrieved garments in rank order, with their images: [k, 512, 384, 3] float32 in [0, 1]
    (ComfyUI's IMAGE layout), each fitted to 384x512 (WxH) as the reference feeds them; values are
    k/255 levels of the 8-bit source, so converting back to uint8 with round() is lossless."""

    items: tuple[Garment, ...]
    images: torch.Tensor = field(repr=False)
    query: str = ""  # the text they were retrieved for (what a score node compares results with)

    def __len__(self) -> int:
        return len(self.items)
