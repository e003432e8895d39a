"""A garment catalog: which image files, under which ids, categories and captions.

Two ways to describe one:
- a folder of images, category from the sub-folder names (`upper_body/`, `tops/`, `dresses/`,
  any word categories.normalize_category knows), caption from a same-named `.txt` beside the
  image if there is one;
- a metadata file (CSV with a header row, or JSON lines) with one row per garment: `id`,
  `image` (path relative to the catalog folder, or absolute), `category`, `caption` (or
  `title`). If the catalog folder holds `metadata.jsonl` or `metadata.csv`, it is used.

Problems (missing files, duplicate ids, rows without an image) are collected, not raised, so
one bad row does not stop a 50k-garment build; the caller reports them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..categories import normalize_category
from ..images import IMAGE_EXTENSIONS

METADATA_NAMES: tuple[str, ...] = ("metadata.jsonl", "metadata.csv")

# Column names accepted in metadata files (first match wins), so Dress Code-style and
# shop-export files work without renaming columns.
_ID_KEYS = ("id", "item_id", "garment_id", "sku")
_IMAGE_KEYS = ("image", "image_path", "path", "file", "filename", "file_name")
_CATEGORY_KEYS = ("category", "cat", "garment_category", "type")
_CAPTION_KEYS = ("caption", "title", "text", "description", "name")


@dataclass(frozen=True)
class CatalogItem:
    id: str
    path: str  # relative to the catalog root, '/'-separated (may start with '../' if outside)
    category: str  # one of categories.CATEGORIES, else the catalog's own text, else ""
    caption: str = ""


@dataclass
class Catalog:
    root: Path
    items: list[CatalogItem]
    problems: list[str] = field(default_factory=list)  # skipped entries, one line each

    def __len__(self) -> int:
        return len(self.items)

    def image_path(self, item: CatalogItem) -> Path:
        return self.root / item.path


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def category_from_folders(rel_path: str) -> str:
    """The canonical category named by the deepest folder that names one, else the parent name."""
    parts = rel_path.split("/")[:-1]
    for part in reversed(parts):
        canonical = normalize_category(part)
        if canonical:
            return canonical
    return parts[-1] if parts else ""


def canonical_or_text(category: str | None) -> str:
    category = (category or "").strip()
    return normalize_category(category) or category


def scan_catalog(root: str | Path, metadata: str | Path | None = None) -> Catalog:
    """Describe the catalog under `root` (see the module docstring); never raises on bad rows."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"Catalog folder {root} does not exist (or is not a folder).")
    if metadata is None:
        metadata = next((root / n for n in METADATA_NAMES if (root / n).is_file()), None)
    if metadata is not None:
        return _from_metadata(root, Path(metadata).expanduser())
    return _from_folder(root)


def _from_folder(root: Path) -> Catalog:
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # skip .git, temp dirs
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                files.append(Path(dirpath, name).relative_to(root).as_posix())
    files.sort()
    ids = _ids_for(files)
    items = []
    for rel, item_id in zip(files, ids, strict=True):
        sidecar = (root / rel).with_suffix(".txt")
        caption = sidecar.read_text(encoding="utf-8", errors="replace").strip() if sidecar.is_file() else ""
        items.append(CatalogItem(item_id, rel, category_from_folders(rel), " ".join(caption.split())))
    return Catalog(root, items, [])


def _ids_for(rel_paths: list[str]) -> list[str]:
    """File stem as id (Dress Code style '013563_1'); the stem-less path where stems collide."""
    stems = [Path(p).stem for p in rel_paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [s if counts[s] == 1 else p.rsplit(".", 1)[0] for s, p in zip(stems, rel_paths, strict=True)]


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"Metadata file {path} does not exist.")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not a JSON object per line ({exc.msg}).") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}.")
            rows.append({str(k).lower(): "" if v is None else str(v) for k, v in row.items()})
        return rows
    reader = csv.DictReader(text.splitlines())
    return [{(k or "").strip().lower(): (v or "") for k, v in row.items()} for row in reader]


def _pick(row: dict[str, str], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        if key in row:
            return row[key].strip()
    return None


def _from_metadata(root: Path, metadata: Path) -> Catalog:
    rows = _read_rows(metadata)
    if rows and _pick(rows[0], _IMAGE_KEYS) is None:
        raise ValueError(
            f"Metadata file {metadata} has no image column; name one of {', '.join(_IMAGE_KEYS)} "
            f"(columns found: {', '.join(rows[0])})."
        )
    items: list[CatalogItem] = []
    problems: list[str] = []
    seen: set[str] = set()
    rels: list[str] = []
    for n, row in enumerate(rows, 1):
        image = _pick(row, _IMAGE_KEYS)
        if not image:
            problems.append(f"{metadata.name} row {n}: no image path, skipped")
            continue
        full = Path(image) if Path(image).is_absolute() else root / image
        if not full.is_file():
            problems.append(f"{metadata.name} row {n}: image {full} not found, skipped")
            continue
        rels.append(Path(os.path.relpath(full, root)).as_posix())
        item_id = _pick(row, _ID_KEYS) or Path(image).stem
        if item_id in seen:
            problems.append(f"{metadata.name} row {n}: duplicate id {item_id!r}, skipped")
            rels.pop()
            continue
        seen.add(item_id)
        category = _pick(row, _CATEGORY_KEYS)
        category = canonical_or_text(category) if category else category_from_folders(rels[-1])
        caption = " ".join((_pick(row, _CAPTION_KEYS) or "").split())
        items.append(CatalogItem(item_id, rels[-1], category, caption))
    return Catalog(root, items, problems)
