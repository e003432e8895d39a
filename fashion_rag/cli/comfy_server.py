"""Start a real ComfyUI as a subprocess with this pack installed, and run API prompts over HTTP.

Used by `fashion-rag batch`, and through tools/harness.py (which knows the checkout and the test
cache) by the demo and the tests. It never imports ComfyUI: it only talks to its server on loopback.
"""

from __future__ import annotations

import json
import mimetypes
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

PACK_DIR_NAME = "comfyui_fashion_rag"


def make_base_dir(base: Path, pack: Path) -> Path:
    """A ComfyUI base directory (models/, custom_nodes/, input/, output/...) with the pack folder
    `pack` linked into its custom_nodes/."""
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_DIR_NAME
    # A cached base may link another checkout (or a deleted one): it must run this one's code.
    if not (link.is_symlink() and Path(os.readlink(link)) == pack):
        if link.exists() and not link.is_symlink():
            raise FileExistsError(f"{link} is not the link to the pack this tool made; move it away")
        tmp = link.with_name(f".{PACK_DIR_NAME}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(pack, target_is_directory=True)
        os.replace(tmp, link)  # never a moment without the pack
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

    def _log_tail(self) -> str:
        """What to add to an error message: a server we started shows its log (ComfyServer)."""
        return ""

    HTTP_TIMEOUT = 30.0  # seconds one request may wait for its answer

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=self.HTTP_TIMEOUT) as r:
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

    def run(self, prompt: dict, timeout: float = 600.0, *, prompt_id: str | None = None,
            extra_data: dict | None = None, on_wait: Callable[[], None] | None = None) -> dict:
        """POST /prompt and poll /history; return the history entry (raises on errors).

        `extra_data` is stored with the prompt in the server's history (the batch tags its rows);
        `on_wait` is called at every poll (a progress display)."""
        body: dict[str, Any] = {"prompt": prompt, "client_id": "tests"}
        if prompt_id:
            body["prompt_id"] = prompt_id
        if extra_data:
            body["extra_data"] = extra_data
        status, body = self.post("/prompt", body)
        # 200 with node_errors means ComfyUI runs only the outputs that validated.
        if status != 200 or body.get("node_errors"):
            raise PromptFailed("validation", body)
        pid = body["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                hist = self.get(f"/history/{pid}")
            except (TimeoutError, urllib.error.URLError) as exc:
                # A server busy with a long CPU run can answer a poll late (seen past 30 s on a
                # loaded machine): poll again until the prompt's own deadline. A server that is
                # gone refuses the connection, which is raised.
                if isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError):
                    continue
                raise
            if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
                entry = hist[pid]
                if entry["status"].get("status_str") != "success":
                    raise PromptFailed("execution", entry["status"])
                return entry
            if on_wait:
                on_wait()
            time.sleep(0.2 if on_wait else 0.5)
        raise TimeoutError(f"prompt {pid} did not finish in {timeout}s{self._log_tail()}")

    def cancel(self, prompt_id: str) -> None:
        """Drop a prompt from the queue, or interrupt it if it is running (only that prompt)."""
        self.post("/queue", {"delete": [prompt_id]})
        self.post("/interrupt", {"prompt_id": prompt_id})

    def upload_image(self, path: str | os.PathLike, name: str | None = None, subfolder: str = "",
                     overwrite: bool = True) -> str:
        """POST /upload/image (multipart, like the frontend): a local file into the server's input
        folder. Returns the value for a LoadImage `image` input ("subfolder/name" or "name")."""
        return self.upload_bytes(Path(path).read_bytes(), name or Path(path).name, subfolder, overwrite)

    def upload_bytes(self, data: bytes, name: str, subfolder: str = "", overwrite: bool = True) -> str:
        """upload_image of bytes already read (and checked) by the caller."""
        boundary = uuid.uuid4().hex
        fields = {"type": "input", "subfolder": subfolder, "overwrite": "true" if overwrite else "false"}
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                 for k, v in fields.items()]
        mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                     f'filename="{name}"\r\nContent-Type: {mime}\r\n\r\n'.encode() + data + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        req = urllib.request.Request(
            self.url + "/upload/image", data=b"".join(parts), method="POST",
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            answer = json.loads(r.read())
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]

    def view(self, image: dict) -> bytes:
        """The bytes of an output image entry ({"filename", "subfolder", "type"})."""
        query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
        with urllib.request.urlopen(f"{self.url}/view?{query}", timeout=60) as r:
            return r.read()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the caller stops the server itself
        pass


class ComfyServer(ComfyClient):
    """`python main.py` of the ComfyUI folder `comfyui` as a subprocess on loopback, with the pack
    in custom_nodes.

    `install_pack=True` links the pack folder `pack` into `base` (make_base_dir); False uses
    `base` as it is (a user's ComfyUI that already holds the pack); `own_session` keeps a
    terminal's Ctrl-C, meant for the caller, from reaching the server; `die_with_parent` ends the
    server when the process that started it dies, even by SIGKILL (Linux), where nobody would
    stop it (a Ray worker killed mid-row)."""

    def __init__(self, base: Path, python: str = sys.executable, extra_args: tuple = (),
                 env: dict[str, str] | None = None, *, comfyui: Path, pack: Path | None = None,
                 device_args: tuple[str, ...] = (), install_pack: bool = True,
                 log_path: Path | None = None, own_session: bool = False,
                 die_with_parent: bool = False) -> None:
        if install_pack and pack is None:
            raise ValueError("install_pack needs the pack folder (pack=...)")
        self.base = make_base_dir(base, pack) if install_pack and pack else Path(base)
        self.port = free_port()
        super().__init__(f"http://127.0.0.1:{self.port}")
        self.log_path = log_path or base / "server.log"
        cmd = [
            python, str(comfyui / "main.py"), *device_args, "--listen", "127.0.0.1",
            "--port", str(self.port), "--base-directory", str(self.base),
            "--disable-auto-launch", "--disable-api-nodes", *extra_args,
        ]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=base, env=env,
                                     start_new_session=own_session,
                                     preexec_fn=_die_with_parent if die_with_parent else None)

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

    def _log_tail(self) -> str:
        return f":\n{self.log()}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()
