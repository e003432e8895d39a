"""Catalog safety (issue 7): a build deletes nothing it did not create, nothing is read outside
its root, an index is replaced without a gap, requests are bounded, damaged indexes give one
clear error.

The tests named test_defect<N>_* reproduce the defects the issue found, one each (they failed
on the code before the fix); the rest pin the rules around them: stale folders, skip reports
and strict builds, odd but valid images, a decompression bomb. The test_issue24_* ones: a
build deletes or renames only the folders a marker proves a build made (issue 24).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from audit import opened_files
from cli_runs import run_cli
from PIL import Image

from comfy_harness import PromptFailed, fifo_in_place_of
from fashion_rag.openclip_encoder import GarmentEncoder
from fashion_rag.retrieval.build import SkippedItemsError, build_index
from fashion_rag.retrieval.catalog import scan_catalog
from fashion_rag.retrieval.index import load_index
from fashion_rag.retrieval.ondisk import (
    MANIFEST,
    POINTER,
    IndexFormatError,
    build_lock,
    read_manifest,
    resolve_version,
)
from fashion_rag.retrieval.search import search
from tools.demo.catalog import TINY_WEIGHTS_NAME
from tools.demo.encoder import TINY_ARCH, write_tiny_encoder_weights

REPO = Path(__file__).resolve().parents[1]
LOADER, RETRIEVE = "FashionRAGGarmentIndexLoader", "FashionRAGTextGarmentRetrieve"

@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> GarmentEncoder:
    return GarmentEncoder(write_tiny_encoder_weights(tmp_path_factory.mktemp("w") / "tiny.safetensors"),
                          TINY_ARCH)




def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(catalog: Path) -> list[dict]:
    return [json.loads(line) for line in (catalog / "metadata.jsonl").read_text().splitlines()]


def _write_rows(catalog: Path, rows: list[dict]) -> None:
    (catalog / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _manifest_path(index_dir: Path) -> Path:
    return resolve_version(index_dir).data_dir / MANIFEST


def _edit_manifest(index_dir: Path, edit) -> None:
    path = _manifest_path(index_dir)
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _make_legacy(index_dir: Path) -> None:
    """Turn an index into an older, never released layout: files directly in the folder, format 1."""
    ver = resolve_version(index_dir)
    (ver.data_dir / ".build.json").unlink()  # (markers came later)
    for f in ver.data_dir.iterdir():
        shutil.move(f, index_dir / f.name)
    ver.data_dir.rmdir()
    (index_dir / POINTER).unlink()
    manifest = json.loads((index_dir / MANIFEST).read_text())
    manifest["format_version"] = 1
    del manifest["files"]["sha256"]
    (index_dir / MANIFEST).write_text(json.dumps(manifest))


# --------------------------------------------------------------------------------------------
# One test per defect
# --------------------------------------------------------------------------------------------

def test_defect1_build_never_deletes_what_it_did_not_create(catalog_dir, encoder, tmp_path):
    indexes = tmp_path / "indexes"
    build_index(scan_catalog(catalog_dir), indexes / "shop", encoder)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    a_file = tmp_path / "a_file"
    a_file.write_text("mine too")
    before = {p: _snapshot(p) for p in (tmp_path / "indexes", notes, catalog_dir)}
    cases = {
        notes: "not a garment index ('notes.txt')",  # a folder with a notes file
        indexes: "not a garment index ('shop')",  # the folder holding a sibling index
        catalog_dir: "is the catalog folder",  # --out equal to --catalog (every image was deleted)
        catalog_dir / "dresses": "inside the catalog folder",
        catalog_dir / "new": "inside the catalog folder",  # even a new folder: the index would be scanned
        tmp_path: "catalog",  # the catalog inside --out
        a_file: "is a file",
    }
    for out, message in cases.items():
        with pytest.raises(ValueError, match="output folder") as err:
            build_index(scan_catalog(catalog_dir), out, encoder)
        assert message in str(err.value), (out, str(err.value))
    assert {p: _snapshot(p) for p in before} == before and a_file.read_text() == "mine too"
    assert not (catalog_dir / "new").exists()
    # Absent, empty and index folders are what --out may be.
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "absent" / "deeper", indexes / "shop"):
        assert build_index(scan_catalog(catalog_dir), out, encoder).items == 36


def test_defect2_images_outside_the_catalog_are_skipped_unread(catalog_dir, encoder, tmp_path):
    secret, secret2 = tmp_path / "secret.png", tmp_path / "secret2.png"
    for path in (secret, secret2):
        Image.new("RGB", (40, 60), (255, 0, 255)).save(path)
    (catalog_dir / "dresses" / "link.png").symlink_to(secret)  # a symlink leading out
    (catalog_dir / "dresses" / "alias.png").symlink_to(catalog_dir / "dresses" / "dress00.png")  # stays in
    rows = _rows(catalog_dir) + [
        {"id": "up", "image": "../secret.png", "category": "dresses"},
        {"id": "abs", "image": str(secret2), "category": "dresses"},
        {"id": "link", "image": "dresses/link.png", "category": "dresses"},
        {"id": "alias", "image": "dresses/alias.png", "category": "dresses"},
        {"id": "inside_abs", "image": str(catalog_dir / "dresses" / "dress01.png"), "category": "dresses"},
    ]
    _write_rows(catalog_dir, rows)
    with opened_files() as opened:
        report = build_index(scan_catalog(catalog_dir), tmp_path / "idx", encoder)
    assert sorted((s.id, s.row, s.reason) for s in report.skipped) == [
        ("abs", 38, "outside the catalog"), ("link", 39, "outside the catalog"),
        ("up", 37, "outside the catalog")]
    assert all(str(secret.parent) in s.detail for s in report.skipped)  # names the item and the root
    assert not {os.path.realpath(p) for p in opened} & {str(secret), str(secret2)}
    index = load_index(tmp_path / "idx")
    assert {"alias", "inside_abs", "dress00"} <= set(index.ids) and not {"up", "abs", "link"} & set(index.ids)
    assert index.rel_paths[index.position("inside_abs")] == "dresses/dress01.png"
    # Folder mode: the symlink leading out is skipped the same way.
    (catalog_dir / "metadata.jsonl").unlink()
    assert [(s.id, s.reason) for s in scan_catalog(catalog_dir).skipped] == [("link", "outside the catalog")]


def _workflow(index: str, text: str = "red striped trousers", k: int = 3, **retrieve_inputs) -> dict:
    inputs = {"index": ["1", 0], "text": text, "k": k, "category": "any", "mode": "caption",
              "pin_ids": "", "exclude_ids": "", **retrieve_inputs}
    return {
        "1": {"class_type": LOADER, "inputs": {"index": index, "encoder_weights": TINY_WEIGHTS_NAME}},
        "2": {"class_type": RETRIEVE, "inputs": inputs},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }


def test_defect3_loader_accepts_only_index_names(comfy, comfy_base, tmp_path):
    indexes = comfy_base / "models" / "fashion_rag" / "indexes"
    demo_data = resolve_version(indexes / "demo").data_dir
    made = [indexes / ".demo.old-deadbeef", indexes / ".demo.tmp-x1y2z3", indexes / "outside_link"]
    for hidden in made[:2]:
        shutil.copytree(demo_data, hidden)  # what a crashed build of the previous layout left
    shutil.copytree(indexes / "demo", tmp_path / "elsewhere", symlinks=True)
    made[2].symlink_to(tmp_path / "elsewhere")
    loader = comfy.pack.nodes.index_loader
    try:
        assert loader.index_names() == ["demo"]
        names = ["../indexes/demo", str(indexes / "demo"), "demo/../demo", "demo/", ".demo.old-deadbeef",
                 ".demo.tmp-x1y2z3", "..", ".", "", "x" * 10_000]
        for name in names:
            with pytest.raises(PromptFailed) as err:
                comfy.run(_workflow(name))
            text = str(err.value.payload)
            assert err.value.kind == "validation" and "is not allowed" in text, name
            assert len(text) < 4000  # a long name is cut, not echoed
        with pytest.raises(PromptFailed) as err:
            comfy.run(_workflow("outside_link"))
        assert err.value.kind == "validation" and "outside" in str(err.value.payload)
        assert comfy.run(_workflow("demo"))["2"]["fashion_rag_garments"]
    finally:
        for path in made:
            shutil.rmtree(path) if not path.is_symlink() else path.unlink()


def _same_pixels(png: Path, reference: np.ndarray) -> bool:
    img = np.asarray(Image.open(png).convert("RGB"))
    return img.shape == reference.shape and bool((img == reference).all())


def test_defect4_a_manifest_cannot_make_the_server_return_other_files(comfy, comfy_base, encoder, tmp_path):
    """Issue 23: the garments shown come from the index's own shard, never from a path a
    manifest or the catalog names (the catalog is read only by the build)."""
    models = comfy_base / "models" / "fashion_rag"
    secret = comfy_base / "secret.png"
    Image.new("RGB", (384, 512), (255, 0, 255)).save(secret)
    secret_pixels = np.asarray(Image.open(secret).convert("RGB"))
    catalog = Path(shutil.copytree(models / "catalogs" / "demo", models / "catalogs" / "tampered_src"))
    weights = models / "retrieval" / TINY_WEIGHTS_NAME
    index = models / "indexes" / "tampered"
    build_index(scan_catalog(catalog), index, GarmentEncoder(weights, TINY_ARCH))
    try:
        # An item of the manifest pointing out of the catalog, at the secret.
        rel = os.path.relpath(secret, catalog)
        def point_at_secret(m: dict) -> None:
            m["items"]["paths"][m["items"]["ids"].index("top00")] = rel

        _edit_manifest(index, point_at_secret)
        with pytest.raises(PromptFailed) as err:
            comfy.run(_workflow("tampered", pin_ids="top00", k=1))
        assert err.value.kind == "execution" and "inside the catalog" in str(err.value.payload)
        assert "index build" in str(err.value.payload)
        # A catalog image swapped for a symlink to the secret after the build: the index still
        # shows the garment it stored, and never opens the catalog.
        build_index(scan_catalog(catalog), index, GarmentEncoder(weights, TINY_ARCH))
        stored = np.asarray(Image.open(catalog / "upper_body" / "top01.png").convert("RGB"))
        (catalog / "upper_body" / "top01.png").unlink()
        (catalog / "upper_body" / "top01.png").symlink_to(secret)
        before = set((comfy_base / "temp").rglob("*.png"))
        comfy.run(_workflow("tampered", pin_ids="top01", k=1))
        previews = list((comfy_base / "temp").rglob("*.png"))
        assert not any(_same_pixels(p, secret_pixels) for p in previews)
        assert any(_same_pixels(p, stored) for p in set(previews) - before)
    finally:
        shutil.rmtree(index)
        shutil.rmtree(catalog)
        secret.unlink()


def test_defect5_readers_never_see_a_gap_while_an_index_is_replaced(catalog_dir, encoder, tmp_path,
                                                                     monkeypatch):
    out = tmp_path / "indexes" / "idx"
    build_index(scan_catalog(catalog_dir), out, encoder)
    _write_rows(catalog_dir, _rows(catalog_dir)[:30])  # the next build writes a new version
    real_rename, real_replace, seen = os.rename, os.replace, []

    def read_after(real):
        def call(src, dst, *args, **kwargs):
            real(src, dst, *args, **kwargs)
            seen.append(len(load_index(out)))  # what a reader (a running ComfyUI) gets right now
        return call

    monkeypatch.setattr(os, "rename", read_after(real_rename))
    monkeypatch.setattr(os, "replace", read_after(real_replace))
    build_index(scan_catalog(catalog_dir), out, encoder)
    monkeypatch.undo()
    assert seen and set(seen) <= {36, 30} and seen[-1] == 30


# A build killed with SIGKILL at one moment (argv[2]) of its work on an index folder (argv[1]).
DIES = r"""
import os, signal, sys
from pathlib import Path
from fashion_rag.retrieval import ondisk as storage

