"""Register the pack's model folders with ComfyUI (models/fashion_rag/...).

Each entry is also settable from extra_model_paths.yaml under the same key.
"""

from __future__ import annotations

import os

import folder_paths

WEIGHT_EXTENSIONS = {".safetensors", ".pth", ".pt", ".bin"}

# key -> (sub-folder of ComfyUI's models dir, accepted extensions)
FOLDERS: dict[str, tuple[str, set[str]]] = {
    "fashion_rag_indexes": (os.path.join("fashion_rag", "indexes"), {".json"}),
    "fashion_rag_retrieval": (os.path.join("fashion_rag", "retrieval"), WEIGHT_EXTENSIONS),
    "fashion_rag_adapter": (os.path.join("fashion_rag", "adapter"), WEIGHT_EXTENSIONS),
    "fashion_rag_unet": (os.path.join("fashion_rag", "unet"), WEIGHT_EXTENSIONS),
}


def register() -> None:
    """Merge our folders into folder_paths, keeping paths that extra_model_paths added first."""
    for key, (sub, exts) in FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, sub)
        paths, old_exts = folder_paths.folder_names_and_paths.get(key, ([], set()))
        paths = list(paths)
        if default not in paths:
            paths.append(default)
        folder_paths.folder_names_and_paths[key] = (paths, set(old_exts) | exts)


def folder_of(key: str) -> str:
    """The default folder for `key`, for error messages that tell users where files go."""
    return os.path.join(folder_paths.models_dir, FOLDERS[key][0])
