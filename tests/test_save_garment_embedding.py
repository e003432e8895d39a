"""'Fashion-RAG Save Garment Embedding' run in-process with tiny CLIP vision and adapter weights
(no full-size models): where the file goes, its name, and what the node reports (mutation pass)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from test_inversion_parity import Models, smooth_garment

NAME = "fr_fast_save_test"


@pytest.fixture(scope="module")
def models(comfy_runtime, tmp_path_factory) -> Models:
    return Models(comfy_runtime, tmp_path_factory.mktemp("save_embedding"))


@pytest.fixture
def extra_embeddings(comfy_runtime, tmp_path):
    """A second embeddings folder registered after ComfyUI's own (as extra_model_paths.yaml would);
    the test's file is removed from ComfyUI's folder afterwards."""
    import folder_paths

    folder_paths.add_model_folder_path("embeddings", str(tmp_path))
    own = comfy_runtime.base / "models" / "embeddings" / f"{NAME}.safetensors"
    try:
        yield tmp_path
    finally:
        folder_paths.folder_names_and_paths["embeddings"][0].remove(str(tmp_path))
        folder_paths.filename_list_cache.pop("embeddings", None)
        own.unlink(missing_ok=True)


def test_saves_into_comfyuis_embeddings_folder_and_reports_it(comfy_runtime, models, extra_embeddings):
    """Two images, name given with its extension and a trailing space: the file is
    models/embeddings/fr_fast_save_test.safetensors (ComfyUI's own folder, the first listed, not
    an extra one), the output is "embedding:fr_fast_save_test", and the preview reads
    "saved: <that path> (32 tokens) -> embedding:fr_fast_save_test" (2 x 16 pseudo-words); the same
    images again write nothing and say "unchanged".
    Mutations caught: the name not normalised (a "...safetensors.safetensors" file, a prompt
    text with the extension); the last embeddings folder used; the status always "saved"; the
    token count per garment only (16); the preview naming the embedding instead of the file."""
    node = comfy_runtime.nodes.NODE_CLASS_MAPPINGS["FashionRAGSaveGarmentEmbedding"]
    pixels = np.stack([smooth_garment(21, 64, 48), smooth_garment(22, 64, 48)])
    images = torch.from_numpy(pixels).float() / 255
    want = comfy_runtime.base / "models" / "embeddings" / f"{NAME}.safetensors"

    out = node.execute(models.clip_vision, models.adapter, f"{NAME}.safetensors ", images=images)
    assert out.result == (f"embedding:{NAME}",)
    assert out.ui.as_dict()["text"] == (f"saved: {want} (32 tokens) -> embedding:{NAME}",)
    assert want.is_file() and not list(extra_embeddings.iterdir())
    with safe_open(str(want), framework="pt") as f:
        assert list(f.keys()) == ["clip_h"] and f.get_tensor("clip_h").shape == (32, 64)
        assert json.loads(f.metadata()["fashion_rag"]) == {"garments": [], "extra_images": 2,
                                                         "tokens_per_garment": 16}

    again = node.execute(models.clip_vision, models.adapter, NAME, images=images)
    assert again.ui.as_dict()["text"] == (f"unchanged: {want} (32 tokens) -> embedding:{NAME}",)
