"""What `fashion-rag batch` reports: the summary CSV (also its resume record) and the progress bar."""

from __future__ import annotations

import csv
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ..files import atomic_write

SUMMARY_NAME = "summary.csv"
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
    """The records of an earlier run (none when there is no readable summary)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
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


def write_summary(path: Path, records: list[Record]) -> None:
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

    atomic_write(path, write)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """A bar with ETA redrawn in place on a terminal; one plain line per row otherwise (logs, CI)."""

    WIDTH = 24

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.total, self.done, self.ok, self.failed = total, 0, 0, 0
        self.started = time.monotonic()
        self.row_seconds: list[float] = []
        self.current = ""
        self._drawn = 0.0

    def eta(self) -> str:
        if not self.row_seconds:
            return "--:--"
        mean = sum(self.row_seconds) / len(self.row_seconds)
        return _clock(mean * (self.total - self.done))

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
            self.started = time.monotonic()  # the clock starts with the rows, not the server start-up
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
        self.row_seconds.append(record.seconds or 0.0)
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
