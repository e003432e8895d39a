"""Retrieval encoders from OpenCLIP model folders as published (issue 22): CLIP and SigLIP layouts,
random weights at tiny widths (encoder_folders.py), each indexed, queried, rebuilt incrementally
and refused when another encoder is given. Expected values come from open_clip's own
`local-dir:` model and tokenizer and from hashlib, never from the pack's code."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
from cli_runs import run_cli
from encoder_folders import WORDS, write_model_folder, write_tokenizer
from PIL import Image
from safetensors import safe_open

from fashion_rag.openclip_encoder import GarmentEncoder
from fashion_rag.retrieval.build import build_index
from fashion_rag.retrieval.catalog import scan_catalog
from fashion_rag.retrieval.index import encoder_for, load_index
from fashion_rag.retrieval.ondisk import (
    EncoderMismatchError,
    EncoderRecord,
    check_encoder,
    encoder_record,
    read_manifest,
    same_embedding_space,
)
from fashion_rag.retrieval.search import search
from tools.demo.encoder import TINY_ARCH, write_tiny_encoder_weights

TEXTS = ("a red striped top", "long black dress", "blue jeans")


def _unit(x: torch.Tensor) -> np.ndarray:
    x = x.detach().float().numpy()
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_model_folder_index_query_rebuild_and_mismatch(kind, catalog_dir, tmp_path):
    """Mutations caught: the folder's preprocess_cfg ignored (OpenAI mean/std and the wrong resize
    for SigLIP); the tokenizer taken by name instead of from the folder (siglip: open_clip's
    SimpleTokenizer); config_sha256 left out of same_embedding_space; tokenizer_sha256 not
    compared by check_encoder (failed: yes, each)."""
    folder = write_model_folder(tmp_path / f"{kind}-fashion", kind, seed=0)
    out = tmp_path / "indexes" / "shop"
    first = build_index(scan_catalog(catalog_dir), out, GarmentEncoder(folder))
    assert (first.encoded, first.reused) == (36, 0)

    rec = read_manifest(out).encoder
    config_bytes = (folder / "open_clip_config.json").read_bytes()
    assert rec.name == f"{kind}-fashion" and rec.weights_file == "open_clip_model.safetensors"
    assert rec.weights_path == str(folder / "open_clip_model.safetensors")
    assert rec.dim == {"clip": 32, "siglip": 96}[kind]
    assert rec.config_sha256 == hashlib.sha256(config_bytes).hexdigest()
    assert isinstance(rec.tokenizer_sha256, str) and len(rec.tokenizer_sha256) == 64

    # The index's embeddings and text queries are open_clip's own model of the folder.
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    encoder = GarmentEncoder(folder, image_tower=False)
    index = load_index(out, encoder)
    with torch.no_grad():
        images = _unit(model.encode_image(torch.stack([preprocess(index.garment_image(p)) for p in (0, 17)])))
        texts = _unit(model.encode_text(tokenizer(list(TEXTS))))
    np.testing.assert_allclose(np.asarray(index.embeddings[[0, 17]]), images, atol=2e-5)
    np.testing.assert_allclose(encoder.encode_texts(list(TEXTS)), texts, atol=2e-5)
    for text, query in zip(TEXTS, texts, strict=True):
        hits = search(index, text, 5, mode="image")
        order = np.argsort(-(np.asarray(index.embeddings) @ query), kind="stable")[:5]
        assert [h.id for h in hits] == [index.ids[i] for i in order]

    # Incremental: one image changed, one encoded; the same folder under another path is the same.
    changed = sorted(catalog_dir.rglob("*.png"))[0]
    Image.open(changed).convert("RGB").rotate(90, expand=True).save(changed)
    moved = shutil.copytree(folder, tmp_path / "elsewhere" / f"{kind}-fashion")
    report = build_index(scan_catalog(catalog_dir), out, GarmentEncoder(moved))
    assert (report.encoded, report.reused, report.written) == (1, 35, True)

    # Other weights in the same layout: refused, with the rebuild command naming the folder.
    other = write_model_folder(tmp_path / "other" / f"{kind}-fashion", kind, seed=1)
    with pytest.raises(EncoderMismatchError) as err:
        load_index(out, GarmentEncoder(other))
    msg = str(err.value)
    assert f"--weights {other}" in msg and "--encoder" not in msg and "model folder" in msg

    if kind == "clip":
        # The same weights with QuickGELU (a config-only change): other image embeddings, re-encoded.
        gelu = shutil.copytree(moved, tmp_path / "gelu" / f"{kind}-fashion")
        config = json.loads(config_bytes)
        config["model_cfg"]["quick_gelu"] = True
        (gelu / "open_clip_config.json").write_text(json.dumps(config))
        report = build_index(scan_catalog(catalog_dir), out, GarmentEncoder(gelu))
        assert (report.encoded, report.reused) == (36, 0)
    if kind == "siglip":
        # Another tokenizer: text queries change, so refused; images do not, so a rebuild reuses all.
        write_tokenizer(other, [*WORDS[:3], *reversed(WORDS[3:])])
        retok = shutil.copytree(other, tmp_path / "retok" / f"{kind}-fashion")
        shutil.copyfile(moved / "open_clip_model.safetensors", retok / "open_clip_model.safetensors")
        with pytest.raises(EncoderMismatchError, match="built with encoder"):
            load_index(out, GarmentEncoder(retok))
        report = build_index(scan_catalog(catalog_dir), out, GarmentEncoder(retok))
        assert (report.encoded, report.reused) == (0, 36)
        load_index(out, GarmentEncoder(retok))


def test_a_file_encoder_refused_by_a_folder_index_and_the_folder_file_accepted(catalog_dir, tmp_path):
    """What the loader node and `index query --weights` get: the folder's weights file stands
    for the folder when the index was built from one (encoder_for); the same file as a plain
    weights file is another encoder. Mutation caught: encoder_for ignoring config_sha256."""
    folder = write_model_folder(tmp_path / "clip-fashion", "clip", seed=0)
    out = tmp_path / "shop"
    build_index(scan_catalog(catalog_dir), out, GarmentEncoder(folder))
    rec = read_manifest(out).encoder
    weights_file = folder / "open_clip_model.safetensors"
    assert encoder_for(rec, weights_file).model_dir == folder
    load_index(out, encoder_for(rec, weights_file))
    with pytest.raises(ValueError, match="clip-fashion"):  # not an architecture open_clip ships
        load_index(out, GarmentEncoder(weights_file, "clip-fashion"))


def test_text_only_load_of_a_folder_holds_only_the_text_tower(tmp_path, caplog):
    """As for ViT-L-14 (test_load_memory), at tiny size: a text-first encoder holds exactly the
    file's non-visual tensors, read in parts (no whole-model fallback), until an image is encoded;
    then the image tower alone. Mutations caught: the whole model built for a text load; the
    folder's file not read in parts (open_clip's whole load, then the tower dropped)."""
    folder = write_model_folder(tmp_path / "siglip-fashion", "siglip")
    with safe_open(str(folder / "open_clip_model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    visual = {k for k in keys if k.startswith("visual.")}
    assert len(visual) > 50 and len(keys - visual) > 10
    encoder = GarmentEncoder(folder, image_tower=False)
    with caplog.at_level(logging.INFO, logger="fashion_rag"):
        encoder.encode_texts(["a red dress"])
        assert set(encoder.module.state_dict()) == keys - visual
        assert encoder.module.visual is None and encoder._visual is None
        assert not any(p.is_meta for p in encoder.module.parameters())
        encoder.encode_images([Image.new("RGB", (384, 512), "white")])
        assert {f"visual.{k}" for k in encoder.tower("image").state_dict()} == visual
    assert not [r for r in caplog.records if "whole model" in r.getMessage()]


def test_old_encoder_records_keep_their_meaning(tmp_path):
    """A manifest written before issue 22 has no config_sha256 or tokenizer_sha256: its encoder is
    a name + weights file, the same embedding space as that file's today (None for both keys).
    Mutation caught: an absent key compared as different from None."""
    weights = write_tiny_encoder_weights(tmp_path / "tiny.safetensors")
    encoder = GarmentEncoder(weights, TINY_ARCH)
    record = encoder_record(encoder)
    assert (record.config_sha256, record.tokenizer_sha256) == (None, None)
    # An old manifest's record as the parser makes it: the two keys absent, the fields' defaults.
    written = {k: v for k, v in dataclasses.asdict(record).items()
               if k not in ("config_sha256", "tokenizer_sha256")}
    old = EncoderRecord(**written)
    assert same_embedding_space(old, record)
    check_encoder(SimpleNamespace(encoder=old), encoder, "old")  # no EncoderMismatchError


def test_cli_builds_and_queries_with_a_model_folder(catalog_dir, tmp_path):
    folder = write_model_folder(tmp_path / "siglip-fashion", "siglip")
    out = tmp_path / "shop"
    build = ["index", "build", "--catalog", str(catalog_dir), "--out", str(out), "--weights", str(folder)]
    results = run_cli([build + ["--encoder", "ViT-B-16"], build,
                       ["index", "query", str(out), "red dress", "--json", "-k", "3", "--mode", "image",
                        "--weights", str(folder / "open_clip_model.safetensors")],
                       build[:-1] + [str(tmp_path)]], deadline=120)
    refused, built, query, not_a_model = results
    assert not_a_model["rc"] == 2 and "without open_clip_config.json" in not_a_model["stderr"]
    assert refused["rc"] == 2 and "model folder" in refused["stderr"]
    assert "drop --encoder" in refused["stderr"]
    assert built["rc"] == 0, built["stderr"]
    assert query["rc"] == 0, query["stderr"]
    assert len(json.loads(query["stdout"])) == 3


def test_evaluate_retrieves_with_a_model_folder(tmp_path):
    """`fashion-rag evaluate --retrieval-weights FOLDER` indexes the test garments with the folder's
    own model (its name, config and tokenizer), as `index build --weights FOLDER` does.
    Mutations caught: evaluate accepting weights files only (a folder: "not found"); the report's
    settings hashing the folder path instead of its weights file."""
    import argparse

    from fashion_rag.cli.evaluate import _Evaluation, add_parser

    folder = write_model_folder(tmp_path / "siglip-fashion", "siglip")
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "--csv", str(tmp_path / "photos.csv"), "--out",
                              str(tmp_path / "out"), "--retrieval-weights", str(folder)])
    evaluation = _Evaluation(args)
    encoder = GarmentEncoder(*evaluation.retrieval_encoder())
    assert encoder.model_dir == folder.resolve() and encoder.name == "siglip-fashion"
    config = (folder / "open_clip_config.json").read_bytes()
    assert encoder.config_hash == hashlib.sha256(config).hexdigest()
    # The report's settings name the folder's model and weights file with its hash.
    weights = folder / "open_clip_model.safetensors"
    settings = evaluation.settings(SimpleNamespace(left_out={}), [], SimpleNamespace(sha256=dict), None)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert settings["retrieval encoder"] == f"siglip-fashion open_clip_model.safetensors sha256 {digest}"
