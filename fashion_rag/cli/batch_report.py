"""What `fashion-rag batch` reports: the summary CSV (also its resume record) and the progress bar.

While a run goes, each finished row is appended to SUMMARY_LOG beside the CSV (one JSON line,
flushed and fsynced: O(1) per row, where rewriting the CSV after every row made a run quadratic
in its rows); the CSV is rewritten from the records at the start and end of a run (compact). A
run killed at any moment leaves the CSV of its start plus the log of the rows it finished, which
read_summary reads together (a torn last line, the row being written, is skipped).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

from ..files import MAX_TABLE_BYTES, atomic_write, read_regular

SUMMARY_NAME = "summary.csv"
SUMMARY_LOG = "summary.log.jsonl"
OK, FAILED, SKIPPED = "ok", "failed", "skipped"
FIELDS = ("id", "status", "seconds", "outputs", "error")
ERROR_CHARS = 300


@dataclass
class Record:
    id: str
    status: str = SKIPPED
    seconds: float | None = None
    outputs: list[str] = field(default_factory=list)  # paths relative to --out
    error: str = ""
    scores: list[float] = field(default_factory=list)
    digest: str = ""  # the job's digest when it ran: a changed row is not "done"


def one_line(text: str, limit: int = ERROR_CHARS) -> str:
    """An error message for a CSV cell and a terminal line: whitespace folded, cut at `limit`."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_summary(path: Path) -> dict[str, Record]:
    """The records of earlier runs: the CSV, then the rows its log adds (none when unreadable)."""
    records = _read_csv(path)
    records.update(_read_log(path.with_name(SUMMARY_LOG)))
    return records


def _read_log(path: Path) -> dict[str, Record]:
    try:
        data = read_regular(path, MAX_TABLE_BYTES, "summary log")
    except (OSError, ValueError):
        return {}
    names = {f.name for f in dataclasses.fields(Record)}
    records = {}
    for line in data.splitlines():
        try:
            item = json.loads(line)
            record = Record(**{k: v for k, v in item.items() if k in names})
        except (ValueError, TypeError, AttributeError):
            continue  # the line a kill tore in half
        records[record.id] = record  # a later line is a later run of the row
    return records


def _read_csv(path: Path) -> dict[str, Record]:
    try:
        text = read_regular(path, MAX_TABLE_BYTES, "summary").decode("utf-8")
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except (OSError, csv.Error, ValueError):
        return {}
    records = {}
    for row in rows:
        if not row.get("id"):
            continue
        try:
            seconds = float(row["seconds"]) if row.get("seconds") else None
            scores = [float(s) for s in (row.get("scores") or "").split(";") if s]
        except ValueError:
            continue  # a hand-edited row we cannot read is simply run again
        records[row["id"]] = Record(
            row["id"], row.get("status") or SKIPPED, seconds,
            [o for o in (row.get("outputs") or "").split(";") if o], row.get("error") or "", scores,
            row.get("digest") or "",
        )
    return records


def write_summary(path: Path, records: list[Record], durable: bool = False) -> None:
    """Rewrite the whole summary atomically: a kill at any moment leaves the last complete one."""
    fields = list(FIELDS)
    if any(r.scores for r in records):  # only workflows with a score node have scores
        fields.append("scores")
    fields.append("digest")

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            for r in records:
                w.writerow({
                    "id": r.id, "status": r.status,
                    "seconds": "" if r.seconds is None else f"{r.seconds:.2f}",
                    "outputs": ";".join(r.outputs), "error": r.error,
                    "scores": ";".join(f"{s:.6g}" for s in r.scores), "digest": r.digest,
                })

    atomic_write(path, write, durable=durable)


class SummaryLog:
    """The summary of a running batch: rows appended to SUMMARY_LOG as they finish, folded into the
    CSV by compact()."""

    def __init__(self, summary_path: Path) -> None:
        self.csv_path = summary_path
        self.path = summary_path.with_name(SUMMARY_LOG)
        self._file: BinaryIO | None = None

    def append(self, record: Record) -> None:
        if self._file is None:
            self._file = open(self.path, "ab")
            if self._file.tell():  # a log compact() could not fold in: never glue onto a torn line
                self._file.write(b"\n")
        line = json.dumps(dataclasses.asdict(record), ensure_ascii=False) + "\n"
        self._file.write(line.encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())  # a power cut, not only a kill, keeps the finished row

    def compact(self, records: list[Record]) -> None:
        """Write the CSV from `records` (the log's rows among them), then drop the log. Killed in
        between, the log is read again on top of the new CSV: the same records."""
        self.close()
        write_summary(self.csv_path, records, durable=True)
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """A bar with ETA redrawn in place on a terminal; one plain line per row otherwise (logs, CI)."""

    WIDTH = 24

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.workers = 1  # rows running at once (Ray workers): then rows overlap in time
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.total, self.done, self.ok, self.failed = total, 0, 0, 0
        self.started = time.monotonic()
        self._mark = self.started  # when the previous row was finished
        self.spent = 0.0  # seconds the finished rows took, everything per row included
        self.current = ""
        self._drawn = 0.0

    def eta(self) -> str:
        if not self.done:
            return "--:--"
        return _clock(self.spent / self.done * (self.total - self.done))

    def note(self, message: str) -> None:
        """A message line; on a terminal it goes above the bar, which is redrawn."""
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(message + "\n")
        if self.tty and self.current:
            self.draw(force=True)
        self.stream.flush()

    def start_row(self, job_id: str) -> None:
        if self.done == 0 and not self.current:
            # The clock starts with the rows, not the server start-up.
            self.started = self._mark = time.monotonic()
        self.current = job_id
        self.draw(force=True)

    def draw(self, force: bool = False) -> None:
        """Redraw the bar (terminal only; at most a few times a second while a row runs)."""
        now = time.monotonic()
        if not self.tty or (not force and now - self._drawn < 0.5):
            return
        self._drawn = now
        filled = int(self.WIDTH * self.done / max(self.total, 1))
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        row = f"  row {self.current}" if self.current else ""
        self.stream.write(f"\r\x1b[K[{bar}] {self.done}/{self.total}  ok {self.ok}  failed {self.failed}  "
                          f"{_clock(now - self.started)} elapsed  ETA {self.eta()}{row}"[:200])
        self.stream.flush()

    def finish_row(self, record: Record) -> None:
        self.done += 1
        self.ok += record.status == OK
        self.failed += record.status == FAILED
        # The wall time since the previous row covers all per-row work (the row, its log line,
        # this display), which the row's own seconds leave out.
        now = time.monotonic()
        # Rows running side by side each take longer than the wall time between them: count that.
        own = record.seconds or 0.0 if self.workers == 1 else 0.0
        self.spent += max(own, now - self._mark)
        self._mark = now
        self.current = ""
        line = f"[{self.done}/{self.total}] {record.id}: {record.status} in {record.seconds or 0:.1f}s"
        if record.error:
            line += f": {record.error}"
        if self.tty and record.status == OK:
            self.draw(force=True)  # successes only move the bar; the rest earns a line
        else:
            self.note(line if self.tty else f"{line}  (ETA {self.eta()})")

    def close(self) -> None:
        if self.tty:
            self.current = ""
            self.draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
