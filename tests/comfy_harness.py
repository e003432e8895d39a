"""Run the pack inside a real ComfyUI in this process (node registry + PromptExecutor).

The server-side harness (ComfyUI as a subprocess over HTTP) is fashion_rag.cli.comfy_server.
Also small helpers the batch and index tests share (prompts a server ran, a FIFO planted).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fashion_rag.cli.comfy_server import PACK_DIR_NAME, PromptFailed
from fashion_rag.comfyui_folder import read_comfyui_version
from tools.harness import comfy_path, make_base_dir


def comfyui_version(comfy: Path) -> tuple[int, ...]:
    """(major, minor, patch) of the ComfyUI at `comfy`, from its comfyui_version.py."""
    version = read_comfyui_version(comfy)
    if version is None:
        raise RuntimeError(f"{comfy}/comfyui_version.py holds no __version__: is it a ComfyUI checkout?")
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


class _ServerStub:
    """What PromptExecutor needs of PromptServer; records the messages it sends."""

    def __init__(self) -> None:
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata: dict = {}
        self.messages: list[tuple[str, Any]] = []

    def send_sync(self, event: str, data: Any, sid: Any = None) -> None:
        self.messages.append((event, data))

    def queue_updated(self) -> None:
        pass


class InProcessComfy:
    """ComfyUI's own node registry and executor in this process (one per process)."""

    _instance: InProcessComfy | None = None

    def __init__(self, base: Path) -> None:
        comfy = str(comfy_path())
        if comfy not in sys.path:
            sys.path.insert(0, comfy)
        from comfy.cli_args import args

        args.cpu = True
        args.base_directory = str(base)
        # fp32 everywhere so parity tests can compare at 1e-4.
        args.fp32_text_enc = True
        args.fp32_vae = True
        args.fp32_unet = True
        args.disable_api_nodes = True
        # Order matters: utils.* before `nodes` (which `execution` imports): importing `nodes`
        # puts comfy/ first on sys.path, after which `utils` is comfy/utils.py.
        import folder_paths  # noqa: F401, I001  (reads args.base_directory at import)
        import utils.extra_config  # noqa: F401
        import utils.install_util  # noqa: F401

        import execution
        import nodes

        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        self.base = base
        self.nodes = nodes
        self.execution = execution
        self.server = _ServerStub()
        # CLASSIC caching as `main.py --cache-classic`; cache_args carries every key any supported
        # ComfyUI reads (0.23+ reads "ram_inactive" on each prompt, older ones ignore it).
        self.executor = execution.PromptExecutor(
            self.server, cache_type=execution.CacheType.CLASSIC,
            cache_args={"lru": 0, "ram": 0, "ram_inactive": 0},
        )

    @classmethod
    def get(cls, base: Path) -> InProcessComfy:
        if cls._instance is None:
            cls._instance = cls(make_base_dir(base))
        return cls._instance

    @property
    def pack(self):
        """The pack's module as ComfyUI imported it."""
        for name, mod in sys.modules.items():
            if name.endswith(PACK_DIR_NAME) and hasattr(mod, "WEB_DIRECTORY"):
                return mod
        raise RuntimeError("the pack was not imported by ComfyUI (see the log for IMPORT FAILED)")

    def validate(self, prompt: dict) -> tuple[bool, dict, list, dict]:
        return asyncio.run(self.execution.validate_prompt(str(uuid.uuid4()), prompt, None))

    def run(self, prompt: dict) -> dict:
        """Validate and execute an API-format prompt; return {node_id: ui output}."""
        ok, error, outputs, node_errors = self.validate(prompt)
        # Like POST /prompt: valid outputs would still run, but the frontend reports any node
        # error to the user, so a test treats it as a failed prompt.
        if not ok or node_errors:
            raise PromptFailed("validation", {"error": error, "node_errors": node_errors})
        self.server.messages.clear()
        self.executor.execute(prompt, str(uuid.uuid4()), {}, outputs)
        if not self.executor.success:
            errs = [d for e, d in self.executor.status_messages if e == "execution_error"]
            raise PromptFailed("execution", errs[0] if errs else {})
        return self.executor.history_result["outputs"]


def prompts_per_row(server, jobs: Path) -> dict[str, int]:
    """How often a ComfyUI server ran each row of a batch job table, from its /history (the batch
    tags each prompt with its table and row; `fashion-rag evaluate` runs through the batch)."""
    counts: dict[str, int] = {}
    for entry in server.get("/history").values():
        tag = entry["prompt"][3].get("fashion_rag_batch") or {}
        if tag.get("jobs") == str(jobs):
            counts[tag["row"]] = counts.get(tag["row"], 0) + 1
    return counts


@contextlib.contextmanager
def fifo_in_place_of(path: Path, seconds: float = 60) -> Iterator[Path]:
    """Replace `path` by a FIFO for the block. A reader still blocked on it after `seconds` gets EOF,
    so a test of "never opens a FIFO" fails instead of hanging the suite."""
    path.unlink()
    os.mkfifo(path)

    def release() -> None:
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    guard = threading.Timer(seconds, release)
    guard.start()
    try:
        yield path
    finally:
        guard.cancel()