out, moment = Path(sys.argv[1]), sys.argv[2]


def dies_at(name, only=""):
    real = getattr(os, name)

    def call(*args, **kwargs):
        if str(args[0]).endswith(only):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(os, name, call)


with storage.build_lock(out) as lock:
    if moment == "deleting an old version":  # (one that a build killed before its swap left)
        dies_at("rmdir")
        storage.clean_stale(lock)
    if moment == "before its marker":
        dies_at("open", only=".build.json")
    with storage.temp_folder(lock, version=moment == "before the swap") as folder:
        (folder / "data.bin").write_bytes(b"x" * 100)
        if moment == "working":
            os.kill(os.getpid(), signal.SIGKILL)
        if moment == "before the swap":
            dies_at("replace")
            storage.write_version(lock, folder, storage.Manifest(  # (what it holds does not matter here)
                storage.EncoderRecord("x", "", 1, "", None, ""), 0, storage.VectorIndexRecord("flat", []),
                storage.Files("", "", {}, {}), storage.Items([], [], [], [], [], [], [])))
        if moment == "deleting its folder":
            dies_at("rmdir")
"""


def test_defect5_stale_build_folders_are_cleaned_and_never_loadable(catalog_dir, encoder, tmp_path):
    indexes = tmp_path / "indexes"
    out = indexes / "idx"
    build_index(scan_catalog(catalog_dir), out, encoder)
    current = resolve_version(out).data_dir
    # A user's things, some named like a build's folders (copies of a version: their markers name
    # another folder), and one beside the index: never deleted.
    (out / "notes.txt").write_text("mine")
    (out / f".{POINTER}.backup").write_text("mine")
    for copy in ("v-20000101T000000Z-deadbeef", ".tmp-dead01"):
        shutil.copytree(current, out / copy)
    (indexes / ".idx.backup").mkdir()
    kept = set(os.listdir(out))
    (out / f".{POINTER}.k3x_9q2z.tmp").write_text("{")  # a pointer write killed (files.atomic_write)
    with pytest.raises(IndexFormatError, match="one stored version"):
        load_index(out / "v-20000101T000000Z-deadbeef")
    assert load_index(out).version == current.name
    # Builds killed at the moments they leave a folder behind: the next build deletes just that.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    moments = ("working", "before its marker", "deleting its folder", "before the swap",
               "deleting an old version")
    for moment in moments:
        before = set(os.listdir(out))
        for step in ("before the swap", moment) if moment == "deleting an old version" else (moment,):
            r = subprocess.run([sys.executable, "-c", DIES, str(out), step], env=env, capture_output=True,
                               text=True, timeout=120)
            assert r.returncode == -9, (step, r.returncode, r.stderr[-2000:])  # SIGKILL
        left = sorted(set(os.listdir(out)) - before)
        if "swap" in moment:  # its version in place, and the new pointer not yet renamed over the old
            assert len(left) == 2 and left[0].startswith(f".{POINTER}.") and left[1].startswith("v-"), left
        else:
            assert len(left) == 1 and left[0].startswith(".tmp-"), left
        assert load_index(out).version == current.name  # never loaded
        build_index(scan_catalog(catalog_dir), out, encoder)  # unchanged, but it still cleans up
        assert set(os.listdir(out)) == kept, moment
    assert sorted(os.listdir(indexes)) == [".idx.backup", "idx"]
    # Each build keeps the current and the previous version only (and the user's copies).
    for n in (35, 34, 33):
        _write_rows(catalog_dir, _rows(catalog_dir)[:n])
        build_index(scan_catalog(catalog_dir), out, encoder)
    versions = sorted(p.name for p in out.iterdir() if p.name.startswith("v-2026"))
    assert len(versions) == 2 and resolve_version(out).version in versions and len(load_index(out)) == 33
    assert (out / "v-20000101T000000Z-deadbeef").is_dir() and (out / ".tmp-dead01").is_dir()


def test_defect6_requests_are_bounded(catalog_dir, encoder, tmp_path, comfy, comfy_base):
    build_index(scan_catalog(catalog_dir), tmp_path / "idx", encoder)
    index = load_index(tmp_path / "idx")
    ids = index.ids
    assert [h.id for h in search(index, "dress", 1, mode="caption", pin_ids=ids[:3])] == ids[:3]
    assert len(search(index, "dress", 20, mode="caption", pin_ids=ids[:20])) == 20
    with pytest.raises(ValueError, match="at most 20 garments"):
        search(index, "dress", 1, mode="caption", pin_ids=ids[:25])
    with pytest.raises(ValueError, match="from 1 to 20"):
        search(index, "dress", 21, mode="caption")
    huge = "x" * 1_000_000
    for kwargs in ({"pin_ids": huge}, {"pin_ids": "a," + "y" * 5000}, {"exclude_ids": ",".join(["z"] * 2000)
                                                                       + huge[:200_000]}):
        with pytest.raises(ValueError) as err:
            search(index, "dress", 3, mode="caption", **kwargs)
        assert len(str(err.value)) < 300
    with pytest.raises(ValueError, match="characters long"):
        search(index, huge, 3, mode="caption")
    # Through a workflow: refused before the run, with a short message.
    demo_ids = load_index(comfy_base / "models" / "fashion_rag" / "indexes" / "demo").ids
    for pins in (",".join(demo_ids[:25]), huge):
        with pytest.raises(PromptFailed) as err:
            comfy.run(_workflow("demo", k=1, pin_ids=pins))
        assert err.value.kind == "validation" and len(str(err.value.payload)) < 3000


def test_defect7_damaged_indexes_give_one_clear_error(catalog_dir, encoder, tmp_path):
    out = tmp_path / "idx"
    build_index(scan_catalog(catalog_dir), out, encoder, index_type="ivf")
    pristine = _snapshot(out)

    def restore() -> None:
        for rel, data in pristine.items():
            (out / rel).write_bytes(data)

    edits = {
        "encoder is missing": lambda m: m.pop("encoder"),
        "different lengths": lambda m: m["items"]["paths"].pop(),
        "items.ids lists": lambda m: m["items"]["ids"].__setitem__(1, m["items"]["ids"][0]),
        "encoder.dim is str": lambda m: m["encoder"].__setitem__("dim", "32"),
        "not a plain file name": lambda m: m["files"].__setitem__("embeddings", "../../x.npy"),
        "files.bytes is missing": lambda m: m["files"].pop("bytes"),  # format 3 on: every file's size
        "files.bytes has no valid size for 'vectors-1.faiss'":
            lambda m: m["files"]["bytes"].__setitem__("vectors-1.faiss", -1),
        "stored image of item 3 does not lie inside garments.bin":
            lambda m: m["items"]["image_sizes"].__setitem__(3, m["files"]["bytes"]["garments.bin"] + 1),
        # An index of format 2 (no sizes) is rebuilt, not read without bounds.
        "format version 2, where this version of Fashion-RAG expects 4":
            lambda m: m.update(format_version=2) or m["files"].pop("bytes"),
        # Format 3 read garments from the catalog folder its manifest named: rebuilt, never followed.
        "format version 3, where this version of Fashion-RAG expects 4":
            lambda m: m.update(format_version=3, catalog_root=str(catalog_dir)),
    }
    for message, edit in edits.items():
        _edit_manifest(out, edit)
        with pytest.raises(IndexFormatError) as err:
            load_index(out)
        hint = f"index build --catalog <images folder> --out {out}"
        assert message in str(err.value) and hint in str(err.value), str(err.value)
        restore()
    faiss_file = resolve_version(out).data_dir / "vectors-0.faiss"
    faiss_file.write_bytes(faiss_file.read_bytes()[:200])
    with pytest.raises(IndexFormatError, match=r"vectors-0\.faiss does not match the checksum.*index build"):
        load_index(out)
    # With a checksum that matches, the cut file reaches FAISS: its error is wrapped the same way.
    digest = hashlib.sha256(faiss_file.read_bytes()).hexdigest()
    _edit_manifest(out, lambda m: m["files"]["sha256"].__setitem__("vectors-0.faiss", digest))
    with pytest.raises(IndexFormatError, match=r"vectors-0\.faiss is not a readable FAISS index.*build"):
        load_index(out)
    (r,) = run_cli([["index", "info", str(out)]])
    assert r["rc"] == 2 and "Traceback" not in r["stderr"] and len(r["stderr"].strip().splitlines()) == 1
    assert "not a readable FAISS index" in r["stderr"] and "index build" in r["stderr"]


def test_issue24_a_manifest_symlinked_out_of_the_index_is_refused_unread(catalog_dir, encoder, tmp_path):
    """Issue 24, item 6: manifest.json was read without the path rule (the data files had it)."""
    out = tmp_path / "indexes" / "idx"
    build_index(scan_catalog(catalog_dir), out, encoder)
    manifest = _manifest_path(out)
    outside = tmp_path / "elsewhere" / MANIFEST  # a complete, valid manifest: only its place is wrong
    outside.parent.mkdir()
    shutil.move(manifest, outside)
    manifest.symlink_to(outside)
    for load in (lambda: load_index(out, encoder), lambda: read_manifest(out)):
        with opened_files() as opened, pytest.raises(IndexFormatError) as err:
            load()
        message = str(err.value)
        assert "resolves to" in message and "outside" in message and "index build" in message, message
        assert str(outside) not in {os.path.realpath(p) for p in opened}  # refused before it is opened
    # Inside the index a symlink is followed as before.
    manifest.unlink()
    shutil.move(outside, manifest.parent / "real_manifest.json")
    manifest.symlink_to("real_manifest.json")
    assert len(load_index(out, encoder)) == 36


def test_issue24_the_loader_node_refuses_a_fifo_at_once(comfy, comfy_base, tmp_path):
    """Issue 24, item 7: a FIFO as an index's manifest hung the loader node, and with it the
    server's whole prompt queue; now the node fails at once with the rebuild command."""
    models = comfy_base / "models" / "fashion_rag"
    index = models / "indexes" / "fifo_manifest"
    build_index(scan_catalog(models / "catalogs" / "demo"), index,
                GarmentEncoder(models / "retrieval" / TINY_WEIGHTS_NAME, TINY_ARCH))
    fifo = _manifest_path(index)
    try:
        with fifo_in_place_of(fifo), pytest.raises(PromptFailed) as err:
            comfy.run(_workflow("fifo_manifest"))
        text = str(err.value.payload)
        assert err.value.kind == "execution" and "manifest.json is not a regular file" in text, text[:2000]
        assert "index build" in text
    finally:
        shutil.rmtree(index)


