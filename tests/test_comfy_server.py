"""Starting ComfyUI for a batch (fashion_rag.cli.batch_server / comfy_server), up to the point where
the real ComfyUI refuses its command line: arguments, the base folder, and the error a failed
start gives. No server gets as far as loading anything (each case takes about a second)."""

from __future__ import annotations

import sys

import pytest

from fashion_rag.cli.batch_server import default_comfyui, describe, start_server
from fashion_rag.cli.comfy_server import make_base_dir
from tools.harness import REPO, comfy_path


def test_a_server_that_exits_at_start_says_why_with_its_log_tail(tmp_path):
    """The caller's flags reach ComfyUI's command line (server_args first, then the --extra text),
    --cpu is passed for device "cpu", the pack is linked into a fresh base, and a ComfyUI that exits
    at once (here: argparse refusing two unknown flags) is reported at once with the END of its
    log, where the error is. Mutations caught: the --extra flags dropped (only server_args
    passed); all extra_args dropped from the command; device "cpu" not giving --cpu; the exited
    process not noticed (wait_ready polls until its timeout); the log's first 6000 characters
    shown instead of its last."""
    long_flag = "--bogus-" + "y" * 7000  # puts the usage text more than 6000 characters from the end
    log = tmp_path / "logs" / "comfyui.log"
    server = start_server(comfy_path(), tmp_path / "base", sys.executable, "cpu", "--no-such-flag", log,
                          server_args=(long_flag,))
    try:
        assert "--cpu" in server.proc.args
        with pytest.raises(RuntimeError, match=r"^ComfyUI exited \(2\):") as info:
            server.wait_ready(timeout=60)
    finally:
        server.stop()
    message = str(info.value)
    assert message.rstrip().endswith(f"error: unrecognized arguments: {long_flag} --no-such-flag"[-200:])
    assert len(message) < 6100  # the tail only
    link = tmp_path / "base" / "custom_nodes" / "comfyui_fashion_rag"
    assert link.is_symlink() and link.resolve() == REPO
    assert describe(server) == f"base {(tmp_path / 'base').resolve()} (pack linked in), log {log}"


def test_a_folder_where_the_pack_link_goes_is_left_alone(tmp_path):
    """custom_nodes/comfyui_fashion_rag already a real folder (the user's): refused with the remedy,
    and untouched. Mutation caught: the check dropped (os.replace then fails with a bare
    IsADirectoryError and leaves a stray link behind)."""
    folder = tmp_path / "custom_nodes" / "comfyui_fashion_rag"
    folder.mkdir(parents=True)
    (folder / "mine.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="comfyui_fashion_rag is not the link to the pack this tool "
                                              "made; move it away"):
        make_base_dir(tmp_path, REPO)
    assert [p.name for p in folder.iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in (tmp_path / "custom_nodes").iterdir()) == ["comfyui_fashion_rag"]


def test_default_comfyui_is_comfyui_path_outside_a_comfyui(tmp_path, monkeypatch):
    """This checkout is not inside a ComfyUI's custom_nodes/, so $COMFYUI_PATH decides. Mutation
    caught: $COMFYUI_PATH ignored."""
    if REPO.parent.name == "custom_nodes":
        pytest.skip("this checkout sits in a ComfyUI's custom_nodes/, so that ComfyUI is the default and "
                    "COMFYUI_PATH is not read: run this test from a clone outside ComfyUI, as CI does")
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    assert default_comfyui() == tmp_path
    monkeypatch.delenv("COMFYUI_PATH")
    assert default_comfyui() is None
