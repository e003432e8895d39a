"""A tiny random retrieval encoder for the demo and the tests (no pretrained weights here).

A real open_clip CLIP (ViT image tower, transformer text tower, the real BPE tokenizer), just
very small. Its weights file carries its architecture and a "random demo" mark in its metadata
(fashion_rag.openclip_encoder.METADATA_KEY), so the library loads it like any encoder and
every tool says plainly that retrieval with it means nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fashion_rag.files import atomic_write
from fashion_rag.openclip_encoder import METADATA_KEY, register_config

TINY_ARCH = "fashion-rag-tiny"
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def tiny_encoder_metadata() -> dict[str, str]:
    # One metadata key holding sorted JSON: safetensors writes several keys in hash order, which
    # would break "same seed, same bytes" (and so the weights hash an index records).
    entry = {"open_clip": {"name": TINY_ARCH, "config": TINY_CONFIG}, "random_demo": True}
    return {METADATA_KEY: json.dumps(entry, sort_keys=True)}


def write_tiny_encoder_weights(path: str | Path, seed: int = 0) -> Path:
    """Write seeded random weights of the tiny architecture (same seed, same bytes)."""
    import open_clip
    from safetensors.torch import save_file

    register_config(TINY_ARCH, TINY_CONFIG)
    with torch.random.fork_rng(devices=[]):  # seed locally; leave the caller's RNG alone
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY_ARCH, pretrained=None)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=tiny_encoder_metadata()))
