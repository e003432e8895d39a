"""Tables people write: CSV with a header row (as spreadsheets save it, byte-order mark or not) or
JSON Lines, read as (line number, row) pairs with lower-cased column names; the file read only as a
regular file of at most MAX_TABLE_BYTES, and every problem one message naming the file and line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .files import MAX_TABLE_BYTES, UnreadableFileError, read_regular

JSON_LINES = (".jsonl", ".ndjson", ".json")


def _text(path: Path, what: str) -> str:
    try:
        raw = read_regular(path, MAX_TABLE_BYTES, what)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what.capitalize()} {path} does not exist.") from None
    except UnreadableFileError as exc:
        raise ValueError(f"{exc}: give a CSV or JSON Lines file.") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what.capitalize()} {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                         "save it as UTF-8.") from None


def read_rows(path: Path, what: str = "table") -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs. Rows end only where the format says (JSON Lines at "\\n", CSV
    where the csv reader ends a record: a quoted caption may hold a newline), not at U+2028, form
    feeds and the like where str.splitlines() also cuts. JSON Lines by the file's suffix."""
    text = _text(path, what)
    if path.suffix.lower() in JSON_LINES:
        rows = []
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip(" \t\r"):  # JSON's own whitespace; "\r": a CRLF file
                continue
            try:
                # strict=False: a control character written raw inside a caption (a form feed from
                # an exporter) is kept, not the whole row refused.
                row = json.loads(line, strict=False)
            except (ValueError, RecursionError) as exc:
                raise ValueError(f"{path}:{lineno}: not a JSON object per line ({str(exc)[:80]}).") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}.")
            rows.append((lineno, {str(k).lower(): "" if v is None else str(v) for k, v in row.items()}))
        return rows
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        return [(reader.line_num, {(k or "").strip().lower(): v if isinstance(v, str) else ""
                                   for k, v in row.items()}) for row in reader]
    except csv.Error as exc:  # e.g. a field over the csv module's size limit
        raise ValueError(f"{path}:{reader.line_num}: not readable as CSV ({exc}).") from exc
