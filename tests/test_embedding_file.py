"""Saved garment embeddings (`embedding:<name>` files), without ComfyUI: names, dtype, re-saves."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fashion_rag.inversion.embedding_file import embedding_name, save_embedding


@pytest.mark.parametrize("name", ["a/b", "a/../../evil", "x\\..\\y", "my garment", ".hidden", ""])
def test_names_with_folders_or_spaces_are_refused(name):
    """A name may not reach another folder (or break the prompt syntax at a space).

    Mutation caught: '/' allowed in embedding names (a/../../evil writes outside the folder)."""
    with pytest.raises(ValueError, match="no spaces or folders"):
        embedding_name(name)


@pytest.mark.parametrize("given,stem", [("red_top", "red_top"), ("  red_top  ", "red_top"),
                                        ("red_top.safetensors", "red_top"),
                                        ("Red-Top.v2.SafeTensors", "Red-Top.v2")])
def test_name_stems(given, stem):
    """Surrounding spaces and a .safetensors suffix in any case are dropped.

    Mutation caught: the suffix matched case-sensitively (Red-Top.v2.SafeTensors.safetensors)."""
    assert embedding_name(given) == stem


def test_saved_file_is_float32_rows_under_clip_h(tmp_path):
    """[k, tokens, width] half-precision PTEs are stored as float32 [k*tokens, width] under 'clip_h',
    with the metadata given.

    Mutation caught: the .float() cast dropped (half-precision PTEs saved as float16)."""
    ptes = torch.arange(24, dtype=torch.float16).reshape(2, 3, 4)
    path, written = save_embedding(ptes, str(tmp_path), "g", metadata={"k": "2"})
    assert written and path == os.path.join(str(tmp_path), "g.safetensors")
    sd = load_file(path)
    assert list(sd) == ["clip_h"] and sd["clip_h"].dtype == torch.float32
    assert sd["clip_h"].tolist() == [[float(4 * r + c) for c in range(4)] for r in range(6)]
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"k": "2"}


def test_same_embedding_again_is_kept_not_rewritten(tmp_path):
    """Saving the same PTEs again (a re-queued workflow) keeps the file and says it was not written;
    different PTEs are refused, and written with overwrite.

    Mutation caught: the kept file reported as written (`return path, True`)."""
    ptes = torch.linspace(-1, 1, 12).reshape(1, 3, 4)
    path, written = save_embedding(ptes, str(tmp_path), "g")
    os.utime(path, ns=(1, 1))
    assert save_embedding(ptes, str(tmp_path), "g") == (path, False)
    assert os.stat(path).st_mtime_ns == 1
    with pytest.raises(FileExistsError, match="holds a different embedding"):
        save_embedding(ptes * 2, str(tmp_path), "g")
    assert save_embedding(ptes * 2, str(tmp_path), "g", overwrite=True) == (path, True)
    assert torch.equal(load_file(path)["clip_h"], (ptes * 2).reshape(3, 4))
    assert sorted(os.listdir(tmp_path)) == ["g.safetensors"]


def test_an_unreadable_file_of_that_name_is_not_taken_for_the_same_embedding(tmp_path):
    """A file under the name that safetensors cannot read (truncated, or not an embedding) is
    refused like a different embedding, and left as it was; overwrite replaces it.
    Mutation caught: an unreadable file counted as the same embedding (kept, reported unchanged)."""
    path = tmp_path / "g.safetensors"
    path.write_bytes(b"not a safetensors file")
    ptes = torch.linspace(-1, 1, 8).reshape(1, 2, 4)
    with pytest.raises(FileExistsError, match="holds a different embedding"):
        save_embedding(ptes, str(tmp_path), "g")
    assert path.read_bytes() == b"not a safetensors file"
    assert save_embedding(ptes, str(tmp_path), "g", overwrite=True) == (str(path), True)
    assert load_file(str(path))["clip_h"].tolist() == ptes.reshape(2, 4).tolist()