def test_defect8_no_files_in_the_shared_temp_dir(tmp_path):
    shared_tmp = tmp_path / "shared_tmp"
    shared_tmp.mkdir()
    weights = write_tiny_encoder_weights(tmp_path / "tiny.safetensors")
    # The weights carry their architecture: loading them registers it, writing no file anywhere.
    code = (
        "import sys, open_clip; from fashion_rag.openclip_encoder import GarmentEncoder;"
        f"e = GarmentEncoder({str(weights)!r}, {TINY_ARCH!r});"
        "v = e.encode_texts(['a red top']);"
        "open_clip.add_model_config(open_clip.factory._MODEL_CONFIG_PATHS[0]);"
        f"m = open_clip.create_model({TINY_ARCH!r});"
        "print(v.shape[1], sum(p.numel() for p in m.parameters()))"
    )
    env = {**os.environ, "TMPDIR": str(shared_tmp), "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    dim, params = map(int, r.stdout.split()[-2:])
    assert dim == 32 and params > 0  # the tiny architecture still builds (after a rescan, too)
    assert list(shared_tmp.iterdir()) == []


# --------------------------------------------------------------------------------------------
# The rules around them
# --------------------------------------------------------------------------------------------

def test_two_builds_of_one_index_never_run_at_once(catalog_dir, encoder, tmp_path):
    out = tmp_path / "idx"
    build_index(scan_catalog(catalog_dir), out, encoder)
    with build_lock(out), pytest.raises(ValueError, match="Another build"):
        build_index(scan_catalog(catalog_dir), out, encoder)


def test_every_skip_is_reported_by_id_row_and_reason_and_strict_fails(catalog_dir, encoder, tmp_path,
                                                                       monkeypatch):
    dresses = catalog_dir / "dresses"
    (dresses / "text.png").write_text("just text")
    (dresses / "cut.png").write_bytes((dresses / "dress00.png").read_bytes()[:300])
    shutil.copy(dresses / "cut.png", dresses / "cut_copy.png")  # the same content: refused with it
    Image.new("RGB", (500, 500)).save(dresses / "big.png")
    rows = _rows(catalog_dir) + [
        {"id": "gone", "image": "dresses/gone.png"}, {"id": "out", "image": "../x.png"},
        {"id": "text", "image": "dresses/text.png"}, {"id": "cut", "image": "dresses/cut.png"},
        {"id": "big", "image": "dresses/big.png"}, {"id": "dress00", "image": "dresses/dress01.png"},
        {"id": "noimage"}, {"id": "cut_copy", "image": "dresses/cut_copy.png"},
    ]
    _write_rows(catalog_dir, rows)
    monkeypatch.setattr("fashion_rag.images.MAX_IMAGE_PIXELS", 200_000)  # big.png: 250k pixels
    out = tmp_path / "idx"
    with pytest.raises(SkippedItemsError) as err:
        build_index(scan_catalog(catalog_dir), out, encoder, strict=True)
    assert not out.exists()  # nothing written, not even the new folder
    report = err.value.report
    assert [(s.id, s.row, s.reason) for s in report.skipped] == [
        ("gone", 37, "missing"), ("out", 38, "outside the catalog"), ("dress00", 42, "duplicate id"),
        ("noimage", 43, "no image path"), ("text", 39, "not an image"), ("cut", 40, "unreadable"),
        ("big", 41, "too large"), ("cut_copy", 44, "unreadable")]
    assert str(report.skipped[0]).startswith("'gone' (metadata.jsonl line 37): missing: ")
    report = build_index(scan_catalog(catalog_dir), out, encoder)
    assert report.summary() == ("36 garments indexed (36 encoded, 0 reused, 0 removed), 8 skipped "
                                "(1 duplicate id, 1 missing, 1 no image path, 1 not an image, "
                                "1 outside the catalog, 1 too large, 2 unreadable)")


def _odd_images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rgba = Image.new("RGBA", (120, 160), (0, 0, 0, 0))
    rgba.paste((200, 0, 0, 255), (20, 20, 100, 140))
    paths = {"rgba": folder / "rgba.png", "cmyk": folder / "cmyk.jpg", "grey16": folder / "grey16.png",
             "grey": folder / "grey.jpg", "one": folder / "one.png",
             "unicode": folder / "röck ünïcode 裙.png",
             "spaces": folder / "a dress with spaces.webp", "palette": folder / "palette.gif"}
    rgba.save(paths["rgba"])
    Image.new("CMYK", (90, 120), (0, 200, 200, 20)).save(paths["cmyk"])
    ramp = (np.arange(64 * 48, dtype=np.uint32).reshape(64, 48) * 21).astype(np.uint16)
    Image.fromarray(ramp).save(paths["grey16"])
    Image.new("L", (50, 80), 90).save(paths["grey"])
    Image.new("RGB", (1, 1), (10, 200, 30)).save(paths["one"])
    Image.new("RGB", (70, 90), (0, 0, 250)).save(paths["unicode"])
    Image.new("RGB", (70, 90), (0, 250, 0)).save(paths["spaces"])
    Image.new("P", (40, 40), 3).save(paths["palette"])
    return paths


def test_odd_but_valid_images_are_all_indexed(encoder, tmp_path):
    catalog = tmp_path / "catalog"
    paths = _odd_images(catalog / "dresses")
    report = build_index(scan_catalog(catalog), tmp_path / "idx", encoder)
    assert report.skipped == [] and report.items == len(paths)
    index = load_index(tmp_path / "idx", encoder)
    assert sorted(index.ids) == sorted(p.stem for p in paths.values())
    grey16 = np.asarray(index.garment_image(index.position("grey16")))
    assert grey16.min() < 40 and 200 < grey16[grey16 < 255].max()  # levels kept, not clipped to white
    assert [h.id for h in search(index, "dress", 8, mode="image")] != []


def test_decompression_bomb_is_skipped_with_bounded_memory(encoder, tmp_path):
    catalog = tmp_path / "catalog"
    (catalog / "dresses").mkdir(parents=True)
    Image.new("RGB", (60, 80), (0, 0, 200)).save(catalog / "dresses" / "fine.png")
    # 20000 x 20000 pixels (1.2 GB decoded) in a few hundred kB of PNG.
    Image.new("1", (20_000, 20_000)).save(catalog / "dresses" / "bomb.png", optimize=True)
    assert (catalog / "dresses" / "bomb.png").stat().st_size < 2_000_000
    code = (
        "import json, resource, sys;"
        "from fashion_rag.retrieval.build import build_index;"
        "from fashion_rag.retrieval.catalog import scan_catalog;"
        "from fashion_rag.openclip_encoder import GarmentEncoder;"
        "enc = GarmentEncoder(sys.argv[3], 'fashion-rag-tiny'); enc.module;"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        "r = build_index(scan_catalog(sys.argv[1]), sys.argv[2], enc, log_fn=lambda m: None);"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before;"
        "print(json.dumps({'items': r.items, 'skipped': [(s.id, s.reason) for s in r.skipped], 'kb': grown}))"
    )
    args = [str(catalog), str(tmp_path / "idx"), str(encoder.weights_path)]
    r = subprocess.run([sys.executable, "-c", code, *args], env={**os.environ, "PYTHONPATH": str(REPO)},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.splitlines()[-1])
    assert result["items"] == 1 and result["skipped"] == [["bomb", "too large"]]
    assert result["kb"] < 100_000  # under 100 MB more than before the build (decoding it: 400 MB+)


# --------------------------------------------------------------------------------------------
# Issue 24: a build owns only what it created
# --------------------------------------------------------------------------------------------

def _user_folders(parent: Path, *names: str) -> None:
    for name in names:
        (parent / name).mkdir(parents=True)
        (parent / name / "precious.txt").write_text(f"mine: {name}")


def test_issue24_user_folders_named_like_a_builds_survive(catalog_dir, encoder, tmp_path):
    mine = (".tmp-usercache", "v-20260101T000000Z-deadbeef")
    # In a folder with no index yet: the build is refused and touches nothing.
    for i, name in enumerate(mine):
        out = tmp_path / f"fresh{i}"
        _user_folders(out, name)
        before = _snapshot(out)
        with pytest.raises(ValueError, match="not a garment index") as err:
            build_index(scan_catalog(catalog_dir), out, encoder)
        assert repr(name) in str(err.value) and _snapshot(out) == before and os.listdir(out) == [name]
    # Inside an index: left alone by builds that write new versions and delete old ones.
    out = tmp_path / "idx"
    build_index(scan_catalog(catalog_dir), out, encoder)
    _user_folders(out, *mine)
    said: list[str] = []
    for n in (35, 34, 33):
        _write_rows(catalog_dir, _rows(catalog_dir)[:n])
        assert build_index(scan_catalog(catalog_dir), out, encoder, log_fn=said.append).written
    for name in mine:
        assert (out / name / "precious.txt").read_text() == f"mine: {name}"
    assert len(load_index(out)) == 33
    assert any("left alone" in m and ".tmp-usercache" in m for m in said), said


def test_issue24_nothing_beside_out_is_touched(catalog_dir, encoder, tmp_path):
    indexes = tmp_path / "indexes"
    build_index(scan_catalog(catalog_dir), indexes / "shop", encoder)
    data = resolve_version(indexes / "shop").data_dir
    # A user's backups beside --out, holding index files (the names an unreleased layout used).
    backups = (".shop.old-mybackup", ".shop.tmp-mine", ".new.old-mybackup")
    for name in backups:
        (indexes / name).mkdir()
        for f in (MANIFEST, "embeddings.npy"):
            shutil.copy(data / f, indexes / name / f)
    before = {name: _snapshot(indexes / name) for name in backups}
    _write_rows(catalog_dir, _rows(catalog_dir)[:35])
    assert build_index(scan_catalog(catalog_dir), indexes / "shop", encoder).written
    assert build_index(scan_catalog(catalog_dir), indexes / "new", encoder).written  # a first build
    assert {name: _snapshot(indexes / name) for name in backups} == before
    assert sorted(os.listdir(indexes)) == sorted([*backups, "shop", "new"])
    assert len(load_index(indexes / "new")) == len(load_index(indexes / "shop")) == 35


def test_issue24_an_index_of_the_old_layout_is_neither_read_nor_replaced(catalog_dir, encoder, tmp_path):
    out = tmp_path / "idx"
    build_index(scan_catalog(catalog_dir), out, encoder)
    _make_legacy(out)
    before = _snapshot(out)
    with pytest.raises(IndexFormatError, match="not a Fashion-RAG garment index of this format") as err:
        load_index(out)
    assert "index build --catalog" in str(err.value)
    with pytest.raises(ValueError, match="not a garment index") as err:
        build_index(scan_catalog(catalog_dir), out, encoder)
    assert "'manifest.json'" in str(err.value) and _snapshot(out) == before


def test_issue24_an_index_of_format_2_gets_the_rebuild_message(catalog_dir, encoder, tmp_path):
    out = tmp_path / "idx"
    build_index(scan_catalog(catalog_dir), out, encoder)
    old = resolve_version(out).data_dir
    (old / ".build.json").unlink()  # what a build before the markers wrote
    _edit_manifest(out, lambda m: (m.__setitem__("format_version", 2),
                                   m["files"]["sha256"].pop(".build.json")))
    with pytest.raises(IndexFormatError, match="format version 2, where") as err:
        load_index(out)
    assert f"index build --catalog <images folder> --out {out}" in str(err.value)
    # That command works: a new version, all encoded again; the unmarked old one is left alone.
    report = build_index(scan_catalog(catalog_dir), out, encoder)
    assert report.written and report.encoded == 36 and len(load_index(out)) == 36
    _write_rows(catalog_dir, _rows(catalog_dir)[:35])
    said: list[str] = []
    build_index(scan_catalog(catalog_dir), out, encoder, log_fn=said.append)  # (old: no longer kept)
    build_index(scan_catalog(catalog_dir), out, encoder, log_fn=said.append)
    assert old.is_dir() and (old / MANIFEST).is_file() and resolve_version(out).version != old.name
    assert any("left alone" in m and old.name in m for m in said), said


def test_issue24_two_first_builds_racing_for_a_new_out(catalog_dir, encoder, tmp_path, monkeypatch):

    import fashion_rag.retrieval.build as build_module

    out = tmp_path / "indexes" / "new"
    b_at_lock, a_encoding, b_done = threading.Event(), threading.Event(), threading.Event()

    class HoldsOn(GarmentEncoder):
        """A's encoder: A holds the lock and its work folder until B has tried its build."""

        def encode_images(self, images, batch_size=16, progress=None):
            a_encoding.set()
            b_done.wait(120)
            return super().encode_images(images, batch_size, progress)

    real_lock = build_module.build_lock

    def lock_once_a_runs(folder):  # B has made --out; it takes the lock only once A holds it
        if threading.current_thread().name == "B":
            b_at_lock.set()
            assert a_encoding.wait(120)
        return real_lock(folder)

    monkeypatch.setattr(build_module, "build_lock", lock_once_a_runs)
    results: dict = {}
    after_b: list = []

    def run(name: str, enc: GarmentEncoder) -> None:
        try:
            results[name] = build_index(scan_catalog(catalog_dir), out, enc, log_fn=lambda m: None)
        except Exception as exc:  # noqa: BLE001 (the outcome is what the test checks)
            results[name] = exc
        finally:
            if name == "B":
                after_b.append(sorted(os.listdir(out)) if out.exists() else None)
                b_done.set()

    b = threading.Thread(target=run, args=("B", encoder), name="B")
    b.start()
    assert b_at_lock.wait(120) and out.is_dir()  # B created --out and goes for the lock
    a = threading.Thread(target=run, args=("A", HoldsOn(encoder.weights_path, TINY_ARCH)), name="A")
    a.start()
    b.join(300)
    a.join(300)
    assert isinstance(results["B"], ValueError) and "Another build is running" in str(results["B"])
    entries = after_b[0]
    assert entries is not None and ".build.lock" in entries, entries  # B deleted nothing of A's
    assert any(n.startswith(".tmp-") for n in entries), entries  # A's work folder
    assert not isinstance(results["A"], Exception), results["A"]
    assert results["A"].written and len(load_index(out)) == 36


def test_issue24_the_build_marker_is_listed_and_hashed(catalog_dir, encoder, tmp_path):
    out = tmp_path / "idx"
    build_index(scan_catalog(catalog_dir), out, encoder, index_type="ivf")
    data = resolve_version(out).data_dir
    manifest = json.loads((data / MANIFEST).read_text())
    files = sorted(p.name for p in data.iterdir() if p.name != MANIFEST)
    assert ".build.json" in files and sorted(manifest["files"]["sha256"]) == files
    for name in files:
        assert manifest["files"]["sha256"][name] == hashlib.sha256((data / name).read_bytes()).hexdigest()
    assert data.name in json.loads((data / ".build.json").read_text())["names"]
    # A changed marker is refused at load like any changed file of the version.
    (data / ".build.json").write_text((data / ".build.json").read_text().replace(data.name, "v-x"))
    with pytest.raises(IndexFormatError, match=r"\.build\.json does not match the checksum"):
        load_index(out)
