"""A garment catalog: which image files, under which ids, categories and captions.

Either a folder of images (category from the sub-folder names, any word
categories.normalize_category knows; caption from a same-named `.txt` beside the image), or a
metadata file (CSV with a header row, or JSON lines; `metadata.jsonl` / `metadata.csv` in the
folder is used) with one row per garment: `id`, `image` (inside the catalog folder), `category`,
`caption`. An image outside the catalog once resolved (`../x.png`, a symlink out) is skipped
unread. Skipped entries are collected as Skip records, so one bad row does not stop a build.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..categories import normalize_category
from ..files import UnreadableFileError, open_regular
from ..images import IMAGE_EXTENSIONS, MISSING
from ..paths import PathRuleError, inside, is_plain_relative, shorten
from ..tables import read_rows

METADATA_NAMES: tuple[str, ...] = ("metadata.jsonl", "metadata.csv")

# Column names accepted in metadata files (first match wins), so Dress Code-style and
# shop-export files work without renaming columns.
_ID_KEYS = ("id", "item_id", "garment_id", "sku")
_IMAGE_KEYS = ("image", "image_path", "path", "file", "filename", "file_name")
_CATEGORY_KEYS = ("category", "cat", "garment_category", "type")
_CAPTION_KEYS = ("caption", "title", "text", "description", "name")


# Why a catalog entry was skipped (besides images.MISSING / UNREADABLE / NOT_AN_IMAGE / TOO_LARGE).
OUTSIDE, DUPLICATE_ID, NO_IMAGE, CHANGED = "outside the catalog", "duplicate id", "no image path", "changed"


@dataclass(frozen=True)
class Skip:
    """A catalog entry left out of the index, and why."""

    id: str  # the item id ("" when the row has none)
    reason: str  # one of the reasons above, for the summary counts
    detail: str  # what exactly: the path and the error
    row: int | None = None  # line of the metadata file, when the item comes from one
    source: str = ""  # that metadata file's name

    def __str__(self) -> str:
        where = f" ({self.source} line {self.row})" if self.row is not None else ""
        return f"{shorten(self.id) if self.id else '(no id)'}{where}: {self.reason}: {self.detail}"


@dataclass(frozen=True)
class CatalogItem:
    id: str
    path: str  # relative to the catalog root, '/'-separated, inside it
    category: str  # one of categories.CATEGORIES, else the catalog's own text, else ""
    caption: str = ""
    row: int | None = None  # line of the metadata file it comes from (for reports)
    source: str = ""  # that metadata file's name

    def skip(self, reason: str, detail: str) -> Skip:
        return Skip(self.id, reason, detail, self.row, self.source)


@dataclass
class Catalog:
    root: Path
    items: list[CatalogItem]
    skipped: list[Skip] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def image_path(self, item: CatalogItem) -> Path:
        """The image, resolved; PathRuleError if it now lies outside the catalog (a swapped symlink)."""
        return inside(item.path, self.root, f"image of garment {shorten(item.id)}")


def category_from_folders(rel_path: str) -> str:
    """The canonical category named by the deepest folder that names one, else the parent name."""
    parts = rel_path.split("/")[:-1]
    named = (normalize_category(part) for part in reversed(parts))
    return next((canonical for canonical in named if canonical), parts[-1] if parts else "")


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
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # skip .git, temp dirs
        files += [Path(dirpath, name).relative_to(root).as_posix() for name in filenames
                  if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS]
    files.sort()
    # File stem as id (Dress Code style '013563_1'); the stem-less path where stems collide.
    stems = Counter(Path(rel).stem for rel in files)
    items, skipped = [], []
    for rel in files:
        item_id = Path(rel).stem if stems[Path(rel).stem] == 1 else rel.rsplit(".", 1)[0]
        try:
            inside(rel, root, "image")
        except PathRuleError as exc:  # a symlink pointing out of the catalog
            skipped.append(Skip(item_id, OUTSIDE, str(exc)))
            continue
        caption = _read_sidecar((root / rel).with_suffix(".txt"), root)
        items.append(CatalogItem(item_id, rel, category_from_folders(rel), " ".join(caption.split())))
    return Catalog(root, items, skipped)


def _read_sidecar(sidecar: Path, root: Path) -> str:
    """A caption .txt beside the image ("" unless a regular file inside the catalog; 64 kB read)."""
    try:
        with open_regular(inside(sidecar, root, "caption file"), what="caption file") as f:
            return f.read(1 << 16).decode("utf-8", errors="replace").strip()
    except (OSError, PathRuleError, UnreadableFileError):
        return ""


def _pick(row: dict[str, str], keys: tuple[str, ...]) -> str | None:
    return next((row[key].strip() for key in keys if key in row), None)


def _from_metadata(root: Path, metadata: Path) -> Catalog:
    rows = read_rows(metadata, "metadata file")
    if rows and _pick(rows[0][1], _IMAGE_KEYS) is None:
        raise ValueError(f"Metadata file {metadata} has no image column; name one of "
                         f"{', '.join(_IMAGE_KEYS)} (columns found: {', '.join(rows[0][1])}).")
    items: dict[str, CatalogItem] = {}
    skipped: list[Skip] = []
    src = metadata.name
    for line, row in rows:
        image = _pick(row, _IMAGE_KEYS)
        item_id = _pick(row, _ID_KEYS) or (Path(image).stem if image else "")
        if not image:
            skipped.append(Skip(item_id, NO_IMAGE, "the row names no image file", line, src))
            continue
        try:
            full = inside(image, root, "image")
        except PathRuleError as exc:
            skipped.append(Skip(item_id, OUTSIDE, str(exc), line, src))
            continue
        if not full.exists():  # (anything else but a regular file is skipped when hashed, with why)
            skipped.append(Skip(item_id, MISSING, f"image {shorten(image)} not found in {root}", line, src))
            continue
        if item_id in items:
            skipped.append(Skip(item_id, DUPLICATE_ID, f"id {shorten(item_id)} is used by an earlier row",
                                line, src))
            continue
        # The path as the row names it (a symlink inside the catalog keeps its own name).
        rel = Path(os.path.relpath(os.path.normpath(root / image), root)).as_posix()
        if not is_plain_relative(rel):  # e.g. an absolute path through a symlinked parent
            rel = full.relative_to(root).as_posix()
        category = _pick(row, _CATEGORY_KEYS)
        category = canonical_or_text(category) if category else category_from_folders(rel)
        caption = _pick(row, _CAPTION_KEYS) or ""  # as written (a line separator inside stays)
        items[item_id] = CatalogItem(item_id, rel, category, caption, line, src)
    return Catalog(root, list(items.values()), skipped)
