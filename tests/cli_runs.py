"""Many `python -m fashion_rag ...` commands, each in a process of its own with a deadline.

One interpreter per pytest process imports the CLI (and torch, open_clip, faiss) once and forks
a child per command: a command costs a fork, not an interpreter start and ~12 CPU-seconds of
imports. A child that is still running at the deadline (a reader blocked on a FIFO) is killed
and reported as hung, so a hang fails its case instead of the suite; a child's address space is
capped, so an unbounded read (a symlink to /dev/zero) ends in MemoryError instead of taking the
shared machine's memory.

run_cli() starts that interpreter on first use and keeps it for the session (a line of JSON per
request on its stdin, a line per answer on its stdout); each child takes the caller's environment
of the moment and runs fashion_rag.cli.main exactly as `python -m fashion_rag` does (its return
value is the exit status).
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_HEADROOM = 2 << 30  # address space a child may add to what the imports took


_server: subprocess.Popen | None = None


def _forkserver() -> subprocess.Popen:
    global _server
    if _server is None or _server.poll() is not None:
        log = tempfile.TemporaryFile()  # its own warnings; a pipe nobody reads could fill and block it
        _server = subprocess.Popen([sys.executable, __file__], cwd=REPO, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=log, text=True,
                                   env={**os.environ, "PYTHONPATH": str(REPO)})
        _server.log = log  # type: ignore[attr-defined]
        atexit.register(_server.kill)
    return _server


def run_cli(commands: list[list[str]], deadline: float = 30.0) -> list[dict]:
    """[{"rc": exit status or None if killed at the deadline, "stdout", "stderr"}] per command."""
    server = _forkserver()
    request = {"commands": commands, "deadline": deadline, "env": dict(os.environ)}
    server.stdin.write(json.dumps(request) + "\n")
    server.stdin.flush()
    # Each child is killed at its deadline, so an answer comes unless the server itself is stuck.
    ready = selectors.DefaultSelector()
    ready.register(server.stdout, selectors.EVENT_READ)
    answered = ready.select(120 + deadline * len(commands))
    ready.close()
    line = server.stdout.readline() if answered else ""
    if not line:
        server.kill()
        server.log.seek(0)
        raise AssertionError(f"cli_runs server gave no answer: {server.log.read()[-3000:]!r}")
    return json.loads(line)


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


def _child(argv: list[str], env: dict[str, str], out_w: int, err_w: int) -> None:
    import resource
    import traceback

    from fashion_rag.cli import main

    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.environ.clear()
    os.environ.update(env)
    limit = _vm_size() + _HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    rc = 1
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def _run_one(argv: list[str], env: dict[str, str], deadline: float) -> dict:
    (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(out_r)
        os.close(err_r)
        _child(argv, env, out_w, err_w)
    os.close(out_w)
    os.close(err_w)
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    sel = selectors.DefaultSelector()
    for fd in chunks:
        sel.register(fd, selectors.EVENT_READ)
    end = time.monotonic() + deadline
    killed = False
    while sel.get_map():
        left = end - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            killed = True
            break
        for key, _ in sel.select(left):
            block = os.read(key.fd, 65536)
            if block:
                chunks[key.fd].append(block)
            else:
                sel.unregister(key.fd)
    sel.close()
    _, status = os.waitpid(pid, 0)
    for fd in chunks:
        os.close(fd)
    return {"rc": None if killed else os.waitstatus_to_exitcode(status),
            "stdout": b"".join(chunks[out_r]).decode(errors="replace"),
            "stderr": b"".join(chunks[err_r]).decode(errors="replace")}


def _main() -> None:
    # Imported before any fork (what `index info/query/build` import): the children share them.
    # open_clip alone costs ~9 CPU-seconds here (it pulls in torchvision, torch._dynamo, sympy,
    # transformers); the encoder imports it lazily, so without this every child paid for it again.
    import faiss  # noqa: F401
    import open_clip  # noqa: F401

    import fashion_rag.cli  # noqa: F401
    import fashion_rag.openclip_encoder  # noqa: F401
    import fashion_rag.retrieval.build  # noqa: F401
    import fashion_rag.retrieval.index  # noqa: F401
    import fashion_rag.retrieval.search  # noqa: F401

    for line in sys.stdin:  # one request per line until the test session closes the pipe
        request = json.loads(line)
        results = [_run_one(argv, request["env"], request["deadline"]) for argv in request["commands"]]
        sys.stdout.write(json.dumps(results) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _main()
