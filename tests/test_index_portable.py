"""Issue 23: an index holds its garments, so it travels; nothing is read where its manifest points."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from audit import opened_files
from cli_runs import run_cli
from PIL import Image, ImageOps

from fashion_rag.openclip_encoder import GarmentEncoder
from fashion_rag.retrieval.build import build_index
from fashion_rag.retrieval.catalog import scan_catalog
from fashion_rag.retrieval.index import load_index
from fashion_rag.retrieval.ondisk import MANIFEST, IndexFormatError, resolve_version
from fashion_rag.retrieval.search import retrieve
from tools.demo.encoder import TINY_ARCH

QUERY = ("green polka-dot long dress", 4)


def _query_save(index: Path, folder: Path, weights: Path) -> dict[str, bytes]:
    """`index query --save` (fusion: text encoder and captions), and the files it wrote."""
    (r,) = run_cli([["index", "query", str(index), QUERY[0], "-k", str(QUERY[1]), "--weights", str(weights),
                     "--save", str(folder)]], deadline=300)
    assert r["rc"] == 0, r["stderr"]
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_copied_index_returns_the_same_garments_byte_for_byte(catalog_dir, tiny_weights, tmp_path):
    """Mutation caught: the stored garments encoded lossily as JPEG (pixels differ from the
    fitted image: failed)."""
    # One garment wider than 384x512's aspect, so the stored image is a fitted (padded) one.
    wide = catalog_dir / "dresses" / "dress00.png"
    Image.open(wide).convert("RGB").resize((500, 300)).save(wide)
    encoder = GarmentEncoder(tiny_weights, TINY_ARCH)
    index = tmp_path / "indexes" / "shop"
    build_index(scan_catalog(catalog_dir), index, encoder)
    before = retrieve(load_index(index, encoder), *QUERY[:1], k=QUERY[1], category="dresses",
                      pin_ids="dress00")
    saved_before = _query_save(index, tmp_path / "saved_before", tiny_weights)
    fitted = ImageOps.pad(Image.open(wide).convert("RGB"), (384, 512), Image.Resampling.BICUBIC,
                          color=(255, 255, 255))
    assert np.array_equal((before.images[0].numpy() * 255).round().astype(np.uint8), np.asarray(fitted))

    copy = Path(shutil.copytree(index, tmp_path / "elsewhere" / "copied"))
    catalog_dir.rename(tmp_path / "catalog_gone")
    with opened_files() as opened:
        loaded = load_index(copy, encoder)
        after = retrieve(loaded, *QUERY[:1], k=QUERY[1], category="dresses", pin_ids="dress00")
    assert [g.id for g in after.items] == [g.id for g in before.items]
    assert [g.score for g in after.items] == [g.score for g in before.items]
    assert torch.equal(after.images, before.images)  # what the gallery preview and the inversion get
    # Only the copy's own files (and the weights) were opened.
    outside = {p for p in map(os.path.realpath, opened)
               if not Path(p).is_relative_to(copy.resolve()) and Path(p) != tiny_weights.resolve()}
    assert not {p for p in outside if str(tmp_path) in p}, outside

    saved_after = _query_save(copy, tmp_path / "saved_after", tiny_weights)
    listing = json.loads(saved_after.pop("garments.json"))
    listing_before = json.loads(saved_before.pop("garments.json"))
    assert listing["garments"] == listing_before["garments"] and len(listing["garments"]) == QUERY[1]
    assert saved_after == saved_before and len(saved_after) == QUERY[1]  # the images, byte for byte
    for entry in listing["garments"]:  # each saved image is the stored garment as the pipeline sees it
        png = np.asarray(Image.open(tmp_path / "saved_after" / entry["image"]).convert("RGB"))
        assert np.array_equal(png, np.asarray(loaded.image(entry["id"])))


@pytest.fixture
def built(catalog_dir, tiny_weights, tmp_path) -> tuple[Path, dict]:
    index = tmp_path / "idx"
    build_index(scan_catalog(catalog_dir), index, GarmentEncoder(tiny_weights, TINY_ARCH))
    path = resolve_version(index).data_dir / MANIFEST
    return index, json.loads(path.read_text())


def test_a_manifest_naming_a_catalog_root_is_refused_unread(built, tmp_path):
    """Issue 23: catalog_root was any absolute path, trusted as written (a private folder's
    images came back as previews; "changed" vs "not found" told whether a file exists).
    Mutation caught: the catalog_root check dropped (the manifest loads: failed)."""
    index, pristine = built
    private = tmp_path / "private"
    (private / "dresses").mkdir(parents=True)
    Image.new("RGB", (384, 512), (255, 0, 255)).save(private / "dresses" / "dress00.png")
    (tmp_path / "link").symlink_to(private)
    roots = {"private folder": str(private), "root": "/", "symlinked root": str(tmp_path / "link"),
             "missing folder": str(tmp_path / "no_such_folder")}
    manifest_path = resolve_version(index).data_dir / MANIFEST
    for version in (4, 3):  # today's format with a catalog root planted, and the format before
        messages = {}
        for what, root in roots.items():
            manifest = {**pristine, "catalog_root": root, "format_version": version}
            manifest_path.write_text(json.dumps(manifest))
            with opened_files() as opened, pytest.raises(IndexFormatError) as err:
                load_index(index)
            messages[what] = str(err.value)
            assert all(Path(os.path.realpath(p)).is_relative_to(index.resolve()) for p in opened), opened
        assert len(set(messages.values())) == 1, messages  # tells nothing about the named paths
        message = messages["root"]
        assert "index build --catalog <images folder>" in message and str(private) not in message
        assert ("catalog_root" in message) if version == 4 else ("format version 3" in message)
