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
import tempfile
from pathlib import Path

import pytest

from fashion_rag.cli import main
from fashion_rag.cli.batch_jobs import JobError, build_prompt, convert, load_workflow, map_columns, read_jobs
from fashion_rag.cli.batch_outputs import (
    RowFolderError,
    _label,
    check_row_folder,
    output_images,
    read_scores,
    sweep_partials,
)
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


def _bar(monkeypatch, rows: int) -> tuple[list[float], _Terminal, Progress]:
    """The clock at 100 s (set now[0] to move it), a terminal, and a bar of `rows` rows on it."""
    term = _Terminal()
    return _clock(monkeypatch), term, Progress(rows, term)


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
    now, term, progress = _bar(monkeypatch, 4)
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


# --- the job table: columns, ids, headers and digests the tests above leave out ------------------

def test_class_columns_skip_links_and_bad_headers_are_counted_from_1():
    """Mutations caught in batch_jobs: a ClassType.input column also setting a node of that type
    where the input is a link (the row's cell would replace the graph's wiring); the list of
    settable inputs cut with '...' at exactly 30 (`>= 30`) instead of past 30; a header-less
    column numbered from 0 ("column 1" for the second column)."""
    wf = {"1": {"class_type": "X", "inputs": {"text": "a"}},
          "2": {"class_type": "X", "inputs": {"text": ["1", 0]}}}
    assert map_columns(wf, ["X.text"])[0].targets == (("1", "text"),)

    thirty = ", ".join(f"i{n:02d}" for n in range(30))  # i00, ..., i29
    wf = {"1": {"class_type": "Y", "inputs": {f"i{n:02d}": n for n in range(30)}}}
    with pytest.raises(JobError) as err:
        map_columns(wf, ["nope"])
    assert f"'nope': no node has an input 'nope' (settable: {thirty})" in str(err.value)
    wf["1"]["inputs"]["i30"] = 30
    with pytest.raises(JobError) as err:
        map_columns(wf, ["nope"])
    assert f"(settable: {thirty}, ...)" in str(err.value) and "i30" not in str(err.value)

    with pytest.raises(JobError, match="column 2 has no header"):
        map_columns(_workflow(), ["id", "", "k"])


def test_ids_hidden_or_with_control_characters_a_bom_and_spaced_headers(tmp_path):
    """Mutations caught in batch_jobs: an id with a leading dot accepted (a hidden row folder, and
    one named like the batch's own '.<id>.<8>.partial' folders); an id holding a control character
    (a tab, \\x1f) accepted; the job table read as plain utf-8 (a spreadsheet's byte-order mark
    then glued to the first header: '\\ufeffid' matches no input); headers not stripped (' k ')."""
    for bad in (".hidden", "a\tb", "a\x1fb"):
        with pytest.raises(JobError, match=r"line 2: id .* cannot be a folder name"):
            _read(tmp_path, [["id", "k"], [bad, "1"]])
    ok = _read(tmp_path, [["id", "k"], ["v1.2", "1"], ["a b", "2"]])  # an inner dot, a space (\x20)
    assert [j.id for j in ok.jobs] == ["v1.2", "a b"]

    (tmp_path / "jobs.csv").write_bytes(b"\xef\xbb\xbfid,k\r\na,1\r\n")  # Excel's "CSV UTF-8"
    table = read_jobs(tmp_path / "jobs.csv", _workflow())
    assert [(j.id, j.cells) for j in table.jobs] == [("a", {"k": "1"})]

    table = _read(tmp_path, [[" id ", " k "], ["a", "1"]])
    assert [(j.id, j.cells) for j in table.jobs] == [("a", {"k": "1"})]


def test_a_changed_workflow_or_a_replaced_home_photo_is_a_changed_row(tmp_path, monkeypatch):
    """Mutations caught in batch_jobs: the workflow left out of a row's digest (a resumed run with
    an edited workflow would keep every earlier row); a '~/...' cell stamped without expanding
    the home folder (no file found: the replaced photo's row never runs again)."""
    rows = [["id", "text"], ["a", "a blue coat"]]
    path = _write_csv(tmp_path / "jobs.csv", rows)
    same = read_jobs(path, _workflow()).jobs[0].digest
    assert read_jobs(path, _workflow()).jobs[0].digest == same
    edited = _workflow()
    edited["1"]["inputs"]["k"] = 3  # a setting no column touches
    assert read_jobs(path, edited).jobs[0].digest != same

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (home / "me.png").write_bytes(b"1")
    rows = [["id", "person"], ["a", "~/me.png"]]
    before = _read(tmp_path, rows).jobs[0].digest
    (home / "me.png").write_bytes(b"22")
    assert _read(tmp_path, rows).jobs[0].digest != before


