"""The small helpers the stages share, at their edges: typed JSON records (fashion_rag/records.py),
tables (tables.py), the id listing of messages (paths.listing) and the one line of an error
(logs.error_line). Expected values are literals.
Mutations caught (each planted and seen failing here): a bool accepted as an int; an int refused
where a float is wanted; a missing field with a default reported; only the first problem of a
record kept; listing's "in all" shown at exactly 5 values; error_line keeping the first line (the
traceback's head) instead of the last; tables' CSV line numbers counted by rows (a quoted caption
holding a newline then named the wrong line); a JSON Lines row cut at U+2028."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fashion_rag.logs import error_line
from fashion_rag.paths import listing
from fashion_rag.records import Mistyped, from_json, parse, to_json
from fashion_rag.tables import read_rows


@dataclass(frozen=True)
class Part:
    count: int
    weight: float


@dataclass(frozen=True)
class Rec:
    name: str
    parts: list[Part]
    tags: dict[str, int]
    note: str | None = None


def test_records_check_every_field_and_collect_every_problem():
    good = {"name": "a", "parts": [{"count": 2, "weight": 1}], "tags": {"x": 1}}
    rec = from_json(Rec, good, "", [])
    assert rec == Rec("a", [Part(2, 1)], {"x": 1})  # an int is a float; the default stays None
    assert to_json(rec) == good  # (the None default is left out, as older files lack it)
    problems: list[str] = []
    bad = {"name": 3, "parts": [{"count": True, "weight": "1"}], "tags": {"x": 1.5}}
    with pytest.raises(Mistyped):
        from_json(Rec, bad, "m", problems)
    assert problems == ["m.name is int, not str", "m.parts[0].count is bool, not int",
                        "m.parts[0].weight is str, not float", "m.tags['x'] is float, not int"]
    problems = []
    with pytest.raises(Mistyped):
        from_json(Rec, {"parts": "no"}, "", problems)
    assert problems == ["name is missing", "parts is str, not list", "tags is missing"]
    assert parse(Rec, b'{"name": "a", "parts": [], "tags": {}, "note": "n"}') == Rec("a", [], {}, "n")
    wrong_note = b'{"name": "a", "parts": [], "tags": {}, "note": 1}'
    for raw in (b"\xff", b"[1]", b"{", b'{"name": "a"}', wrong_note):
        assert parse(Rec, raw) is None, raw


def test_listing_and_error_line_at_their_bounds():
    assert listing(["a", "b", "c", "d", "e"]) == "'a', 'b', 'c', 'd', 'e'"
    assert listing([str(i) for i in range(6)]) == "'0', '1', '2', '3', '4', … (6 in all)"
    assert listing(["x" * 61]) == f"'{'x' * 60}'… (61 characters)"
    worker = RuntimeError("Traceback (most recent call last):\n  File 'w.py'\nValueError:  bad \t thing \n\n")
    assert error_line(worker) == "ValueError: bad thing"
    assert error_line(RuntimeError("")) == "RuntimeError"
    assert error_line(RuntimeError("y" * 300)) == "y" * 300
    assert error_line(RuntimeError("y" * 301)) == "y" * 299 + "…"


def test_tables_number_rows_by_line_and_keep_what_the_format_keeps(tmp_path):
    csv_file = tmp_path / "t.csv"
    csv_file.write_bytes('\ufeffID,Caption\n1,"two\nlines"\n2,plain\n'.encode())
    assert read_rows(csv_file) == [(3, {"id": "1", "caption": "two\nlines"}),
                                   (4, {"id": "2", "caption": "plain"})]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_bytes('{"ID": 1, "caption": "a\u2028b"}\r\n\n{"id": null}\n'.encode())
    assert read_rows(jsonl) == [(1, {"id": "1", "caption": "a\u2028b"}), (3, {"id": ""})]
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n[2]\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object, got list"):
        read_rows(tmp_path / "bad.jsonl")
    (tmp_path / "latin.csv").write_bytes(b"id\n\xe9\n")
    with pytest.raises(ValueError, match="Query file .*latin.csv is not UTF-8 text"):
        read_rows(tmp_path / "latin.csv", "query file")
    with pytest.raises(FileNotFoundError, match="Table .*none.csv does not exist"):
        read_rows(tmp_path / "none.csv")
