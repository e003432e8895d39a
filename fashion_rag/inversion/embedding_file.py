"""Garment pseudo-words saved as a textual-inversion embedding file (`embedding:<name>`)."""

from __future__ import annotations

import os
import re

import torch

from ..files import atomic_write

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
# The key ComfyUI's SD2 tokenizer asks load_embed for (any single tensor would also be taken).
TENSOR_KEY = "clip_h"


def embedding_name(name: str) -> str:
    """The file name stem for `name`, or ValueError: the prompt syntax ends at the first space."""
    name = name.strip()
    if name.lower().endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    if not _NAME_RE.match(name):
        raise ValueError(
            f"embedding name {name!r}: use letters, digits, '_', '-' and '.' only (no spaces or folders), "
            "since the prompt syntax embedding:<name> ends at the first space"
        )
    return name


def save_embedding(ptes: torch.Tensor, folder: str, name: str, overwrite: bool = False,
                   metadata: dict[str, str] | None = None) -> tuple[str, bool]:
    """Write [k, tokens, width] PTEs as <folder>/<name>.safetensors, atomically. -> (path, written).

    An existing file is kept when it already holds the same embedding (a re-queued workflow)
    and is an error otherwise, unless overwrite is set.
    """
    from safetensors.torch import load_file, save_file

    rows = ptes.reshape(-1, ptes.shape[-1]).float().contiguous().cpu().clone()
    path = os.path.join(folder, f"{embedding_name(name)}.safetensors")
    if os.path.exists(path) and not overwrite:
        try:
            old = next(iter(load_file(path).values()))
            same = old.shape == rows.shape and torch.equal(old, rows)
        except Exception:  # unreadable: certainly not the same embedding
            same = False
        if same:
            return path, False
        raise FileExistsError(
            f"{path} already exists and holds a different embedding: choose another name or turn on "
            "'overwrite'."
        )
    atomic_write(path, lambda tmp: save_file({TENSOR_KEY: rows}, tmp, metadata=metadata or {}))
    return path, True