class _NoSuchFile(JobError):
    """A file cell's own error (as batch_files.FileCellError is)."""


def test_a_file_cells_error_names_its_row_and_column_and_keeps_its_type(tmp_path):
    """Mutation caught in batch_jobs: build_prompt re-raising file_value's JobError as it is (the
    summary's error then says 'no file me.png' without the row or the column)."""
    table = _read(tmp_path, [["id", "person"], ["a", "me.png"]])
    asked = []

    def uploaded(target, value):
        asked.append((target, value))
        return f"uploads/{value}"

    prompt = build_prompt(_workflow(), table, table.jobs[0], uploaded)
    assert asked == [(("4", "image"), "me.png")] and prompt["4"]["inputs"]["image"] == "uploads/me.png"

    def missing(target, value):
        raise _NoSuchFile(f"no file {value}")

    with pytest.raises(_NoSuchFile, match=r"^row 'a', column 'person': no file me\.png$"):
        build_prompt(_workflow(), table, table.jobs[0], missing)


@pytest.mark.parametrize("data", [{}, {"1": {"class_type": "SaveImage", "inputs": {}}, "2": "oops"},
                                  {"1": {"class_type": "SaveImage", "inputs": {}}, "2": {"inputs": {}}}],
                         ids=["empty", "a-string-node", "a-node-without-class_type"])
def test_an_empty_or_partly_broken_workflow_is_refused(tmp_path, data):
    """Mutations caught in batch_jobs: an empty workflow ({}) accepted (every row would queue an
    empty prompt); a workflow accepted when any (not every) node has a class_type (the next
    step then fails with a TypeError or KeyError instead of this message)."""
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(data))
    with pytest.raises(JobError, match="is not an API-format workflow"):
        load_workflow(path)


# --- row folders and the images a row keeps (batch_outputs), without a server --------------------

def test_a_marker_for_another_row_is_not_this_rows_folder(tmp_path):
    """Mutation caught in batch_outputs: any marker accepted (`"row" in data`), whatever row it
    names: OUT/b, made by batch for row a, would be replaced by row b's images."""
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / ".fashion_rag_batch").write_text(json.dumps({"row": "a"}))
    with pytest.raises(RowFolderError, match="was not made by fashion-rag batch for row 'b'"):
        check_row_folder(tmp_path, "b")
    check_row_folder(tmp_path, "absent")  # no folder yet: fine


def test_sweep_removes_only_the_partial_folders_batch_made(tmp_path):
    """Half-fetched row folders named as tempfile.mkdtemp names them (8 random characters) are
    removed when marked for their row or empty; anything else is left. Mutations caught in
    batch_outputs: the partial-name pattern not matching mkdtemp's 8 characters (`{6}`: a killed
    run's folders are never swept); every partial-named folder removed, marked or not (a user's
    folder with files deleted)."""
    out = tmp_path / "out"
    out.mkdir()
    ours = Path(tempfile.mkdtemp(prefix=".r1.", suffix=".partial", dir=out))
    (ours / ".fashion_rag_batch").write_text(json.dumps({"row": "r1"}))
    (ours / "result.png").write_bytes(b"png")
    empty = Path(tempfile.mkdtemp(prefix=".r2.", suffix=".partial", dir=out))
    users = out / ".r3.abcdefgh.partial"  # named like one, but not marked and not empty
    users.mkdir()
    (users / "keep.txt").write_text("mine")
    other = Path(tempfile.mkdtemp(prefix=".r4.", suffix=".partial", dir=out))
    (other / ".fashion_rag_batch").write_text(json.dumps({"row": "r9"}))  # marked for another row
    (other / "x.png").write_bytes(b"png")
    seven = out / ".r5.abcdefg.partial"  # 7 characters: not a name mkdtemp gives
    seven.mkdir()
    (out / "r6").mkdir()  # a row folder
    sweep_partials(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".r3.abcdefgh.partial", other.name, ".r5.abcdefg.partial", "r6"])
    assert not ours.exists() and not empty.exists()
    sweep_partials(tmp_path / "missing")  # no output folder yet: nothing to do


