"""Start a real ComfyUI as a subprocess with this pack installed, and run API prompts over HTTP.

Used by the demo (`python -m tools.demo`) and by the tests. It never imports
ComfyUI: it only talks to its server on loopback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]  # the pack: fashion_rag/cli/ -> root
PACK_DIR_NAME = "comfyui_fashion_rag"


def comfy_path() -> Path:
    env = os.environ.get("COMFYUI_PATH")
    path = Path(env) if env else Path.home() / ".cache" / "fashion-rag" / "ComfyUI"
    if not (path / "main.py").is_file():
        raise RuntimeError(
            f"No ComfyUI found at {path}. Run `bash .ci/setup` (fetches ComfyUI 0.3.75) "
            "or set COMFYUI_PATH to your ComfyUI checkout."
        )
    return path


def make_base_dir(base: Path) -> Path:
    """A ComfyUI base directory (models/, custom_nodes/, input/, output/...) holding the pack."""
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_DIR_NAME
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    return base


class PromptFailed(Exception):
    def __init__(self, kind: str, payload: dict) -> None:
        super().__init__(f"{kind}: {json.dumps(payload, default=str)[:4000]}")
        self.kind = kind
        self.payload = payload


def _json_or_none(data: bytes) -> Any:
    # Some routes (/settings, /free) answer 200 with an empty body.
    return json.loads(data) if data.strip() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyClient:
    """HTTP client of a running ComfyUI server (API-format prompts, history, /view)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def log(self) -> str:
        return ""

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict) -> tuple[int, Any]:
        req = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, _json_or_none(r.read())
        except urllib.error.HTTPError as e:
            return e.code, _json_or_none(e.read())

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        """POST /prompt and poll /history; return the history entry (raises on errors)."""
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": "tests"})
        # 200 with node_errors means ComfyUI runs only the outputs that validated.
        if status != 200 or body.get("node_errors"):
            raise PromptFailed("validation", body)
        pid = body["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hist = self.get(f"/history/{pid}")
            if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
                entry = hist[pid]
                if entry["status"].get("status_str") != "success":
                    raise PromptFailed("execution", entry["status"])
                return entry
            time.sleep(0.5)
        raise TimeoutError(f"prompt {pid} did not finish in {timeout}s:\n{self.log()}")

    def view(self, image: dict) -> bytes:
        """The bytes of an output image entry ({"filename", "subfolder", "type"})."""
        query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
        with urllib.request.urlopen(f"{self.url}/view?{query}", timeout=60) as r:
            return r.read()


class ComfyServer(ComfyClient):
    """`python main.py` as a subprocess on loopback, with the pack in custom_nodes."""

    def __init__(self, base: Path, python: str = sys.executable, extra_args: tuple = (),
                 env: dict[str, str] | None = None) -> None:
        self.base = make_base_dir(base)
        self.port = free_port()
        super().__init__(f"http://127.0.0.1:{self.port}")
        self.log_path = base / "server.log"
        cmd = [
            python, str(comfy_path() / "main.py"), "--cpu", "--listen", "127.0.0.1",
            "--port", str(self.port), "--base-directory", str(self.base),
            "--disable-auto-launch", "--disable-api-nodes", "--fp32-text-enc", "--fp32-vae",
            "--fp32-unet", *extra_args,
        ]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=base, env=env)

    def wait_ready(self, timeout: float = 180.0, node: str = "FashionRAGGarmentIndexLoader") -> None:
        """Wait until /object_info answers; raise if `node` (one of the pack's) is not there."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited ({self.proc.returncode}):\n{self.log()}")
            try:
                info = self.get(f"/object_info/{node}")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
                continue
            if node not in info:
                raise RuntimeError(f"ComfyUI runs but the pack did not load:\n{self.log()}")
            return
        raise TimeoutError(f"ComfyUI did not answer in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()
