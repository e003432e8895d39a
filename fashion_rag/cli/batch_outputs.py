"""A finished row's results: its images fetched into OUT/<id>/, and the scores a score node reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .comfy_server import ComfyClient

# The UI key a score node puts its ranking under: a list of dicts with at least "score".
SCORES_KEY = "fashion_rag_scores"


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

    Written into a hidden folder first and renamed into place, so OUT/<id> never holds a mix of
    an old run's files and a half-fetched new one."""
    images = output_images(workflow, entry)
    labels = {nid: _label(workflow, nid) for nid in images}
    taken = list(labels.values())
    partial = out / f".{job_id}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
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
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return [f"{job_id}/{n}" for n in names], [float(s["score"]) for s in scores]