def test_kept_images_their_order_labels_and_scores():
    """output_images, _label and read_scores on one history entry. Mutations caught in
    batch_outputs: node ids that are not numbers ordered first (`(0, id)`) instead of after the
    numbered ones; PreviewImage's temp images dropped (only type "output" kept); the label taken
    from the prefix's first folder ("a" for "a/b/result"); plain-number scores ignored."""
    workflow = {
        "10": {"class_type": "SaveImage", "inputs": {"filename_prefix": "a/b/result"}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "fashion_rag/"}},
        "x": {"class_type": "PreviewImage", "inputs": {}},
        "12": {"class_type": "PreviewImage", "inputs": {}},
        "3": {"class_type": "FashionRAGMaskPreview", "inputs": {}},
        "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": " / "}},
    }
    entry = {"outputs": {
        "x": {"images": [{"filename": "p.png", "type": "temp"}]},
        "12": {"images": [{"filename": "q.png", "type": "temp"}, {"type": "temp"}, "junk"]},
        "3": {"images": [{"filename": "m.png", "type": "temp"}]},
        "10": {"images": [{"filename": "r.png", "type": "output"}], "fashion_rag_scores": [3]},
        "9": {"images": [{"filename": "s.png", "type": "output"}],
              "fashion_rag_scores": [{"score": 0.5, "garment": "g1"}, 0.25, {"score": "high"}, "x"]},
        "2": {"images": []},
    }}
    kept = output_images(workflow, entry)
    assert list(kept) == ["9", "10", "12", "x"]
    assert kept["12"] == [{"filename": "q.png", "type": "temp"}]
    assert kept["x"] == [{"filename": "p.png", "type": "temp"}]
    assert [_label(workflow, n) for n in ("10", "9", "2", "12", "77")] == [
        "result", "fashion_rag", "SaveImage_2", "PreviewImage_12", "node_77"]
    assert read_scores(entry) == [{"node": "9", "score": 0.5, "garment": "g1"}, {"node": "9", "score": 0.25},
                                  {"node": "10", "score": 3}]


# --- the summary CSV and the progress display, the remaining edges -------------------------------

def test_summary_without_scores_zero_seconds_and_a_row_without_id(tmp_path):
    """Mutations caught in batch_report: a scores column written when no row has scores; 0.0
    seconds written as an empty cell (`if not r.seconds`: read back as None); a hand-edited row
    with its id emptied read as a record with id ''."""
    path = tmp_path / "summary.csv"
    write_summary(path, [Record("a", "ok", 0.0, ["a/x.png"], "", [], "d")])
    rows = list(csv.reader(path.open()))
    assert rows == [["id", "status", "seconds", "outputs", "error", "digest"],
                    ["a", "ok", "0.00", "a/x.png", "", "d"]]
    assert read_summary(path)["a"].seconds == 0.0

    _write_csv(path, [["id", "status", "seconds", "outputs", "error", "digest"],
                      ["", "ok", "1", "x.png", "", "d"], ["b", "ok", "1", "b/x.png", "", "d"]])
    assert list(read_summary(path)) == ["b"]


def test_eta_with_workers_running_rows_side_by_side(monkeypatch, capsys):
    """Two Ray workers start rows a and b 1 s apart; they finish 10 s later, 1 s apart. The ETA
    counts wall time between finishes (10 s, then 1 s: 11 s for 2 rows, 2 left -> 0:11), not each
    row's own 10 s. Mutations caught in batch_report: the clock restarted by the second row's
    start (`if self.done == 0:`: 9 s for the first row, ETA 0:27); the rows' own seconds counted
    with several workers (ETA 0:20)."""
    now = _clock(monkeypatch)
    progress = Progress(4, sys.stderr)
    progress.workers = 2
    progress.start_row("a")
    now[0] = 101.0
    progress.start_row("b")
    now[0] = 110.0
    progress.finish_row(Record("a", "ok", 10.0))
    now[0] = 111.0
    progress.finish_row(Record("b", "ok", 10.0))
    assert capsys.readouterr().err == ("[1/4] a: ok in 10.0s  (ETA 0:30)\n"
                                       "[2/4] b: ok in 10.0s  (ETA 0:11)\n")


