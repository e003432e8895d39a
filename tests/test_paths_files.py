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

import json
import os
import stat
import tempfile

import pytest

from fashion_rag.files import UnreadableFileError, atomic_write, is_atomic_temp, open_regular, read_regular
from fashion_rag.paths import MAX_NAME_CHARS, PathRuleError, inside, is_plain_name, is_plain_relative
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
