"""GarmentEncoder's cheap facts and batching (fashion_rag/openclip_encoder.py), at tiny sizes.

Expected values are literals (open_clip's published configs, hashlib's empty digest) or come
from open_clip's own `local-dir:` model and tokenizer, never from the pack's own code.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import open_clip
import pytest
import torch
from encoder_folders import write_model_folder
from PIL import Image

from fashion_rag.openclip_encoder import GarmentEncoder, model_config, read_folder_config, tokenizer_sha256
from tools.demo.encoder import TINY_ARCH, write_tiny_encoder_weights

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def test_preprocess_id_names_the_folders_own_mean_and_std(tmp_path):
    """An index records preprocess_id so that encoders preprocessing differently are never mixed:
    each field is the folder config's own (OpenAI's mean/std here, which differ from each other,
    unlike LAION's 0.5/0.5), and open_clip's defaults for what the config leaves out.
    Mutation caught: preprocess_id writing the mean in place of the std."""
    folder = write_model_folder(tmp_path / "clip-fashion", "clip")
    prefix, size, mode, interp, mean, std = GarmentEncoder(folder).preprocess_id.split("|")
    assert (prefix, size, mode, interp) == ("garment384x512-whitepad", "32", "shortest", "bicubic")
    assert json.loads(mean) == OPENAI_MEAN and json.loads(std) == OPENAI_STD


def test_tokenizer_hash_depends_on_file_names_as_well_as_contents(tmp_path):
    """The same bytes under another tokenizer file name are another tokenizer (transformers reads
    vocab.txt and merges.txt differently). Mutation caught: the file name left out of the hash."""
    empty, merges, vocab = (tmp_path / n for n in ("empty", "merges", "vocab"))
    for folder in (empty, merges, vocab):
        folder.mkdir()
    (merges / "merges.txt").write_bytes(b"a b\n")
    (vocab / "vocab.txt").write_bytes(b"a b\n")
    assert tokenizer_sha256(empty) == hashlib.sha256(b"").hexdigest()
    hashes = {tokenizer_sha256(f) for f in (empty, merges, vocab)}
    assert len(hashes) == 3


@pytest.mark.parametrize("embed_dim", [None, "32", 32.0])
def test_folder_config_without_an_integer_embed_dim_is_refused(tmp_path, embed_dim):
    """Refused when read, with the file named, not a KeyError or a float dim at build time.
    Mutation caught: the embed_dim check dropped from read_folder_config."""
    cfg = {"vision_cfg": {"image_size": 32}, "text_cfg": {}}
    if embed_dim is not None:
        cfg["embed_dim"] = embed_dim
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    with pytest.raises(ValueError, match="no OpenCLIP model_cfg with embed_dim"):
        read_folder_config(tmp_path)


def test_a_carried_config_applies_only_to_its_own_architecture(tmp_path):
    """The tiny weights file carries its config under its own name; used as another architecture
    (ViT-B-32: embed_dim 512, image_size 224 in open_clip's registry) it does not replace that one.
    Mutation caught: _carried_config not comparing the carried name with the architecture."""
    weights = write_tiny_encoder_weights(tmp_path / "tiny.safetensors")
    assert GarmentEncoder(weights, TINY_ARCH).dim == 32
    assert model_config("ViT-B-32", weights)["embed_dim"] == 512
    encoder = GarmentEncoder(weights, "ViT-B-32")
    assert encoder.dim == 512 and encoder.preprocess_id.split("|")[1] == "224"


def test_image_batches_and_progress(tmp_path):
    """3 images in batches of 2: progress says (2, 3) then (3, 3), never more than the total, and
    every row is the image's own embedding. Mutation caught: progress not capped at the total."""
    encoder = GarmentEncoder(write_tiny_encoder_weights(tmp_path / "tiny.safetensors"), TINY_ARCH)
    images = [Image.new("RGB", (384, 512), c) for c in ((250, 10, 10), (10, 250, 10), (10, 10, 250))]
    seen: list[tuple[int, int]] = []
    out = encoder.encode_images(images, batch_size=2, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 3), (3, 3)]
    np.testing.assert_allclose(out, np.concatenate([encoder.encode_images([im]) for im in images]), atol=1e-6)


def test_text_batches_equal_open_clips_own_model(tmp_path):
    """5 texts in batches of 2 (three batches, the last one short) each equal open_clip's own
    model's L2-normalised text embedding. Mutation caught: the batch slice texts[start:batch_size]."""
    folder = write_model_folder(tmp_path / "clip-fashion", "clip")
    texts = ["a red top", "blue jeans", "a long black dress", "green skirt", "white shirt"]
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    with torch.no_grad():
        want = model.encode_text(open_clip.get_tokenizer(f"local-dir:{folder}")(texts)).float().numpy()
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    got = GarmentEncoder(folder, image_tower=False).encode_texts(texts, batch_size=2)
    assert got.shape == (5, 32)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_writing_the_tiny_encoder_leaves_the_callers_random_numbers_alone(tmp_path):
    """Mutation caught: the tiny encoder seeded on the global torch RNG (no fork_rng)."""
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    write_tiny_encoder_weights(tmp_path / "tiny.safetensors", seed=0)
    assert torch.equal(torch.rand(4), expected)