def test_terminal_bar_notes_throttle_and_a_skipped_row(monkeypatch):
    """On a terminal: a note before any row draws no bar; draw() while a row runs redraws at most
    every 0.5 s; a skipped row (no seconds) earns a line and is not counted failed. Mutations
    caught in batch_report: the bar drawn under a note with no row running (`if self.tty:`);
    the 0.5 s throttle dropped; a row that is not ok counted failed (`!= OK`); a skipped row
    only moving the bar (`!= FAILED`); a row without seconds failing the display (`:.1f` of
    None)."""
    now, term, progress = _bar(monkeypatch, 3)
    progress.note("batch: starting ComfyUI")
    progress.start_row("a")
    now[0] = 100.3
    progress.draw()  # 0.3 s after the last frame: not redrawn
    now[0] = 100.6
    progress.draw()
    now[0] = 104.0
    progress.finish_row(Record("a", "skipped"))
    progress.close()
    assert term.getvalue().split("\r\x1b[K") == [
        "",
        "batch: starting ComfyUI\n",
        "[------------------------] 0/3  ok 0  failed 0  0:00 elapsed  ETA --:--  row a",
        "[------------------------] 0/3  ok 0  failed 0  0:01 elapsed  ETA --:--  row a",
        "[1/3] a: skipped in 0.0s\n",
        "[########----------------] 1/3  ok 0  failed 0  0:04 elapsed  ETA 0:08\n"]


def test_a_long_row_id_cuts_the_bar_at_200_characters(monkeypatch):
    """What is written for the bar is cut at 200 characters: the 4 of the line erase ("\\r\\x1b[K"),
    77 before the id here, so 119 of a 150-character id. Mutation caught in batch_report: the
    cut made at 120."""
    _, term, progress = _bar(monkeypatch, 1)
    progress.start_row("y" * 150)
    frame = term.getvalue().split("\r\x1b[K")[1]
    bar = "[------------------------] 0/1  ok 0  failed 0  0:00 elapsed  ETA --:--  row "
    assert frame == bar + "y" * 119
    assert len(frame) == 196


def test_a_64_bit_seed_cell_is_kept_exactly():
    """A whole-number cell past 2**53 (ComfyUI's seeds go to 2**64 - 1) is the number typed, not
    the nearest float: the old code read every int cell through float(), so 2**64 - 1 became
    2**64 (out of KSampler's range) and 123456789012345678 silently became ...680 (another seed).
    Mutation caught in batch_jobs: the exact int() reading dropped (every cell through float)."""
    assert convert("18446744073709551615", 0, "c") == 18446744073709551615  # 2**64 - 1
    assert convert("9007199254740993", 0, "c") == 9007199254740993  # 2**53 + 1
    assert convert("123456789012345678", 0, "c") == 123456789012345678
    assert convert("-7", 0, "c") == -7 and convert("2.0", 0, "c") == 2 and convert("1e3", 0, "c") == 1000
    with pytest.raises(JobError, match=r"c: '3\.5' is not a whole number"):
        convert("3.5", 0, "c")


def test_seed_alias_skips_linked_seeds_and_titles_are_read_from_a_dict_only():
    """Mutations caught in batch_jobs: the `seed` column also setting a seed input that is a link
    (a KSampler fed by a seed node: the cell would cut the graph's wiring); a node's `_meta` read
    as a title whenever it is truthy (a hand-written `"_meta": "person"` then fails with an
    AttributeError instead of being no title)."""
    wf = {"1": {"class_type": "Seed", "inputs": {"seed": 5}},
          "2": {"class_type": "KSampler", "inputs": {"seed": ["1", 0], "steps": 2}}}
    assert map_columns(wf, ["seed"])[0].targets == (("1", "seed"),)

    wf = {"4": {"class_type": "LoadImage", "inputs": {"image": "a.png"}, "_meta": "person"},
          "6": {"class_type": "LoadImage", "inputs": {"image": "b.png"}, "_meta": {"title": "person"}}}
    assert map_columns(wf, ["person"])[0].targets == (("6", "image"),)


