"""Many `python -m fashion_rag ...` commands, each in a process of its own with a deadline.

One fresh interpreter imports the CLI once and forks a child per command (50 commands cost one
interpreter start, not 50 of ~1.6 s each). A child that is still running at the deadline (a
reader blocked on a FIFO) is killed and reported as hung, so a hang fails its case instead of
the suite; a child's address space is capped, so an unbounded read (a symlink to /dev/zero)
ends in MemoryError instead of taking the shared machine's memory.

Run by run_cli() through subprocess; the children run fashion_rag.cli.main exactly as
`python -m fashion_rag` does (its return value is the exit status).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_HEADROOM = 2 << 30  # address space a child may add to what the imports took


def run_cli(commands: list[list[str]], deadline: float = 30.0) -> list[dict]:
    """[{"rc": exit status or None if killed at the deadline, "stdout", "stderr"}] per command."""
    request = json.dumps({"commands": commands, "deadline": deadline})
    r = subprocess.run([sys.executable, __file__], input=request, cwd=REPO, capture_output=True, text=True,
                       timeout=60 + deadline * len(commands), env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


def _child(argv: list[str], out_w: int, err_w: int) -> None:
    import resource
    import traceback

    from fashion_rag.cli import main

    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
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


def _run_one(argv: list[str], deadline: float) -> dict:
    (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(out_r)
        os.close(err_r)
        _child(argv, out_w, err_w)
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
    request = json.load(sys.stdin)
    # Imported before any fork (what `index info/query/build` import): the children share them.
    import faiss  # noqa: F401

    import fashion_rag.cli  # noqa: F401
    import fashion_rag.retrieval.build  # noqa: F401
    import fashion_rag.retrieval.encoder  # noqa: F401
    import fashion_rag.retrieval.index  # noqa: F401
    import fashion_rag.retrieval.search  # noqa: F401

    results = [_run_one(argv, request["deadline"]) for argv in request["commands"]]
    sys.stdout.write(json.dumps(results))


if __name__ == "__main__":
    _main()
