"""The path rule and the safe file helpers at their edges (fashion_rag/paths.py, files.py).

Every reader of a user's, a workflow's or a shared index's path goes through these, so each
rule is checked on literal cases at its boundary: a NUL byte, Windows-only traversal on POSIX,
a name one character too long, a file one byte over its bound, a file that reports no size and
grows past it, the temp names atomic_write leaves, and the mode it gives.
Mutations caught (each failed here, none elsewhere in the suite): inside() without its NUL
check (a catalog row with a NUL then crashed the whole scan instead of skipping the row);
is_plain_relative without the Windows '..' parts, or without the Windows anchor; is_plain_name
without its printable check; open_regular's size bound one byte loose; read_regular's growth
bound one byte loose; is_atomic_temp matching any name between the prefix and '.tmp';
atomic_write without its chmod (mkstemp's private 0600 left)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import stat
import tempfile
import threading
import time

import numpy as np
import pytest

from fashion_rag.files import (
    UnreadableFileError,
    atomic_write,
    cached_sha256,
    is_atomic_temp,
    map_npy,
    open_regular,
    read_regular,
    sha256_file,
)
from fashion_rag.paths import (
    MAX_NAME_CHARS,
    PathRuleError,
    check_index_name,
    inside,
    is_plain_name,
    is_plain_relative,
)
from fashion_rag.retrieval.catalog import OUTSIDE, scan_catalog


def test_inside_refuses_a_nul_byte_and_a_catalog_row_holding_one_is_skipped(tmp_path):
    with pytest.raises(PathRuleError, match="is not a valid path"):
        inside("a\x00b.png", tmp_path, "image")
    (tmp_path / "ok.png").write_bytes(b"x")
    rows = [{"id": "nul", "image": "a\x00b.png"}, {"id": "ok", "image": "ok.png"}]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    catalog = scan_catalog(tmp_path)
    assert [i.id for i in catalog.items] == ["ok"]
    assert [(s.id, s.reason) for s in catalog.skipped] == [("nul", OUTSIDE)]


@pytest.mark.parametrize("text, plain", [
    ("a/b.png", True), ("b.png", True), ("a/.hidden/b.png", True),
    ("", False), ("../x.png", False), ("a/../../x.png", False), ("/abs/x.png", False),
    ("a\\..\\..\\x.png", False), ("..\\x.png", False),  # '..' only as Windows reads it
    ("C:\\x.png", False), ("C:x.png", False), ("\\\\server\\share\\x.png", False), ("\\x.png", False),
    ("a\x00b.png", False),
])
def test_plain_relative_paths(text, plain):
    assert is_plain_relative(text) is plain


@pytest.mark.parametrize("text, plain", [
    ("demo", True), ("my shop 2", True), ("x" * MAX_NAME_CHARS, True),
    ("", False), (".hidden", False), (".", False), ("..", False), ("a/b", False), ("a\\b", False),
    ("c:", False), (" demo", False), ("demo ", False), ("tab\there", False), ("new\nline", False),
    ("bell\x07", False), ("x" * (MAX_NAME_CHARS + 1), False),
])
def test_plain_names(text, plain):
    assert is_plain_name(text) is plain


def test_regular_files_are_read_up_to_their_bound_and_not_one_byte_more(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    assert read_regular(path, 100) == b"x" * 100
    with open_regular(path, 100) as f:
        assert f.read() == b"x" * 100
    for read in (lambda: read_regular(path, 99), lambda: open_regular(path, 99)):
        with pytest.raises(UnreadableFileError, match="is 100 bytes, more than the 99 allowed"):
            read()
    # /proc files report size 0 and are longer: read to the bound, refused one byte past it.
    status = read_regular("/proc/self/status", 1 << 20)
    assert len(status) > 200
    with pytest.raises(UnreadableFileError, match="grew past the 200 bytes allowed"):
        read_regular("/proc/self/status", 200)


def test_atomic_write_names_and_mode(tmp_path):
    target = tmp_path / "index.json"
    old = os.umask(0o077)  # the private default some servers run with: the mode is set, not masked
    try:
        atomic_write(target, lambda tmp: open(tmp, "w").write("{}"))
        atomic_write(tmp_path / "other.json", lambda tmp: open(tmp, "w").write("{}"), mode=0o640)
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "other.json").stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "other.json"]  # no temp left
    # The temp names mkstemp gives (as atomic_write asks for them) are recognised, nothing else is.
    for _ in range(20):
        fd, name = tempfile.mkstemp(dir=tmp_path, prefix=".index.json.", suffix=".tmp")
        os.close(fd)
        assert is_atomic_temp(os.path.basename(name), "index.json")
    for name in (".index.json.abcdefg.tmp", ".index.json.abcdefghi.tmp", ".index.json.ABCDEFGH.tmp",
                 ".index.json.abc/efgh.tmp", ".index.json.my backup.tmp", ".index.json.abcdefgh.tmp.x",
                 "index.json.abcdefgh.tmp", ".other.json.abcdefgh.tmp", ".index.json..tmp"):
        assert not is_atomic_temp(name, "index.json"), name


def test_inside_refuses_dotdot_absolute_and_symlinked_escapes(tmp_path):
    """'..', an absolute path and a symlink inside the root to a file outside it are refused;
    a '..' that stays inside and a symlink within the root are accepted, resolved.

    Mutations caught: inside() without its containment check; inside() checking the unresolved
    path (a lexical '..' and a symlink pass)."""
    root = (tmp_path / "root").resolve()
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"s")
    (root / "ok.png").write_bytes(b"o")
    (root / "out.png").symlink_to(tmp_path / "secret.png")
    (root / "in.png").symlink_to(root / "ok.png")
    for text in ("../secret.png", "sub/../../secret.png", str(tmp_path / "secret.png"), "/etc/passwd",
                 "out.png"):
        with pytest.raises(PathRuleError, match="which is outside"):
            inside(text, root, "image")
    assert inside("sub/../ok.png", root, "image") == root / "ok.png"
    assert inside("in.png", root, "image") == root / "ok.png"
    assert inside(str(root / "sub"), root, "folder") == root / "sub"


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "c:", 5, None])
def test_check_index_name_refuses_all_but_one_visible_name(name):
    """Mutation caught: check_index_name accepting any str (without is_plain_name)."""
    with pytest.raises(PathRuleError, match="is not allowed"):
        check_index_name(name, ["/models/fashion_rag"])
    assert check_index_name("demo") == "demo"


def _in_thread(call, seconds: float = 2.0):
    """call() in a thread: (finished in time, its result or exception)."""
    out: list = []

    def run():
        try:
            out.append(call())
        except BaseException as exc:  # noqa: BLE001 handed back to the test
            out.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    return (not worker.is_alive()), out


def test_a_fifo_a_device_and_a_socket_are_refused_at_once(tmp_path):
    """A FIFO with no writer is refused at once (not waited on), as are /dev/null and a Unix
    socket, each as UnreadableFileError.

    Mutations caught: O_NONBLOCK dropped from open_regular (the FIFO hangs); the S_ISREG check
    loosened to a folder check (FIFO and device read as empty files); ENXIO (a socket) not
    mapped to UnreadableFileError."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    start = time.monotonic()
    done, out = _in_thread(lambda: read_regular(fifo, 100))
    if not done:  # unblock the waiting open so the thread ends, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("open_regular waited for a writer on a FIFO")
    assert time.monotonic() - start < 1
    assert isinstance(out[0], UnreadableFileError) and "is not a regular file" in str(out[0])
    with pytest.raises(UnreadableFileError, match="is not a regular file"):
        read_regular("/dev/null", 100)
    sock_path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        with pytest.raises(UnreadableFileError, match="is not a regular file"):
            open_regular(sock_path)
    with pytest.raises(UnreadableFileError, match="is not a regular file"):
        open_regular(tmp_path)


