"""Where a finished row's images go (fashion_rag.cli.batch_outputs), without running a prompt: the
images are written into the shared real ComfyUI server's output/ and temp/ folders and fetched
through its own /view, as a batch fetches a row's outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fashion_rag.cli.batch_outputs import RowFolderError, check_row_folder, save_outputs
from fashion_rag.cli.comfy_server import ComfyClient

SUB = "fr_test_batch_outputs"  # this module's folder inside the server's output/ and temp/


@pytest.fixture
def view_server(comfy_server, comfy_base):
    """(client of the shared server, its base folder): /view reads base/<type>/<subfolder>/<name>.
    This module's files are removed after each test: other tests read the server's folders (e.g.
    every preview in temp/ as an image)."""
    yield ComfyClient(comfy_server.url), Path(comfy_base)
    for kind in ("output", "temp"):
        shutil.rmtree(Path(comfy_base) / kind / SUB, ignore_errors=True)


def _image(root: Path, kind: str, name: str, data: bytes, subfolder: str = "") -> dict:
    subfolder = f"{SUB}/{subfolder}".rstrip("/")
    (root / kind / subfolder).mkdir(parents=True, exist_ok=True)
    (root / kind / subfolder / name).write_bytes(data)
    return {"filename": name, "subfolder": subfolder, "type": kind}


def test_row_images_get_distinct_names_in_node_order(view_server, tmp_path):
    """Two savers with the same prefix, one with two images, a preview, a mask preview (temp) and
    a node id past 9. Mutations caught: same-label nodes not told apart by their ids (the second
    overwrites the first); a multi-image node's images all given one name (each overwrites the
    last); temp previews of other nodes kept; node ids ordered as text ("10" before "9") or not
    at all; the prefix's first folder taken as the label instead of its last part."""
    client, root = view_server
    workflow = {
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "fashion_rag/result"}},
        "10": {"class_type": "SaveImage", "inputs": {"filename_prefix": "other/result"}},
        "12": {"class_type": "PreviewImage", "inputs": {}},
        "3": {"class_type": "FashionRAGMaskPreview", "inputs": {}},
        "4": {"class_type": "SaveImage", "inputs": {"filename_prefix": "runs/a/garments"}},
    }
    entry = {"outputs": {
        "10": {"images": [_image(root, "output", "result_00001_.png", b"ten", "other")]},
        "9": {"images": [_image(root, "output", "result_00001_.png", b"nine", "fashion_rag")]},
        "12": {"images": [_image(root, "temp", "preview.png", b"preview")]},
        "3": {"images": [_image(root, "temp", "mask.png", b"mask")]},
        "4": {"images": [_image(root, "output", "g1.png", b"g1", "runs/a"),
                         _image(root, "output", "g2.jpg", b"g2", "runs/a")]},
    }}
    out = tmp_path / "out"
    paths, scores = save_outputs(client, workflow, entry, out, "row1")
    assert paths == ["row1/garments_1.png", "row1/garments_2.jpg", "row1/result_9.png",
                     "row1/result_10.png", "row1/PreviewImage_12.png"]
    assert scores == []
    got = {p.name: p.read_bytes() for p in (out / "row1").iterdir()}
    assert got == {"garments_1.png": b"g1", "garments_2.jpg": b"g2", "result_9.png": b"nine",
                   "result_10.png": b"ten", "PreviewImage_12.png": b"preview",
                   ".fashion_rag_batch": b'{"row": "row1"}'}


def test_a_link_to_a_folder_marked_for_the_row_is_not_the_rows_folder(tmp_path):
    """OUT/<id> a symlink to a folder that holds the row's marker: still refused (replacing it would
    rmtree wherever it points). Mutation caught: the symlink check dropped."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".fashion_rag_batch").write_text(json.dumps({"row": "r"}))
    out = tmp_path / "out"
    out.mkdir()
    (out / "r").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(RowFolderError, match="out/r already exists and was not made by fashion-rag batch"):
        check_row_folder(out, "r")
    (out / "r").unlink()
    (out / "r").mkdir()
    (out / "r" / ".fashion_rag_batch").write_text(json.dumps({"row": "r"}))
    check_row_folder(out, "r")  # a real folder batch made for this row: fine
