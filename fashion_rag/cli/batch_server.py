"""Which ComfyUI `fashion-rag batch` starts when no --server is given, and starting it.

Defaults aim at a user who installed the pack in their own ComfyUI: the ComfyUI is the one the
pack sits in (…/ComfyUI/custom_nodes/<pack>), else $COMFYUI_PATH, else --comfyui must say; the
base directory (models/, input/, output/, custom_nodes/) is that
ComfyUI's own folder, so the user's models and installed packs are used as they are.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from .comfy_server import PACK_DIR_NAME, ComfyServer

# Asked with ComfyUI's own Python: a build of torch with no usable accelerator makes ComfyUI stop
# at start-up unless it is told --cpu.
_PROBE = ("import torch, sys; ok = torch.cuda.is_available() "
          "or (hasattr(torch.backends, 'mps') and torch.backends.mps.is_available()) "
          "or (hasattr(torch, 'xpu') and torch.xpu.is_available()); sys.exit(0 if ok else 3)")


class ServerSetupError(RuntimeError):
    pass


def pack_root() -> Path:
    """The folder this code runs from (fashion_rag/cli/ -> two up): the node pack when the pack is
    installed (a custom_nodes/ folder or a git clone), site-packages for a library install."""
    return Path(__file__).resolve().parents[2]


def pack_file(*parts: str) -> Path | None:
    """A file the node pack ships beside the library (docs/, example_workflows/), or None for a
    library install: there pack_root() is site-packages, where another package may have left a
    folder of the same name."""
    pack = pack_root()
    path = pack.joinpath(*parts)
    return path if _is_pack(pack) and path.is_file() else None


def default_comfyui() -> Path | None:
    """The ComfyUI this pack is installed in, else $COMFYUI_PATH, else None (--comfyui must say)."""
    pack = pack_root()
    if pack.parent.name == "custom_nodes" and (pack.parent.parent / "main.py").is_file():
        return pack.parent.parent
    env = os.environ.get("COMFYUI_PATH")
    return Path(env) if env else None


def no_comfyui() -> ServerSetupError:
    return ServerSetupError("no ComfyUI to start: this pack is not inside a ComfyUI's custom_nodes/ and "
                            "COMFYUI_PATH is not set; pass --comfyui PATH, or --server URL for a running one")


def _is_pack(folder: Path) -> bool:
    return (folder / "__init__.py").is_file() and (folder / "fashion_rag" / "cli").is_dir() \
        and (folder / "nodes").is_dir()


def pack_in(custom_nodes: Path) -> Path | None:
    """The copy of this pack installed in a custom_nodes folder (under any folder name), if any."""
    if not custom_nodes.is_dir():
        return None
    return next((d for d in sorted(custom_nodes.iterdir()) if d.is_dir() and _is_pack(d)), None)


def start_server(comfyui: Path, base: Path, python: str, device: str, extra: str,
                 log_path: Path, die_with_parent: bool = False, server_args: tuple[str, ...] = ()
                 ) -> ComfyServer:
    """Start ComfyUI (not yet ready: call wait_ready). ServerSetupError says what to fix.
    `server_args`: more ComfyUI flags of the caller's own (a worker's output folder)."""
    comfyui, base = comfyui.expanduser().resolve(), base.expanduser().resolve()
    if not (comfyui / "main.py").is_file():
        raise ServerSetupError(f"no ComfyUI at {comfyui} (no main.py): pass --comfyui PATH, set "
                               "COMFYUI_PATH, or --server URL for a running one")
    install = pack_in(base / "custom_nodes") is None
    if install and base == comfyui:
        # Never add packs to a user's own ComfyUI behind their back.
        raise ServerSetupError(
            f"the Fashion-RAG pack is not installed in {base / 'custom_nodes'}: install it there "
            "(README, Install), or pass --base DIR for a separate base directory (models/, input/, "
            "output/) that this command sets up with the pack linked in")
    pack = pack_root()
    if install and not _is_pack(pack):
        raise ServerSetupError(f"this fashion_rag is a library install without the node pack; install "
                               f"the pack into {base / 'custom_nodes'} or use --server URL")
    if device == "auto":
        probe = subprocess.run([python, "-c", _PROBE], capture_output=True, timeout=300)
        device = "gpu" if probe.returncode == 0 else "cpu"
    device_args = ("--cpu",) if device == "cpu" else ()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return ComfyServer(base, python=python, extra_args=(*server_args, *shlex.split(extra)), comfyui=comfyui,
                       pack=pack, device_args=device_args, install_pack=install, log_path=log_path,
                       own_session=True, die_with_parent=die_with_parent)


def describe(server: ComfyServer) -> str:
    linked = (server.base / "custom_nodes" / PACK_DIR_NAME).is_symlink()
    return f"base {server.base}{' (pack linked in)' if linked else ''}, log {server.log_path}"

