"""Rebuilding an index with other weights of the same architecture (issue 25): the build must
re-encode every garment, never keep an embedding of the previous weights beside new ones.

The other weights are the tiny open_clip architecture with another seed, written over the same
file name (a fine-tuned encoder dropped in place of the old one: only the content differs), then
the catalog rebuilt into the same folder with one image changed too (so "re-encode the changed
one, reuse the rest" would be the tempting shortcut). The expected index is a clean build with
the new weights into an empty folder, where nothing can be reused.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashion_rag.openclip_encoder import GarmentEncoder
from fashion_rag.retrieval.build import build_index
from fashion_rag.retrieval.catalog import scan_catalog
from fashion_rag.retrieval.index import load_index
from fashion_rag.retrieval.ondisk import EncoderMismatchError
from fashion_rag.retrieval.search import search
from tools.demo.encoder import TINY_ARCH, write_tiny_encoder_weights


def _rows(index) -> dict[str, np.ndarray]:
    return {item_id: np.asarray(index.embeddings[i]) for i, item_id in enumerate(index.ids)}


def test_other_weights_of_the_same_architecture_re_encode_everything(catalog_dir, tmp_path):
    """Mutations caught: same_embedding_space comparing name, dim and preprocessing but not the
    weights' sha256 (manifest.py); the weights hash cached by path alone, so the file replaced in
    place keeps its old hash (files.cached_sha256) (failed: yes, each)."""
    weights = tmp_path / "encoder" / "open_clip_model.safetensors"
    write_tiny_encoder_weights(weights, seed=0)
    kept = tmp_path / "seed0.safetensors"
    shutil.copyfile(weights, kept)
    out = tmp_path / "indexes" / "shop"
    first = build_index(scan_catalog(catalog_dir), out, GarmentEncoder(weights, TINY_ARCH))
    assert (first.encoded, first.reused) == (36, 0)
    old = _rows(load_index(out))

    write_tiny_encoder_weights(weights, seed=1)  # same architecture and file name, other weights
    changed = sorted(catalog_dir.rglob("*.png"))[0]
    Image.open(changed).convert("RGB").rotate(90, expand=True).save(changed)
    encoder = GarmentEncoder(weights, TINY_ARCH)
    said: list[str] = []
    report = build_index(scan_catalog(catalog_dir), out, encoder, log_fn=said.append)
    assert (report.items, report.encoded, report.reused, report.written) == (36, 36, 0, True)
    assert any("re-encoding everything" in line for line in said), said

    clean_out = tmp_path / "clean"
    build_index(scan_catalog(catalog_dir), clean_out, GarmentEncoder(weights, TINY_ARCH))
    rebuilt, clean = load_index(out, encoder), load_index(clean_out, encoder)
    assert rebuilt.ids == clean.ids
    got, want = _rows(rebuilt), _rows(clean)
    for item_id in clean.ids:
        np.testing.assert_allclose(got[item_id], want[item_id], atol=1e-6, err_msg=item_id)
        assert not np.allclose(got[item_id], old[item_id], atol=1e-3), item_id  # really another space
    for text in ("red striped trousers", "a long dress", "black checked short-sleeve top"):
        hits, expected = search(rebuilt, text, 8, mode="image"), search(clean, text, 8, mode="image")
        assert [h.id for h in hits] == [h.id for h in expected]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in expected], atol=1e-6)

    # The previous weights no longer fit the rebuilt index: refused, naming both encoders.
    with pytest.raises(EncoderMismatchError, match="built with encoder .* but the encoder given is"):
        load_index(out, GarmentEncoder(kept, TINY_ARCH))


def test_the_same_weights_again_reuse_everything(catalog_dir, tmp_path):
    """The other side of the rule: the same weights under another file name are the same
    embedding space (sha256), so a rebuild encodes only the changed image.
    Mutation caught: the weights' file name compared instead of their content (failed: yes)."""
    weights = tmp_path / "a.safetensors"
    write_tiny_encoder_weights(weights, seed=0)
    out = tmp_path / "shop"
    build_index(scan_catalog(catalog_dir), out, GarmentEncoder(weights, TINY_ARCH))
    renamed = Path(shutil.copyfile(weights, tmp_path / "b.safetensors"))
    changed = sorted(catalog_dir.rglob("*.png"))[0]
    Image.open(changed).convert("RGB").rotate(90, expand=True).save(changed)
    report = build_index(scan_catalog(catalog_dir), out, GarmentEncoder(renamed, TINY_ARCH))
    assert (report.encoded, report.reused, report.written) == (1, 35, True)
