"""`fashion-rag batch` at the edges its other tests leave out, all without a server (fast): the
job table's rarer columns and rows, the summary CSV's number formats and hand-edited rows, the
progress lines and bar, and the run loop's resume and exit status where no server is reachable
(a closed port: the command must decide from the summary alone, or fail with status 2).

Expected values are written out by hand. Each test names the mistakes it was written to catch
(planted one at a time in fashion_rag/cli; each made the test fail).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import pytest

from fashion_rag.cli import main
from fashion_rag.cli.batch_jobs import JobError, convert, map_columns, read_jobs
from fashion_rag.cli.batch_report import Progress, Record, read_summary, write_summary

NO_SERVER = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection is refused at once


def _workflow() -> dict:
    return {
        "1": {"class_type": "FashionRAGTextGarmentRetrieve",
              "inputs": {"text": "a red top", "k": 2, "category": "any"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "person.png"}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def _read(tmp_path: Path, rows: list[list[str]]):
    return read_jobs(_write_csv(tmp_path / "jobs.csv", rows), _workflow())


# --- the job table ------------------------------------------------------------------------------

def test_job_table_rows_ids_and_headers_at_their_edges(tmp_path):
    """Mutations caught in batch_jobs: a row with one cell too many accepted (its extra cell
    silently dropped: `len(row) > len(headers) + 1`); that message without its line number; a
    row of blanks (cells of spaces) taken for a job (`any(r)` for `any(c.strip() ...)`); an id
    of exactly 100 characters refused (`>= 100`); the ids `comfyui.log` / `comfyui-workers` (the
    run's own files in the output folder) allowed; a header appearing twice accepted (the
    later column silently winning)."""
    table = _read(tmp_path, [["id", "k"], ["a", "1"], [" ", "  "], [], ["b", "2"]])
    assert [(j.id, j.line, j.cells) for j in table.jobs] == [("a", 2, {"k": "1"}), ("b", 5, {"k": "2"})]

    with pytest.raises(JobError, match=r"line 3: 3 cells for 2 columns"):
        _read(tmp_path, [["id", "k"], ["a", "1"], ["b", "2", "extra"]])

    long_id = "x" * 100
    assert _read(tmp_path, [["id", "k"], [long_id, "1"]]).jobs[0].id == long_id
    with pytest.raises(JobError, match="cannot be a folder name"):
        _read(tmp_path, [["id", "k"], ["x" * 101, "1"]])
    for own_file in ("comfyui.log", "ComfyUI-Workers"):
        with pytest.raises(JobError, match=rf"line 2: id '{own_file}' cannot be a folder name"):
            _read(tmp_path, [["id", "k"], [own_file, "1"]])

    with pytest.raises(JobError, match="a column header appears twice: id, k, k"):
        _read(tmp_path, [["id", "k", "k"], ["a", "1", "2"]])


def test_person_aliases_and_yes_no_cells():
    """Mutations caught in batch_jobs: the documented alias `person_image` not recognised; two
    LoadImage nodes both titled "person" resolved to the first (`if titled:` for exactly one)
    instead of refused as ambiguous; "yes" not read as true for a boolean input."""
    wf = _workflow()
    assert map_columns(wf, ["person_image"])[0].targets == (("4", "image"),)
    assert map_columns(wf, ["Person_Image"])[0].targets == (("4", "image"),)
    wf["4"]["_meta"] = {"title": "person"}
    wf["6"] = {"class_type": "LoadImage", "inputs": {"image": "p2.png"}, "_meta": {"title": "Person 2"}}
    with pytest.raises(JobError, match="'person' is ambiguous: LoadImage nodes 4, 6"):
        map_columns(wf, ["person"])
    assert [convert(v, False, "c") for v in ("yes", "YES", "no")] == [True, True, False]



def test_a_same_size_replacement_photo_is_a_changed_row(tmp_path):
    """A photo replaced by another of the very same size (a retouched JPEG often is) is told apart
    by its modification time (here 1 ms later). Mutation caught in batch_jobs: the file stamp of
    the digest holding the size alone (the replaced photo's row then never ran again)."""
    photo = tmp_path / "me.png"
    photo.write_bytes(b"1")
    os.utime(photo, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    rows = [["id", "person"], ["a", "me.png"]]
    before = _read(tmp_path, rows).jobs[0].digest
    photo.write_bytes(b"2")
    os.utime(photo, ns=(1_700_000_000_001_000_000, 1_700_000_000_001_000_000))
    assert _read(tmp_path, rows).jobs[0].digest != before

# --- the summary CSV ----------------------------------------------------------------------------

def test_summary_numbers_and_hand_edited_rows(tmp_path):
    """Mutations caught in batch_report: seconds written with one decimal (`.1f`: 1.25 -> "1.2");
    scores cut to 3 significant digits (`.3g`: 0.123456 -> "0.123"); a row whose status cell was
    emptied read as ok instead of skipped (so never run again); a row with an unreadable seconds
    cell kept (with its status ok: never run again) instead of dropped."""
    path = tmp_path / "summary.csv"
    write_summary(path, [Record("a", "ok", 1.25, ["a/x.png"], "", [0.123456, 2.0], "d")])
    row = next(csv.DictReader(path.open()))
    assert (row["seconds"], row["scores"]) == ("1.25", "0.123456;2")
    assert read_summary(path)["a"] == Record("a", "ok", 1.25, ["a/x.png"], "", [0.123456, 2.0], "d")

    _write_csv(path, [["id", "status", "seconds", "outputs", "error", "digest"],
                      ["blank", "", "1.0", "blank/x.png", "", "d1"],
                      ["edited", "ok", "about 3", "edited/x.png", "", "d2"],
                      ["fine", "ok", "3", "fine/x.png", "", "d3"]])
    back = read_summary(path)
    assert sorted(back) == ["blank", "fine"]
    assert back["blank"].status == "skipped" and back["fine"].status == "ok"


# --- progress -----------------------------------------------------------------------------------

class _Terminal(io.StringIO):
    """A text stream that says it is a terminal, to see the bar Progress draws there."""

    def isatty(self) -> bool:
        return True


def _clock(monkeypatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr("fashion_rag.cli.batch_report.time.monotonic", lambda: now[0])
    return now


def test_progress_lines_name_the_error_and_count_the_time_between_rows(monkeypatch, capsys):
    """Mutations caught in batch_report: a failed row's line without its error; the clock
    restarted at every row (`if not self.current:`), which leaves the time between rows (summary,
    uploads) out of the ETA: rows of 4 s each with 2 s between them leave 1 row at 4 s, not 3 s."""
    now = _clock(monkeypatch)
    progress = Progress(3, sys.stderr)
    progress.start_row("a")
    now[0] = 104.0
    progress.finish_row(Record("a", "failed", 3.5, error="SaveImage (node 5) failed: disk full"))
    now[0] = 106.0
    progress.start_row("b")
    now[0] = 108.0
    progress.finish_row(Record("b", "ok", 1.0))
    assert capsys.readouterr().err == (
        "[1/3] a: failed in 3.5s: SaveImage (node 5) failed: disk full  (ETA 0:08)\n"
        "[2/3] b: ok in 1.0s  (ETA 0:04)\n")


def test_progress_bar_on_a_terminal(monkeypatch):
    """Mutation caught in batch_report: the bar filled one row ahead (`self.done + 1`): a quarter
    of it before any row finished."""
    now = _clock(monkeypatch)
    term = _Terminal()
    progress = Progress(4, term)
    progress.start_row("a")
    now[0] = 110.0
    progress.finish_row(Record("a", "ok", 10.0))
    progress.close()
    frames = term.getvalue().split("\r\x1b[K")
    assert frames == ["",
                      "[------------------------] 0/4  ok 0  failed 0  0:00 elapsed  ETA --:--  row a",
                      "[######------------------] 1/4  ok 1  failed 0  0:10 elapsed  ETA 0:30",
                      "[######------------------] 1/4  ok 1  failed 0  0:10 elapsed  ETA 0:30\n"]


# --- the run loop, no server reachable ----------------------------------------------------------

def _batch_files(tmp_path: Path) -> tuple[Path, Path, Path, dict]:
    wf = tmp_path / "workflow.json"
    wf.write_text(json.dumps(_workflow()))
    jobs = _write_csv(tmp_path / "jobs.csv", [["id", "text"], ["a", "a blue coat"], ["b", "a green dress"]])
    digests = {j.id: j.digest for j in read_jobs(jobs, _workflow()).jobs}  # to write a past run's summary
    return wf, jobs, tmp_path / "out", digests


def _batch(wf: Path, jobs: Path, out: Path, capsys) -> tuple[int, str]:
    code = main(["batch", "--workflow", str(wf), "--jobs", str(jobs), "--out", str(out),
                 "--server", NO_SERVER])
    return code, capsys.readouterr().err


def test_every_row_done_needs_no_server(tmp_path, capsys):
    """Both rows ran ok before and their outputs are there: nothing to do, exit 0 at once, no
    server asked. Mutation caught in batch.py: the `if not todo` early return dropped (the
    command then connects to, or starts, a ComfyUI for nothing: here exit 2)."""
    wf, jobs, out, digests = _batch_files(tmp_path)
    for row in "ab":
        (out / row).mkdir(parents=True)
        (out / row / "x.png").write_bytes(b"png")
    write_summary(out / "summary.csv",
                  [Record(r, "ok", 1.0, [f"{r}/x.png"], "", [], digests[r]) for r in "ab"])
    code, err = _batch(wf, jobs, out, capsys)
    assert code == 0, err
    assert err == f"batch: 2 of 2 rows already done ({out / 'summary.csv'}): not run again\n"


def test_unreachable_server_exits_2_and_keeps_the_earlier_records(tmp_path, capsys):
    """Row a ran ok but one of its two outputs is gone; row b failed before. Both are to run
    again, the server does not answer: exit 2, and the summary still says b failed (with its
    error) and a is to run. Mutations caught in batch.py: a row counted done when any (not all)
    of its outputs is there; an earlier failed row not run again (only skipped rows in the to-do
    list: exit 1 without a server); the earlier failure forgotten (shown as skipped); a setup
    failure (no server) exiting 1 instead of 2."""
    wf, jobs, out, digests = _batch_files(tmp_path)
    (out / "a").mkdir(parents=True)
    (out / "a" / "x.png").write_bytes(b"png")
    write_summary(out / "summary.csv", [Record("a", "ok", 1.0, ["a/x.png", "a/y.png"], "", [], digests["a"]),
                                        Record("b", "failed", 2.0, [], "out of memory", [], digests["b"])])
    code, err = _batch(wf, jobs, out, capsys)
    assert code == 2, err
    assert "already done" not in err and f"batch: no ComfyUI answers at {NO_SERVER}" in err, err
    back = read_summary(out / "summary.csv")
    assert {r: (back[r].status, back[r].error) for r in "ab"} == {"a": ("skipped", ""),
                                                                   "b": ("failed", "out of memory")}
