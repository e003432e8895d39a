"""The small helpers the stages share, at their edges: typed JSON records (fashion_rag/records.py),
tables (tables.py), the id listing of messages (paths.listing) and the one line of an error
(logs.error_line). Expected values are literals.
Mutations caught (each planted and seen failing here): a bool accepted as an int; an int refused
where a float is wanted; a missing field with a default reported; only the first problem of a
record kept; listing's "in all" shown at exactly 5 values; error_line keeping the first line (the
traceback's head) instead of the last; tables' CSV line numbers counted by rows (a quoted caption
holding a newline then named the wrong line); a JSON Lines row cut at U+2028."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from fashion_rag.categories import normalize_category, resolve_category
from fashion_rag.comfyui_folder import read_comfyui_version
from fashion_rag.logs import error_line
from fashion_rag.model_files import ADAPTER, missing_file_message
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


def test_json_lines_by_every_suffix_people_use(tmp_path):
    """.jsonl, .ndjson and .json are JSON Lines (one object a line), whatever the case of the
    suffix; anything else is CSV. Mutation caught: ".ndjson" dropped from the JSON Lines
    suffixes (the file then read as a one-column CSV)."""
    for name in ("t.jsonl", "t.ndjson", "t.json", "t.NDJSON"):
        (tmp_path / name).write_text('{"id": "a", "Category": "dresses"}\n{"id": "b"}\n')
        assert read_rows(tmp_path / name) == [(1, {"id": "a", "category": "dresses"}), (2, {"id": "b"})], name


@dataclass(frozen=True)
class Marker:
    owner: str | None  # required, and None is a value of it
    note: str | None = None


def test_to_json_keeps_a_required_field_that_is_none():
    """Only fields left at a None *default* are left out; a required field holding None stays
    (else the record could not be read back: "owner is missing"). Mutation caught: every None
    field left out of to_json."""
    assert to_json(Marker(None)) == {"owner": None}
    assert to_json(Marker("me", "n")) == {"owner": "me", "note": "n"}
    assert from_json(Marker, to_json(Marker(None)), "", []) == Marker(None)


@pytest.mark.parametrize(("text", "category"), [
    ("upper body", "upper_body"), ("Upper Body", "upper_body"), (" T-Shirt ", "upper_body"),
    ("women tops", "upper_body"), ("Jumpsuit", "dresses"), ("evening gown", "dresses"),
    ("long-skirts", "lower_body"), ("lower-body", "lower_body"), ("Jeans", "lower_body"),
    ("shoes", None), ("", None), (None, None),
])
def test_free_text_categories(text, category):
    """Catalog words -> the three categories (literals). Mutations caught: a jumpsuit mapped to
    upper body; spaces no longer read as word separators ("upper body" unknown)."""
    assert normalize_category(text) == category


def test_category_choice_auto_and_unknown():
    """'auto' takes the first garment's category; a named category must be one of the three.
    Mutation caught: the check of a hand-chosen category dropped (any string accepted)."""
    assert resolve_category("lower_body", None) == "lower_body"
    assert resolve_category("auto", ("g1", "Dress")) == "dresses"
    with pytest.raises(ValueError, match=r"unknown category 'shoes'; use auto or one of upper_body"):
        resolve_category("shoes", ("g1", "dresses"))
    with pytest.raises(ValueError, match=r"no 'garments' input is connected: choose one of upper_body"):
        resolve_category("auto", None)
    with pytest.raises(ValueError, match=r"first garment \(g7\) has category 'hat'.*choose the category by"):
        resolve_category("auto", ("g7", "hat"))


def test_missing_model_file_message_names_the_file_the_folders_searched_and_the_remedy():
    """The one message of a missing model file: which file, every folder searched (or that none
    was), where the file comes from, where to put it and how to refresh. Mutation caught: the
    "(searched: ...)" part dropped from missing_file_message."""
    msg = missing_file_message(ADAPTER, "mine.pth", ["/m/fashion_rag/adapter", "/x/adapters"])
    for part in ("'mine.pth' was not found", "(searched: /m/fashion_rag/adapter, /x/adapters)",
                 "inversion_adapter_120000.pth from the Hugging Face hub repository furio19/fashion-rag",
                 "into models/fashion_rag/adapter/", "'fashion_rag_adapter' in extra_model_paths.yaml",
                 "press R"):
        assert part in msg, part
    assert "(searched: no folder)" in missing_file_message(ADAPTER, None, [])


@dataclass(frozen=True)
class Ids:
    ids: list[int]


def test_records_from_hostile_json_are_none_or_mistyped():
    """A JSON scalar, a JSON nested past the recursion limit and a bool among list[int] ids are
    refused (None from parse, Mistyped from from_json), never a TypeError or RecursionError.

    Mutations caught: parse without its isinstance(dict) check (a JSON number or string raised
    TypeError); parse not catching RecursionError; list[int]'s fast path by isinstance (a bool
    taken for an int)."""
    for raw in (b"5", b'"name"', b"null", b"[" * 100_000 + b"]" * 100_000):
        assert parse(Rec, raw) is None, raw[:10]
    assert from_json(Ids, {"ids": [1, 2]}, "", []) == Ids([1, 2])
    problems: list[str] = []
    with pytest.raises(Mistyped):
        from_json(Ids, {"ids": [1, True]}, "", problems)
    assert problems == ["ids[1] is bool, not int"]


def test_tables_that_are_not_files_deep_json_and_huge_csv_fields_are_one_value_error(tmp_path):
    """A device, a FIFO, a JSON line nested past the recursion limit and a CSV field over the
    csv module's limit each give one ValueError naming the file (and line).

    Mutations caught: tables reading with plain open() (a device read as an empty table);
    UnreadableFileError passed on without the 'give a CSV or JSON Lines file' advice;
    RecursionError from a JSON line not caught; csv.Error not caught."""
    with pytest.raises(ValueError, match="/dev/null is not a regular file.*: give a CSV or JSON Lines file"):
        read_rows(Path("/dev/null"))
    os.mkfifo(tmp_path / "jobs.csv")
    with pytest.raises(ValueError, match="jobs.csv is not a regular file.*: give a CSV or JSON Lines file"):
        read_rows(tmp_path / "jobs.csv")
    (tmp_path / "deep.jsonl").write_text('{"id": 1}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ValueError, match=r"deep.jsonl:2: not a JSON object per line"):
        read_rows(tmp_path / "deep.jsonl")
    (tmp_path / "wide.csv").write_text("id,caption\n1,ok\n2," + "x" * 200_000 + "\n")
    with pytest.raises(ValueError, match=r"wide.csv:\d+: not readable as CSV"):
        read_rows(tmp_path / "wide.csv")


def test_a_comfyui_folders_version_is_read_from_its_file(tmp_path):
    """comfyui_version.py as ComfyUI generates it (a comment, then the line), with either quote;
    None where there is no file, no such line, or the name only inside another line. Used by the
    evaluation report, the GPU check's kit and the test harness."""
    assert read_comfyui_version(tmp_path) is None
    file = tmp_path / "comfyui_version.py"
    file.write_text('# This file is automatically generated by the build process\n__version__ = "0.33.0"\n')
    assert read_comfyui_version(tmp_path) == "0.33.0"
    file.write_text("__version__='0.3.75'\n")
    assert read_comfyui_version(tmp_path) == "0.3.75"
    file.write_text('# __version__ = "9.9.9" was the old line\nVERSION = "1.0"\n')
    assert read_comfyui_version(tmp_path) is None
    file.write_bytes(b"\xff\xfe__version__")
    assert read_comfyui_version(tmp_path) is None
