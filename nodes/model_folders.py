"""The pack's model folders in ComfyUI (models/fashion_rag/...), from the library's registry.

Each is also settable from extra_model_paths.yaml under the same key.
"""

from __future__ import annotations

import os

import folder_paths

from ..fashion_rag.model_files import (
    INDEXES_FOLDER,
    INDEXES_KEY,
    MODEL_FILES,
    ModelFile,
    missing_file_message,
)

WEIGHT_EXTENSIONS = {".safetensors", ".pth", ".pt", ".bin"}
# key -> sub-folder of ComfyUI's models folder: the pack's own ones (ComfyUI registers the rest).
FOLDERS: dict[str, str] = {
    INDEXES_KEY: INDEXES_FOLDER,
    **{m.key: m.folder for m in MODEL_FILES if m.folder.startswith("fashion_rag/")},
}


def register() -> None:
    """Merge our folders into folder_paths, keeping paths that extra_model_paths added first."""
    for key, sub in FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, *sub.split("/"))
        paths, old_exts = folder_paths.folder_names_and_paths.get(key, ([], set()))
        paths = list(paths)
        if default not in paths:
            paths.append(default)
        exts = {".json"} if key == INDEXES_KEY else WEIGHT_EXTENSIONS
        folder_paths.folder_names_and_paths[key] = (paths, set(old_exts) | exts)


def folder_of(key: str) -> str:
    """The default folder for `key`, for messages that tell users where files go."""
    return os.path.join(folder_paths.models_dir, *FOLDERS[key].split("/"))


def file_list(model: ModelFile) -> list[str]:
    return list(folder_paths.get_filename_list(model.key))


def full_path(model: ModelFile, name: str | None) -> str | None:
    """The file `name` in the model's folders, or None (names are checked by folder_paths)."""
    return folder_paths.get_full_path(model.key, name) if name else None


def missing_message(model: ModelFile, name: str | None) -> str:
    return missing_file_message(model, name, folder_paths.get_folder_paths(model.key))


def require(model: ModelFile, name: str | None) -> str:
    """The full path of `name`, or FileNotFoundError with the pack's one missing-file message."""
    path = full_path(model, name)
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(missing_message(model, name))
    return path
