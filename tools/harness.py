"""The checkout's ComfyUI harness: which ComfyUI the tests, the demo and the benchmarks run, and
this checkout as the pack linked into their base directories.

Kept out of the installed package (fashion_rag/ knows neither a checkout nor the test cache):
fashion_rag.cli.comfy_server's ComfyServer and make_base_dir take the ComfyUI folder and the
pack folder explicitly; the same names here fill them in with the harness's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from fashion_rag.cli import comfy_server
from fashion_rag.cli.comfy_server import PACK_DIR_NAME, ComfyClient

__all__ = ["PACK_DIR_NAME", "REPO", "ComfyClient", "ComfyServer", "comfy_path", "make_base_dir"]

REPO = Path(__file__).resolve().parents[1]  # the checkout: tools/ -> root; the pack the harness links
HARNESS_COMFYUI = Path.home() / ".cache" / "fashion-rag" / "ComfyUI"  # what `.ci/setup` fetches
# CPU, and fp32 everywhere so parity tests compare like with like.
HARNESS_ARGS = ("--cpu", "--fp32-text-enc", "--fp32-vae", "--fp32-unet")


def comfy_path() -> Path:
    env = os.environ.get("COMFYUI_PATH")
    path = Path(env) if env else HARNESS_COMFYUI
    if not (path / "main.py").is_file():
        raise RuntimeError(
            f"No ComfyUI found at {path}. Run `bash .ci/setup` (fetches ComfyUI 0.3.75) "
            "or set COMFYUI_PATH to your ComfyUI checkout."
        )
    return path


def make_base_dir(base: Path) -> Path:
    """comfy_server.make_base_dir with this checkout as the pack."""
    return comfy_server.make_base_dir(base, REPO)


class ComfyServer(comfy_server.ComfyServer):
    """comfy_server.ComfyServer with the harness's defaults: comfy_path(), this checkout as the
    pack, HARNESS_ARGS."""

    def __init__(self, base: Path, python: str = sys.executable, extra_args: tuple = (),
                 env: dict[str, str] | None = None, *, comfyui: Path | None = None,
                 device_args: tuple[str, ...] = HARNESS_ARGS, **kwargs: Any) -> None:
        super().__init__(base, python, extra_args, env, comfyui=comfyui or comfy_path(), pack=REPO,
                         device_args=device_args, **kwargs)
