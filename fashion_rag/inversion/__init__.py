"""Stage 2: a garment image -> CLIP ViT-H features -> the inversion adapter's 16 pseudo-words,
placed in the reference prompt."""
