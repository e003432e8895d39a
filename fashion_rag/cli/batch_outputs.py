"""A finished row's results: its images fetched into OUT/<id>/, and the scores a score node reported.

OUT may be a folder the user already keeps other things in, so batch replaces or deletes only the
folders it made itself: each row folder carries a MARKER file naming its row, written before the
folder takes its name. A folder named like a row without that marker is never touched; the row
fails instead (RowFolderError).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..files import read_regular
from .comfy_server import ComfyClient

# The UI key a score node puts its ranking under: a list of dicts with at least "score".
SCORES_KEY = "fashion_rag_scores"
MARKER = ".fashion_rag_batch"  # {"row": id} in every row folder batch made
# A row's folder while its images are fetched: ".<id>.<mkdtemp's 8 characters>.partial".
_PARTIAL = re.compile(r"\.(?P<row>.+)\.[a-z0-9_]{8}\.partial")


class RowFolderError(Exception):
    """OUT/<id> exists but batch did not make it for this row: it is left alone, the row fails."""


def _made_for(folder: Path, job_id: str) -> bool:
    try:
        data = json.loads(read_regular(folder / MARKER, 4096, "marker"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("row") == job_id


def check_row_folder(out: Path, job_id: str) -> None:
    """Raise RowFolderError unless OUT/<id> is absent or a folder batch made for this very row
    (a symlink never is: replacing it would delete wherever it points)."""
    final = out / job_id
    if not os.path.lexists(final):
        return
    if final.is_symlink() or not final.is_dir() or not _made_for(final, job_id):
        raise RowFolderError(f"{final} already exists and was not made by fashion-rag batch for row "
                             f"{job_id!r}; it was left as it is: move it away, or use another --out")


def sweep_partials(out: Path) -> None:
    """Remove the half-fetched row folders a killed run left (only ones batch made: marked, or
    still empty because the kill came before the marker)."""
    try:
        entries = list(os.scandir(out))
    except OSError:
        return
    for entry in entries:
        match = _PARTIAL.fullmatch(entry.name)
        if not match or not entry.is_dir(follow_symlinks=False):
            continue
        folder = Path(entry.path)
        if _made_for(folder, match["row"]):
            shutil.rmtree(folder, ignore_errors=True)
        else:
            try:
                folder.rmdir()  # empty only; anything else is not provably ours
            except OSError:
                pass


def _node_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)


def _label(workflow: dict[str, dict], node_id: str) -> str:
    """SaveImage "fashion_rag/result" -> "result"; a node without a prefix -> "<class>_<id>"."""
    node = workflow.get(node_id, {})
    prefix = node.get("inputs", {}).get("filename_prefix")
    if isinstance(prefix, str) and prefix.strip("/ "):
        return prefix.strip("/ ").rsplit("/", 1)[-1]
    return f"{node.get('class_type', 'node')}_{node_id}"


def output_images(workflow: dict[str, dict], entry: dict) -> dict[str, list[dict]]:
    """Node id -> the images to keep: saved ones (type "output", SaveImage and packs' savers) and
    PreviewImage's. Other nodes' UI previews (the retrieve gallery, mask previews) are temp files."""
    found = {}
    for node_id, ui in sorted(entry.get("outputs", {}).items(), key=lambda kv: _node_order(kv[0])):
        preview = workflow.get(node_id, {}).get("class_type") == "PreviewImage"
        images = [im for im in ui.get("images") or [] if isinstance(im, dict) and "filename" in im
                  and (im.get("type") == "output" or preview)]
        if images:
            found[node_id] = images
    return found


def read_scores(entry: dict) -> list[dict[str, Any]]:
    """Every entry of every node's `fashion_rag_scores`, tagged with its node id."""
    scores = []
    for node_id, ui in sorted(entry.get("outputs", {}).items(), key=lambda kv: _node_order(kv[0])):
        for item in ui.get(SCORES_KEY) or []:
            if isinstance(item, dict) and isinstance(item.get("score"), int | float):
                scores.append({"node": node_id, **item})
            elif isinstance(item, int | float):
                scores.append({"node": node_id, "score": item})
    return scores


def save_outputs(client: ComfyClient, workflow: dict[str, dict], entry: dict, out: Path,
                 job_id: str) -> tuple[list[str], list[float]]:
    """Fetch the row's images (via /view) into OUT/<id>/; returns (paths relative to OUT, scores).

    Written into a hidden folder of its own first and renamed into place, so OUT/<id> never holds
    a mix of an old run's files and a half-fetched new one. RowFolderError: OUT/<id> is not ours."""
    images = output_images(workflow, entry)
    labels = {nid: _label(workflow, nid) for nid in images}
    taken = list(labels.values())
    check_row_folder(out, job_id)  # before fetching anything, and again before replacing
    out.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{job_id}.", suffix=".partial", dir=out))
    try:
        # mkdtemp's 0700 would hide the outputs from other users, unlike a plain mkdir.
        partial.chmod(0o755)
        # The marker first: a half-fetched folder a kill leaves is provably ours (sweep_partials).
        (partial / MARKER).write_text(json.dumps({"row": job_id}))
        names = []
        for nid, entries in images.items():
            label = labels[nid] if taken.count(labels[nid]) == 1 else f"{labels[nid]}_{nid}"
            for i, image in enumerate(entries, 1):
                suffix = Path(image["filename"]).suffix or ".png"
                name = f"{label}{suffix}" if len(entries) == 1 else f"{label}_{i}{suffix}"
                (partial / name).write_bytes(client.view(image))
                names.append(name)
        scores = read_scores(entry)
        if scores:
            (partial / "scores.json").write_text(json.dumps(scores, indent=1, default=str))
            names.append("scores.json")
        final = out / job_id
        check_row_folder(out, job_id)
        if os.path.lexists(final):
            shutil.rmtree(final)  # made by batch for this row: checked just above
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return [f"{job_id}/{n}" for n in names], [float(s["score"]) for s in scores]
