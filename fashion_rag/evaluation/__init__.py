"""Scoring inpainted results as the reference's evaluation does: CLIP-T and CLIP-I (scores.py)
on the repainted region (crop.py), and the score node's preview (preview.py)."""
