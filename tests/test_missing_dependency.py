"""A missing optional dependency disables only the nodes that need it, with a clear message.

The package is made unimportable for a real ComfyUI server process (a sitecustomize that
refuses it, as when it was never installed); nothing of ComfyUI is faked.
"""

from __future__ import annotations

import os
import textwrap

import pytest

from tools.harness import ComfyServer


@pytest.mark.slow
def test_pack_loads_without_faiss(tmp_path):
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(textwrap.dedent("""
        import importlib.abc, sys
        class _NoFaiss(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "faiss" or name.startswith("faiss."):
                    raise ModuleNotFoundError("No module named 'faiss'", name="faiss")
        sys.meta_path.insert(0, _NoFaiss())
    """))
    env = dict(os.environ, PYTHONPATH=f"{block}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    server = ComfyServer(tmp_path / "base", env=env)
    try:
        server.wait_ready(node="FashionRAGInpaint")
        info = server.get("/object_info")
        assert "FashionRAGInpaint" in info and "FashionRAGGarmentInversion" in info
        assert "FashionRAGGarmentIndexLoader" not in info
        log = server.log()
        assert "the index_loader nodes are disabled: Python package 'faiss-cpu' missing" in log
        assert "pip install -r requirements.txt" in log
        pack_lines = [ln for ln in log.splitlines() if "comfyui_fashion_rag" in ln]
        assert pack_lines and not any("IMPORT FAILED" in ln for ln in pack_lines)
    finally:
        server.stop()
