"""The retrieval step of an evaluation: every query's top-20 garments, from an index the pack
builds over the test set's garments (the default) or from the reference's precomputed JSON files.

The generation uses the first k of a query's ranking; the retrieval metrics read all 20. A
garment is *relevant* to a query when its own caption gives that very query text (the pair's
own garment always does; others may share its noun chunks).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..files import atomic_write
from ..paths import is_plain_name, is_plain_relative
from .pairs import DatasetError, GalleryGarment, read_dataset_json

TOP = 20  # the rankings the metrics read (R@k and P@k up to k = 20)
REFERENCE_SETS = {1: "single", 2: "double", 3: "triplet"}  # noun chunks -> the reference's file name part
GARMENT_FOLDERS = ("cleaned_inshop_imgs", "images")


@dataclass
class Rankings:
    ranked: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (category, query) -> ids
    images: dict[str, Path] = field(default_factory=dict)  # garment id -> its image file


def relevant_garments(gallery: dict[str, GalleryGarment], n_chunks: int) -> dict[tuple[str, str], set[str]]:
    """(category, query) -> the garments whose caption gives that query with `n_chunks` chunks."""
    relevant: dict[tuple[str, str], set[str]] = {}
    for g in gallery.values():
        query = g.queries.get(n_chunks)
        if query is not None:
            relevant.setdefault((g.category, query), set()).add(g.id)
    return relevant


def write_gallery_table(gallery: Iterable[GalleryGarment], root: Path, path: Path) -> Path:
    """The garments as an `index build` metadata CSV (id, image relative to `root`, category,
    caption); the index build itself refuses any image that resolves outside `root`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "image", "category", "caption"])
    for g in gallery:
        rel = Path(os.path.relpath(g.image.absolute(), root.absolute())).as_posix()
        writer.writerow([g.id, rel, g.category, g.caption])
    return atomic_write(path, lambda tmp: Path(tmp).write_text(buffer.getvalue(), encoding="utf-8"))


def index_rankings(gallery: dict[str, GalleryGarment], queries: set[tuple[str, str]], root: Path,
                   index_dir: Path, weights: Path, arch: str, mode: str,
                   say: Callable[[str], None]) -> Rankings:
    """Build (or update: only new garments are encoded) the index of `gallery` in `index_dir`, then
    rank every (category, query) in it, within the query's category."""
    from ..openclip_encoder import GarmentEncoder
    from ..retrieval.build import build_index
    from ..retrieval.catalog import scan_catalog
    from ..retrieval.index import load_index
    from ..retrieval.search import search

    table = write_gallery_table(gallery.values(), root, index_dir.parent / f"{index_dir.name}_garments.csv")
    encoder = GarmentEncoder(weights, arch)
    report = build_index(scan_catalog(root, table), index_dir, encoder, log_fn=lambda m: say(f"index: {m}"))
    for skip in report.skipped:
        say(f"index: garment left out: {skip}")
    say(f"index: {report.index_dir}: {report.summary()}")
    index = load_index(index_dir, encoder)
    out = Rankings(images={g.id: g.image for g in gallery.values() if g.id in index})
    for category, query in sorted(queries):
        hits = search(index, query, TOP, mode=mode, category=category)
        out.ranked[(category, query)] = [h.id for h in hits]
    return out


def reference_rankings(folder: Path, dataset_root: Path, categories: Iterable[str],
                       n_chunks: int) -> Rankings:
    """The reference's precomputed rankings: `folder`/test_<category>_<single|double|triplet>.json,
    {"pred_files": {query: ["<category>/cleaned_inshop_imgs/<id>_cleaned.jpg", ...]}}. A garment
    listed there is read from the dataset (its shop photo when the cleaned one is missing)."""
    out = Rankings()
    for category in sorted(categories):
        path = Path(folder) / f"test_{category}_{REFERENCE_SETS[n_chunks]}.json"
        needed = (f"--retrieval reference-json DIR needs the reference's "
                  f"test_<category>_{REFERENCE_SETS[n_chunks]}.json files")
        data = read_dataset_json(path, "retrieval file", needed)
        predicted = data.get("pred_files") if isinstance(data, dict) else None
        if not isinstance(predicted, dict):
            raise DatasetError(f"{path} has no 'pred_files' object {{query: [garment paths]}}")
        for query, files in predicted.items():
            if not isinstance(files, list):
                raise DatasetError(f"{path}: the garments of {str(query)[:80]!r} are not a list of paths")
            ids = []
            for rel in files[:TOP]:
                garment_id, image = _reference_garment(str(rel), category, dataset_root, path)
                ids.append(garment_id)
                out.images.setdefault(garment_id, image)
            out.ranked[(category, str(query))] = ids
    return out


def _reference_garment(rel: str, category: str, root: Path, source: Path) -> tuple[str, Path]:
    parts = rel.split("/")
    if (not is_plain_relative(rel) or len(parts) != 3 or parts[0] != category
            or parts[1] not in GARMENT_FOLDERS or not is_plain_name(parts[2])):
        raise DatasetError(f"{source}: garment path {rel[:120]!r} is not "
                           f"'{category}/cleaned_inshop_imgs/<name>.jpg'")
    stem = parts[2].rsplit(".", 1)[0].removesuffix("_cleaned")
    image = root / rel
    if not image.is_file():  # as the reference: the shop photo when the cleaned one is missing
        image = root / category / "images" / f"{stem}.jpg"
    return stem, image