def test_refusals_leave_no_descriptor_open(tmp_path):
    """Mutation caught: open_regular not closing its descriptor when it refuses the file."""
    big, fifo = tmp_path / "big.bin", tmp_path / "pipe"
    big.write_bytes(b"x" * 10)
    os.mkfifo(fifo)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        for path, bound in ((big, 9), (fifo, None)):
            with pytest.raises(UnreadableFileError):
                open_regular(path, bound)
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    """Mutation caught: atomic_write not removing its temp file when write() fails."""
    target = tmp_path / "index.json"
    atomic_write(target, lambda tmp: open(tmp, "w").write('{"v": 1}'))
    assert target.read_text() == '{"v": 1}'

    def fail(tmp):
        with open(tmp, "w") as f:
            f.write('{"v"')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, fail)
    assert target.read_text() == '{"v": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["index.json"]


def test_sha256_file_up_to_its_bound_and_not_one_byte_more(tmp_path):
    """A file of exactly the bound hashes (in small chunks too); one that reports no size and is
    longer (/proc) is refused, never hashed cut short.

    Mutations caught: sha256_file's growth check one byte tight (`read >= max_bytes`); its reads
    capped at the bound rather than one byte past it (a longer file hashed cut off)."""
    path = tmp_path / "w.bin"
    path.write_bytes(bytes(range(100)))
    want = hashlib.sha256(bytes(range(100))).hexdigest()
    for chunk in (7, 100, 1 << 22):
        assert sha256_file(path, chunk=chunk, max_bytes=100) == want
    with pytest.raises(UnreadableFileError, match="is 100 bytes, more than the 99 allowed"):
        sha256_file(path, max_bytes=99)
    with pytest.raises(UnreadableFileError, match="grew past the 200 bytes allowed"):
        sha256_file("/proc/self/status", chunk=64, max_bytes=200)


