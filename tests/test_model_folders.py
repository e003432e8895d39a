"""The pack's model folders in ComfyUI's folder_paths (nodes/model_folders.py): merged with what
extra_model_paths.yaml set up first, and the dropdown check (mutation pass)."""

from __future__ import annotations

import os

from test_inpaint_parity import pack_module

KEYS = ("fashion_rag_unet", "fashion_rag_adapter", "fashion_rag_retrieval", "fashion_rag_indexes")


def test_register_keeps_extra_model_paths_first_and_their_extensions(comfy_runtime, tmp_path):
    """A folder that extra_model_paths.yaml registered before the pack stays first (it is searched
    first) and its extensions are kept beside the pack's: weights (.safetensors, .pth, .pt, .bin)
    for the model keys, .json (not weights) for the indexes; registering twice adds nothing.
    Mutations caught: the pack's default folder put in front; the earlier extensions replaced;
    the indexes given the weight extensions instead of .json."""
    import folder_paths

    folders = pack_module(comfy_runtime, "nodes.model_folders")
    saved = {k: folder_paths.folder_names_and_paths[k] for k in KEYS}
    extra = str(tmp_path / "mine")
    try:
        for key in KEYS:
            folder_paths.folder_names_and_paths[key] = ([extra], {".gguf"})
        folders.register()
        folders.register()
        for key in KEYS:
            paths, exts = folder_paths.folder_names_and_paths[key]
            sub = key.replace("fashion_rag_", "fashion_rag" + os.sep)
            assert paths == [extra, os.path.join(folder_paths.models_dir, sub)], key
            if key == "fashion_rag_indexes":
                assert exts == {".gguf", ".json"}
            else:
                assert exts == {".gguf", ".safetensors", ".pth", ".pt", ".bin"}, key
    finally:
        folder_paths.folder_names_and_paths.update(saved)
        for key in KEYS:
            folder_paths.filename_list_cache.pop(key, None)


def test_an_empty_file_name_is_refused_with_the_missing_file_message(comfy_runtime):
    """An empty dropdown value (no file in the folder yet) fails validation with the pack's
    message naming the folder to fill, not "value not in list" later; None (a linked input) is
    left for the run.
    Mutation caught: `name is not None` loosened to a truth test (the empty name accepted)."""
    folders = pack_module(comfy_runtime, "nodes.model_folders")
    files = pack_module(comfy_runtime, "fashion_rag.model_files")
    msg = folders.check_file(files.CHECKPOINT, "")
    assert isinstance(msg, str)
    assert msg.startswith("No SD2 inpainting checkpoint (text encoder + VAE) file was found")
    assert "models/checkpoints/" in msg and "stabilityai/stable-diffusion-2-inpainting" in msg
    assert folders.check_file(files.CHECKPOINT, None) is True
