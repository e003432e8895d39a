"""Numbers the reference implementation fixes, defined once (docs/method.md)."""

from __future__ import annotations

# (width, height) of the person images and of the garment images the reference feeds.
IMAGE_SIZE: tuple[int, int] = (384, 512)
# The OpenAI CLIP normalisation of the ViT-H garment preprocessing (transformers' processor).
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