def test_a_dangling_link_named_like_a_row_is_not_its_folder(tmp_path):
    """OUT/<id> a symbolic link to nothing: refused like any folder batch did not make (the row
    fails with RowFolderError). Mutation caught in batch_outputs: `final.exists()` for
    `os.path.lexists(final)` (a dangling link looks absent; replacing it later fails with an
    OSError, which stops the whole batch instead of failing the row)."""
    (tmp_path / "r").symlink_to(tmp_path / "nowhere")
    with pytest.raises(RowFolderError, match="already exists and was not made by fashion-rag batch"):
        check_row_folder(tmp_path, "r")


def test_summary_log_lines_that_are_json_but_no_record_are_skipped(tmp_path):
    """A hand-edited summary.log.jsonl: lines that parse as JSON but are no record ({} without an
    id, a list, a number, a string) are skipped like a torn line. Mutation caught in
    batch_report: only ValueError caught (TypeError / AttributeError then stop the batch before
    any row runs)."""
    path = tmp_path / "summary.csv"
    write_summary(path, [Record("a", "failed", 1.0, [], "earlier")])
    (tmp_path / "summary.log.jsonl").write_bytes(
        b'{}\n[1, 2]\n7\n"text"\n{"id": "b", "status": "ok", "seconds": 1.0}\n')
    back = read_summary(path)
    assert back == {"a": Record("a", "failed", 1.0, [], "earlier"), "b": Record("b", "ok", 1.0)}


def test_terminal_bar_floors_its_fill_and_shows_each_new_row_at_once(monkeypatch):
    """Seven rows, two done within half a second: the bar is 6 of 24 filled (24 x 2/7 = 6.86,
    never rounded up: a full bar only when every row is done), and row b is shown as it starts
    even 0.1 s after the last frame. Mutations caught in batch_report: the fill rounded (7 of
    24); start_row's draw throttled like a running row's (row b never shown)."""
    now, term, progress = _bar(monkeypatch, 7)
    progress.start_row("a")
    now[0] = 100.2
    progress.finish_row(Record("a", "ok", 0.2))
    now[0] = 100.3
    progress.start_row("b")
    now[0] = 100.4
    progress.finish_row(Record("b", "ok", 0.1))
    assert term.getvalue().split("\r\x1b[K") == [
        "",
        "[------------------------] 0/7  ok 0  failed 0  0:00 elapsed  ETA --:--  row a",
        "[###---------------------] 1/7  ok 1  failed 0  0:00 elapsed  ETA 0:01",
        "[###---------------------] 1/7  ok 1  failed 0  0:00 elapsed  ETA 0:01  row b",
        "[######------------------] 2/7  ok 2  failed 0  0:00 elapsed  ETA 0:01"]


def test_dotted_node_ids_and_class_names_an_ID_header_and_the_log_as_an_id(tmp_path):
    """Mutations caught in batch_jobs: a NODE_ID.input / ClassType.input header split at its
    first dot (a node id or class name holding a dot then matches nothing); a header 'ID' taken
    for the id column (it is not: read_jobs reads 'id' only, so the ids would silently be row
    numbers; it must be refused as an unknown input); the id 'summary.log.jsonl' allowed (a row
    folder where the run's log of finished rows goes)."""
    wf = {"my.node": {"class_type": "Pack.Loader", "inputs": {"text": "x"}}}
    cols = map_columns(wf, ["my.node.text", "Pack.Loader.text"])
    assert [(c.header, c.targets) for c in cols] == [("my.node.text", (("my.node", "text"),)),
                                                      ("Pack.Loader.text", (("my.node", "text"),))]
    with pytest.raises(JobError, match="'ID': no node has an input 'ID'"):
        map_columns(_workflow(), ["ID", "k"])
    with pytest.raises(JobError, match=r"line 2: id 'Summary\.Log\.jsonl' cannot be a folder name"):
        _read(tmp_path, [["id", "k"], ["Summary.Log.jsonl", "1"]])
