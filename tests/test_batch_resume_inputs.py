"""`python -m fashion_rag batch` run again after its inputs changed (issue 25): a row whose cells,
person photo or workflow changed since the last run, or whose outputs are gone, runs again; an
unchanged row, or one whose note column alone changed, is not run twice.

Through the suite's real ComfyUI server and the demo index (retrieve -> SaveImage, person ->
garment mask -> SaveImage: about a second a row, no diffusion), the command run in this process.
Which rows ran is read from the server's own history (the batch tags each prompt with its row),
not from the batch's report.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from PIL import Image

from comfy_harness import prompts_per_row
from fashion_rag.cli import main
from fashion_rag.cli.batch_jobs import read_jobs
from fashion_rag.cli.batch_report import read_summary
from tools.demo.catalog import TINY_WEIGHTS_NAME
from tools.demo.person import draw_person, keypoints_json

HEADER = ["id", "text", "category", "person", "#note"]


def _workflow(grow: int = 8) -> dict:
    return {
        "1": {"class_type": "FashionRAGGarmentIndexLoader",
              "inputs": {"index": "demo", "encoder_weights": TINY_WEIGHTS_NAME}},
        "2": {"class_type": "FashionRAGTextGarmentRetrieve",
              "inputs": {"index": ["1", 0], "text": "a red striped top", "k": 1, "category": "any",
                         "mode": "caption", "pin_ids": "", "exclude_ids": ""}},
        "3": {"class_type": "SaveImage",
              "inputs": {"images": ["2", 0], "filename_prefix": "resume/garments"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "unset.png"}},
        "5": {"class_type": "FashionRAGGarmentMask",
              "inputs": {"image": ["4", 0], "category": "upper_body", "keypoints_json": keypoints_json(),
                         "grow": grow, "feather": 0, "person_index": 0, "source_width": 0,
                         "source_height": 0}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 1], "filename_prefix": "resume/mask"}},
    }


def _write(folder: Path, rows: list[list[str]], workflow: dict) -> tuple[Path, Path]:
    with open(folder / "jobs.csv", "w", newline="") as f:
        csv.writer(f).writerows([HEADER, *rows])
    (folder / "workflow.json").write_text(json.dumps(workflow))
    return folder / "workflow.json", folder / "jobs.csv"


def _run(server, workflow: Path, jobs: Path, out: Path, capsys) -> tuple[int, str]:
    """The batch command's exit status and stderr."""
    code = main(["batch", "--workflow", str(workflow), "--jobs", str(jobs), "--out", str(out),
                 "--server", server.url])
    return code, capsys.readouterr().err



def test_changed_inputs_run_again_and_unchanged_rows_do_not(comfy_server, tmp_path, capsys):
    """Mutations caught in fashion_rag/cli: resume ignoring the digest (status ok alone); the
    person files' size/time left out of the digest; the outputs' presence not checked; the
    workflow left out of the digest (failed: yes, each)."""
    person = draw_person()
    for name in ("same", "text", "photo", "gone", "note"):
        person.save(tmp_path / f"{name}.png")
    rows = [["same", "a red striped top", "upper_body", "same.png", ""],
            ["text", "a red striped top", "upper_body", "text.png", ""],
            ["photo", "a red striped top", "upper_body", "photo.png", ""],
            ["gone", "a red striped top", "upper_body", "gone.png", ""],
            ["note", "a red striped top", "upper_body", "note.png", "first note"]]
    workflow, jobs = _write(tmp_path, rows, _workflow())
    out = tmp_path / "out"
    code, err = _run(comfy_server, workflow, jobs, out, capsys)
    assert code == 0, err
    before = read_summary(out / "summary.csv")
    garments = (out / "text" / "garments.png").read_bytes()
    mask = (out / "photo" / "mask.png").read_bytes()

    rows[1][1] = "blue denim trousers"  # a changed cell
    person.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "photo.png")  # replaced in place
    (out / "gone" / "mask.png").unlink()  # an output removed
    rows[4][4] = "an edited note"  # not an input of the workflow
    _write(tmp_path, rows, _workflow())
    code, err = _run(comfy_server, workflow, jobs, out, capsys)
    assert code == 0, err
    assert "2 of 5 rows already done" in err, err
    assert prompts_per_row(comfy_server, jobs) == {"same": 1, "text": 2, "photo": 2, "gone": 2, "note": 1}
    after = read_summary(out / "summary.csv")
    assert all(r.status == "ok" for r in after.values()) and (out / "gone" / "mask.png").is_file()
    assert after["text"].digest != before["text"].digest and after["photo"].digest != before["photo"].digest
    assert after["same"] == before["same"] and after["note"] == before["note"]
    # The rows ran on their new inputs: other garment, mirrored mask.
    assert (out / "text" / "garments.png").read_bytes() != garments
    assert (out / "photo" / "mask.png").read_bytes() != mask

    # The summary now holds the new digests: nothing changed since, nothing would run (the rule
    # run above); a changed workflow changes every row's digest, so every row would run again.
    now = {job.id: job.digest for job in read_jobs(jobs, _workflow()).jobs}
    assert {row: r.digest for row, r in after.items()} == now
    other_workflow = {job.id: job.digest for job in read_jobs(jobs, _workflow(grow=12)).jobs}
    assert all(other_workflow[row] != now[row] for row in now)
