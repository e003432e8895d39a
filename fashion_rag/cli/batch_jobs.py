"""The job table of `fashion-rag batch`: CSV columns -> inputs of an API-format workflow.

Column convention (README, "Batch runs"):

- `id`                 names the row (output folder, summary row); default: the row number.
- `NODE_ID.input`      that input of that one node, e.g. `4.text`.
- `ClassType.input`    that input of every node of that type, e.g. `FashionRAGTextGarmentRetrieve.k`.
- `input`              that input of every node that has it, e.g. `text`, `k`, `category`, `steps`.
- aliases              `person` (or `person_image`): the person's LoadImage `image` (a local file is
                       uploaded); `seed`: every `seed` and `noise_seed` input.
- `#anything`          a note column, ignored.

An empty cell keeps the workflow's value. Where columns overlap, the more specific one wins
(NODE_ID.input over ClassType.input over a plain name). Only values typed into the workflow can be
set, not links; a cell is converted to the type the workflow holds there (int, float, bool, text).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import MAX_JSON_BYTES, MAX_TABLE_BYTES, read_regular

Target = tuple[str, str]  # (node id, input name)

PERSON_ALIASES = ("person", "person_image")
SEED_INPUTS = ("seed", "noise_seed")
# Specificity of a column kind: a higher one overrides a lower one on the same input.
BARE, CLASS, NODE = 0, 1, 2
# Row ids become folder names: no separators, no leading dot, nothing Windows refuses.
_BAD_ID = re.compile(r'[/\\<>:"|?*\x00-\x1f]|^\.|^\s|\s$')
# Files of their own in the output folder.
_RESERVED_IDS = ("summary.csv", "summary.log.jsonl", "comfyui.log", "comfyui-workers")


class JobError(ValueError):
    """A problem with the workflow or the job table, reported before anything runs."""


@dataclass(frozen=True)
class Column:
    header: str
    targets: tuple[Target, ...]
    rank: int


@dataclass
class Job:
    id: str
    line: int  # the row's line in the CSV, for messages
    cells: dict[str, str]  # header -> non-empty cell, for the mapped columns only
    digest: str = ""  # of the workflow and the cells: a changed row is run again on resume


@dataclass
class JobTable:
    path: Path
    columns: list[Column]
    jobs: list[Job] = field(default_factory=list)


def load_workflow(path: Path) -> dict[str, dict]:
    try:
        # A regular file of bounded size: a FIFO or /dev/zero given as the workflow fails at once.
        data = json.loads(read_regular(path, MAX_JSON_BYTES, "workflow").decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise JobError(f"cannot read the workflow {path}: {exc}") from exc
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise JobError(f"{path} is a UI workflow; save it in API format (Workflow → Export (API)).")
    if (not isinstance(data, dict) or not data
            or not all(isinstance(n, dict) and "class_type" in n for n in data.values())):
        raise JobError(f"{path} is not an API-format workflow ({{node id: {{class_type, inputs}}}}).")
    return data


def _settable(node: dict) -> dict[str, Any]:
    # A list value is a link [node id, output index]: the graph's wiring, not a setting.
    return {k: v for k, v in node.get("inputs", {}).items() if not isinstance(v, list)}


def _person_nodes(workflow: dict[str, dict]) -> list[str]:
    loaders = [nid for nid, n in workflow.items() if n["class_type"] == "LoadImage"]
    if len(loaders) > 1:  # several images in: the one titled "person" is the person
        titled = [nid for nid in loaders
                  if "person" in _title(workflow[nid]).casefold()]
        if len(titled) == 1:
            return titled
        raise JobError(f"'person' is ambiguous: LoadImage nodes {', '.join(loaders)}; name one with "
                       "a NODE_ID.image column (e.g. "
                       f"'{loaders[0]}.image') or title it 'person'.")
    return loaders


def _title(node: dict) -> str:
    meta = node.get("_meta")  # API exports carry the node's title there
    return str(meta.get("title", "")) if isinstance(meta, dict) else ""


def map_column(workflow: dict[str, dict], header: str) -> Column:
    """The inputs one header sets; JobError says why a header matches nothing."""
    alias = header.casefold()
    if alias in PERSON_ALIASES:
        nodes = _person_nodes(workflow)
        if not nodes:
            raise JobError(f"'{header}': the workflow has no LoadImage node for the person image")
        return Column(header, tuple((nid, "image") for nid in nodes), BARE)
    if alias == "seed":
        targets = tuple((nid, name) for nid, n in workflow.items() for name in _settable(n)
                        if name in SEED_INPUTS)
        if not targets:
            raise JobError(f"'{header}': no node has a seed or noise_seed input")
        return Column(header, targets, BARE)
    if "." in header:  # split at the last dot: node ids and class names may hold dots, inputs don't
        left, name = header.rsplit(".", 1)
        if left in workflow:
            node = workflow[left]
            _check_input(header, f"node {left} ({node['class_type']})", [node], name)
            return Column(header, ((left, name),), NODE)
        same = {nid: n for nid, n in workflow.items() if n["class_type"] == left}
        if same:
            _check_input(header, f"{left} (node {', '.join(same)})", list(same.values()), name)
            return Column(header, tuple((nid, name) for nid, n in same.items() if name in _settable(n)),
                          CLASS)
        if header not in {name for n in workflow.values() for name in n.get("inputs", {})}:
            raise JobError(f"'{header}': the workflow has no node id '{left}' and no node of type "
                           f"'{left}'")
    targets = tuple((nid, header) for nid, n in workflow.items() if header in _settable(n))
    if not targets:
        _check_input(header, "", list(workflow.values()), header)
    return Column(header, targets, BARE)


def _check_input(header: str, where: str, nodes: list[dict], name: str) -> None:
    """Raise unless some node has `name` as a value; `where` names the nodes ("" for every node)."""
    settable = sorted({k for n in nodes for k in _settable(n)})
    if any(name in _settable(n) for n in nodes):
        return
    if any(name in n.get("inputs", {}) for n in nodes):
        raise JobError(f"'{header}': input '{name}' of {where or 'every node having it'} is a link to "
                       "another node, not a value")
    shown = ", ".join(settable[:30]) + (", ..." if len(settable) > 30 else "")
    what = f"{where} has no input '{name}'" if where else f"no node has an input '{name}'"
    raise JobError(f"'{header}': {what} (settable: {shown or 'none'})")


def map_columns(workflow: dict[str, dict], headers: list[str]) -> list[Column]:
    """Every header mapped, or one JobError listing every bad one (so one fix-up round suffices)."""
    columns, problems = [], []
    for i, header in enumerate(headers):
        if not header:
            problems.append(f"column {i + 1} has no header")
        elif header == "id" or header.startswith("#"):
            continue
        else:
            try:
                columns.append(map_column(workflow, header))
            except JobError as exc:
                problems.append(str(exc))
    seen: dict[tuple[Target, int], str] = {}
    for col in columns:
        for target in col.targets:
            other = seen.setdefault((target, col.rank), col.header)
            if other != col.header:
                problems.append(f"'{other}' and '{col.header}' both set input {target[1]} of node "
                                f"{target[0]}; keep one, or use NODE_ID.input to say which wins")
    if problems:
        raise JobError("\n  ".join(["the job table's columns do not fit the workflow:", *problems]))
    return columns


def read_jobs(path: Path, workflow: dict[str, dict]) -> JobTable:
    path = Path(path)
    try:
        # utf-8-sig: spreadsheets save CSV with a byte-order mark.
        text = read_regular(path, MAX_TABLE_BYTES, "job table").decode("utf-8-sig")
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except (OSError, ValueError, csv.Error) as exc:
        raise JobError(f"cannot read the job table {path}: {exc}") from exc
    lines = [(n, r) for n, r in enumerate(rows, 1) if any(c.strip() for c in r)]
    if not lines:
        raise JobError(f"{path} is empty: it needs a header row and one row per job")
    (_, header_row), body = lines[0], lines[1:]
    headers = [h.strip() for h in header_row]
    if len(set(headers)) != len(headers):
        raise JobError(f"{path}: a column header appears twice: {', '.join(headers)}")
    table = JobTable(path, map_columns(workflow, headers))
    mapped = {c.header for c in table.columns}
    wf_digest = hashlib.sha256(json.dumps(workflow, sort_keys=True).encode()).hexdigest()
    problems, ids = [], {}
    folder, stamps = str(path.parent), {}
    for number, (line, row) in enumerate(body, 1):
        if len(row) > len(headers):
            problems.append(f"line {line}: {len(row)} cells for {len(headers)} columns")
            continue
        cells = dict(zip(headers, (c.strip() for c in row), strict=False))
        job_id = cells.get("id") or str(number)
        if _BAD_ID.search(job_id) or job_id.casefold() in _RESERVED_IDS or len(job_id) > 100:
            problems.append(f"line {line}: id {job_id!r} cannot be a folder name (no / \\ : * ? \" < > |, "
                            "no leading dot or space)")
        if job_id in ids:
            problems.append(f"line {line}: id {job_id!r} also on line {ids[job_id]}")
        ids[job_id] = line
        kept = {h: v for h, v in cells.items() if h in mapped and v}
        # A replaced photo under the same name is a changed row too (size and time, not content:
        # cheap for thousands of rows).
        files = []
        for value in kept.values():
            if value not in stamps:  # a photo many rows share is looked at once
                stamps[value] = _file_stamp(folder, value)
            files.append(stamps[value])
        stamp = json.dumps([wf_digest, kept, files], sort_keys=True)
        digest = hashlib.sha256(stamp.encode()).hexdigest()[:16]
        table.jobs.append(Job(job_id, line, kept, digest))
    if problems:
        raise JobError("\n  ".join([f"{path}:", *problems]))
    if not table.jobs:
        raise JobError(f"{path} has a header but no job rows")
    return table


def _file_stamp(folder: str, value: str) -> list[int] | None:
    try:
        # os.path, not pathlib: called for every cell of up to 100k's of rows, 3x faster.
        st = os.stat(os.path.join(folder, os.path.expanduser(value)))
    except (OSError, ValueError):
        return None
    return [st.st_size, st.st_mtime_ns]


def convert(value: str, current: Any, where: str) -> Any:
    """A CSV cell as the type the workflow holds at that input (ComfyUI checks ranges, options)."""
    if isinstance(current, bool):  # before int: bool is an int
        low = value.casefold()
        if low in ("true", "yes", "1", "on"):
            return True
        if low in ("false", "no", "0", "off"):
            return False
        raise JobError(f"{where}: {value!r} is not true/false")
    if isinstance(current, int):
        try:
            return int(value)  # exact however large: a 64-bit seed is past float's 2**53
        except ValueError:
            pass
        try:
            number = float(value)  # "2.0", "1e3"
        except ValueError:
            number = None
        if number is None or not number.is_integer():
            raise JobError(f"{where}: {value!r} is not a whole number")
        return int(number)
    if isinstance(current, float):
        try:
            return float(value)
        except ValueError:
            raise JobError(f"{where}: {value!r} is not a number") from None
    return value


def build_prompt(workflow: dict[str, dict], table: JobTable, job: Job,
                 file_value: Callable[[Target, str], str] | None = None) -> dict[str, dict]:
    """The workflow with the row's cells set; `file_value` turns a file input's cell into a server
    name (uploading a local file) and may raise JobError. JobError names the column and the row."""
    prompt = copy.deepcopy(workflow)
    for col in sorted(table.columns, key=lambda c: c.rank):  # specific columns last: they win
        value = job.cells.get(col.header)
        if value is None:
            continue
        for nid, name in col.targets:
            where = f"row {job.id!r}, column '{col.header}'"
            try:
                cell = file_value((nid, name), value) if file_value else value
            except JobError as exc:
                raise type(exc)(f"{where}: {exc}") from exc
            prompt[nid]["inputs"][name] = convert(cell, workflow[nid]["inputs"][name], where)
    return prompt
