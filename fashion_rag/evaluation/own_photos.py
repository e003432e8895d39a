"""Your own photos as a test set: a CSV with one pair per row.

Columns (a header row; names are case-insensitive):
  person     the person photo
  garment    the photo of the garment the person wears in it (what retrieval should find; it joins
             the garments retrieval searches, captioned with `caption`)
  caption    the text describing that garment (the query, and CLIP-T's text)
  category   upper_body, lower_body or dresses (or a word categories.normalize_category knows)
  mask       optional: a mask image, white = repaint; without it the Garment Mask node's rule
             builds one from the keypoints
  keypoints  optional: a keypoint JSON file in any form the pose node reads (OpenPose, DWPose,
             Dress Code); without it the pose channels stay empty
  id         optional: the pair's name in the report (default: the row number)

Paths are relative to the CSV's folder and must stay inside it. Photos are resized to 384x512
(or --size) as the reference resizes Dress Code's (use 3:4 photos for undistorted results).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

from ..categories import normalize_category
from ..files import MAX_TABLE_BYTES, read_regular
from ..inpaint.keypoints import Keypoints, PoseFormatError, parse_keypoints
from ..inpaint.mask import garment_mask
from ..paths import PathRuleError, inside, is_plain_name
from ..reference import IMAGE_SIZE
from .pairs import (
    DatasetError,
    EvalPair,
    GalleryGarment,
    PairError,
    PreparedPair,
    Problem,
    TestSet,
    pose_json,
    read_json,
    read_picture,
    resized_person,
)

COLUMNS = ("person", "garment", "caption", "category")
OPTIONAL = ("mask", "keypoints", "id")


def read_photo_table(path: Path) -> TestSet:
    """The pairs of a CSV (module docstring); a row that cannot be used is a Problem of its id."""
    path = Path(path)
    try:
        text = read_regular(path, MAX_TABLE_BYTES, "photo table").decode("utf-8-sig")
        rows = list(csv.reader(io.StringIO(text)))
    except FileNotFoundError:
        raise DatasetError(f"no photo table at {path}") from None
    except (OSError, ValueError, csv.Error) as exc:
        raise DatasetError(f"cannot read the photo table {path}: {exc}") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise DatasetError(f"{path} is empty: it needs a header row ({', '.join(COLUMNS)}) and a row "
                           "per pair")
    header = [h.strip().casefold() for h in rows[0]]
    missing = [c for c in COLUMNS if c not in header]
    unknown = [h for h in header if h not in COLUMNS + OPTIONAL]
    if missing or unknown:
        raise DatasetError(f"{path}: " + "; ".join(
            ([f"missing column(s) {', '.join(missing)}"] if missing else [])
            + ([f"unknown column(s) {', '.join(unknown)} (known: {', '.join(COLUMNS + OPTIONAL)})"]
               if unknown else [])))
    root = path.parent
    out = TestSet()
    seen: set[str] = set()
    for number, row in enumerate(rows[1:], 1):
        cells = {h: (row[i].strip() if i < len(row) else "") for i, h in enumerate(header)}
        pair_id = cells.get("id") or str(number)
        category = normalize_category(cells["category"]) or ""
        try:
            if not is_plain_name(pair_id) or pair_id in seen:
                raise PairError(f"id {pair_id!r} is " + ("used by an earlier row" if pair_id in seen else
                                                        "not a plain name (no / \\ : or leading dot)"))
            seen.add(pair_id)
            if not category:
                raise PairError(f"category {cells['category']!r} is none of upper_body, lower_body, dresses")
            if not cells["caption"]:
                raise PairError("the caption is empty")
            files = {c: _file(root, cells.get(c, ""), c) for c in ("person", "garment", "mask", "keypoints")}
            if files["person"] is None or files["garment"] is None:
                raise PairError("a person and a garment photo are needed")
            if files["mask"] is None and files["keypoints"] is None:
                raise PairError("give a mask or keypoints (the mask is built from the keypoints)")
        except PairError as exc:
            out.problems.append(Problem(pair_id, category, f"line {number + 1}: {exc}"))
            continue
        garment_id = f"{pair_id}-garment"
        out.gallery[garment_id] = GalleryGarment(garment_id, category, files["garment"], cells["caption"],
                                                 {0: cells["caption"]})
        out.pairs.append(EvalPair(pair_id, category, files["person"], garment_id, cells["caption"],
                                  keypoints=files["keypoints"], mask=files["mask"]))
    real: dict[str, list[Path]] = {}
    for pair in out.pairs:
        real.setdefault(pair.category, []).append(pair.person)
    real["all"] = [p.person for p in out.pairs]
    out.real = real
    return out


def _file(root: Path, cell: str, column: str) -> Path | None:
    if not cell:
        return None
    try:
        path = inside(cell, root, f"{column} file")
    except PathRuleError as exc:
        raise PairError(str(exc)) from None
    if not path.is_file():
        raise PairError(f"{column} file {cell} not found in {root}")
    return path


def photo_keypoints(path: Path, photo: tuple[int, int], size: tuple[int, int] = IMAGE_SIZE) -> Keypoints:
    """One person's keypoints from a JSON file, in the frame `size`; pixel coordinates without a
    canvas are taken as pixels of the photo (`photo`, width x height)."""
    try:
        kp = parse_keypoints(read_json(path, "keypoints file"))[0]
    except PoseFormatError as exc:
        raise PairError(f"keypoints file {path}: {exc}") from None
    if kp.canvas is None and not kp.normalized:
        kp = Keypoints(kp.xy, canvas=photo)
    return kp.in_frame(size)


def prepare_photo(pair: EvalPair, mask_type: str = "", size: tuple[int, int] = IMAGE_SIZE) -> PreparedPair:
    """Person, mask and pose of one CSV pair at `size` (`mask_type` is Dress Code's only)."""
    photo = read_picture(pair.person, "person image")
    keypoints = photo_keypoints(pair.keypoints, photo.size, size) if pair.keypoints else None
    if pair.mask is not None:
        drawn = read_picture(pair.mask, "mask image").convert("L")
        mask = np.asarray(drawn.resize(size, Image.Resampling.NEAREST)) >= 128
    else:
        assert keypoints is not None
        try:
            mask = garment_mask(keypoints, pair.category, *size).numpy() >= 0.5
        except ValueError as exc:
            raise PairError(f"no mask from the keypoints: {exc}") from None
    if not mask.any():
        raise PairError("the mask is empty: nothing to repaint")
    return PreparedPair(resized_person(photo, size), mask, pose_json(keypoints, size))