def test_cached_sha256_checks_the_bound_before_its_cache_and_sees_a_rewrite(tmp_path):
    """Mutations caught: cached_sha256's size check dropped (a hash remembered without a bound
    passes a bounded call); the mtime left out of its key (a same-size rewrite in place keeps
    the old hash)."""
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 50)
    os.utime(path, ns=(10**18, 10**18))
    assert cached_sha256(path) == hashlib.sha256(b"a" * 50).hexdigest()
    with pytest.raises(UnreadableFileError, match="is 50 bytes, more than the 49 allowed"):
        cached_sha256(path, max_bytes=49)
    inode = path.stat().st_ino
    with open(path, "r+b") as f:
        f.write(b"b" * 50)
    os.utime(path, ns=(2 * 10**18, 2 * 10**18))
    assert path.stat().st_ino == inode
    assert cached_sha256(path, max_bytes=50) == hashlib.sha256(b"b" * 50).hexdigest()


def test_map_npy_refuses_a_file_longer_or_shorter_than_its_header(tmp_path):
    """Mutation caught: map_npy accepting bytes after the array (`!=` loosened to `>`)."""
    path = tmp_path / "e.npy"
    np.save(path, np.arange(6, dtype="<f4").reshape(2, 3))
    with open(path, "rb") as f:
        assert map_npy(f, 2, 3).tolist() == [[0, 1, 2], [3, 4, 5]]
    data = path.read_bytes()
    for damaged in (data + b"\0\0\0\0", data[:-4]):
        path.write_bytes(damaged)
        with open(path, "rb") as f, pytest.raises(ValueError, match="is truncated, or longer"):
            map_npy(f, 2, 3)


def test_atomic_write_writes_its_temp_beside_the_target(tmp_path):
    """The temp file lies in the target's folder (one file system: the rename is atomic, no
    EXDEV; nothing left in the shared temp dir) and is named as mkstemp names it there.

    Mutation caught: atomic_write's mkstemp without dir= (temp in the system temp dir)."""
    folder = tmp_path / "idx"
    seen = []

    def write(tmp):
        seen.append(tmp)
        with open(tmp, "w") as f:
            f.write("{}")

    atomic_write(folder / "index.json", write)
    assert os.path.dirname(seen[0]) == str(folder)
    assert re.fullmatch(r"\.index\.json\.[a-z0-9_]{8}\.tmp", os.path.basename(seen[0]))
    assert (folder / "index.json").read_text() == "{}"


def test_read_regular_refuses_a_sizeless_file_one_byte_past_a_tiny_bound():
    """/proc/self/status reports size 0: its first read is 1 byte, exactly a bound of 1, and the
    file goes on; it is refused, never returned cut to that 1 byte.

    Mutation caught: read_regular's loop stopping at `total < max_bytes` (a file that reached
    the bound exactly on a read was returned cut short)."""
    with pytest.raises(UnreadableFileError, match="grew past the 1 bytes allowed"):
        read_regular("/proc/self/status", 1)


def test_a_durable_atomic_write_syncs_the_file_then_renames_then_syncs_the_folder(tmp_path, monkeypatch):
    """With durable=True the temp file's bytes are fsynced before the rename and the folder after
    it (a power cut leaves the old file or the new one). The real os.fsync and os.replace run;
    each call is only recorded, with the path its descriptor names (/proc/self/fd).

    Mutations caught: the temp file's fsync dropped; the folder's fsync dropped; the folder
    synced before the rename instead of after."""
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    folder = (tmp_path / "idx").resolve()
    atomic_write(folder / "index.json", lambda tmp: open(tmp, "w").write("{}"), durable=True)
    monkeypatch.undo()
    assert [c[0] for c in calls] == ["fsync", "replace", "fsync"], calls
    assert re.fullmatch(r"\.index\.json\.[a-z0-9_]{8}\.tmp", os.path.basename(calls[0][1])), calls
    assert calls[1:] == [("replace", str(folder / "index.json")), ("fsync", str(folder))]
    assert (folder / "index.json").read_text() == "{}"
