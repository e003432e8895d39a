"""The Dress Code test set as distributed, read the way the reference's evaluation reads it
(docs/evaluation.md, "Dress Code"):

    DIR/fine_captions.json, DIR/coarse_captions.json   {garment number: [noun chunk, ...]}
    DIR/test_pairs_paired.txt                           every category's paired pairs (FID's real set)
    DIR/<category>/test_pairs_{paired,unpaired}.txt     "<person>_0.jpg <garment>_1.jpg" per line
    DIR/<category>/images/<n>_0.jpg, <n>_1.jpg          person, garment
    DIR/<category>/cleaned_inshop_imgs/<n>_1_cleaned.jpg  the garment without background (preferred)
    DIR/<category>/keypoints/<n>_2.json                 {"keypoints": [[x, y, score, id] x 18]}
    DIR/<category>/label_maps/<n>_4.png                 human parsing, Dress Code's label ids

A pair takes part when its garment has a caption: the fine captions with at least 3 noun chunks,
then the coarse ones (which replace fine ones of the same garment); a person listed twice takes
part once. Pairs left out by those rules are counted, not reported: the reference leaves them
out by design. Anything else wrong (a missing or malformed file, too few noun chunks, an unsafe
name) is a Problem of that pair, and the rest of the set is still read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..categories import CATEGORIES
from ..files import MAX_TABLE_BYTES, read_regular
from ..inpaint.keypoints import NUM_KEYPOINTS, PoseFormatError, parse_keypoints
from ..paths import is_plain_name
from ..reference import IMAGE_SIZE
from .dresscode_mask import MaskError, label_map_mask
from .pairs import (
    DatasetError,
    EvalPair,
    GalleryGarment,
    PairError,
    PreparedPair,
    Problem,
    TestSet,
    read_dataset_json,
    read_json,
    read_picture,
    resized_person,
)

ORDERS: tuple[str, ...] = ("paired", "unpaired")
CAPTION_FILES = ("fine_captions.json", "coarse_captions.json")
MIN_FINE_CHUNKS = 3  # fine captions with fewer noun chunks are not used
NO_CAPTION, DUPLICATE = "garment without a caption", "person listed before"


def garment_key(garment_file: str) -> str:
    """The caption files' key of a garment file: its number ("048392_1.jpg" -> "048392")."""
    return garment_file.split("_")[0]


def join_chunks(chunks: list[str], n_chunks: int) -> str:
    """The query text: the first `n_chunks` noun chunks in sorted order, joined by ", "."""
    ordered = sorted(chunks)
    if len(ordered) < n_chunks:
        raise PairError(f"its garment's caption has {len(ordered)} noun chunk(s) ({', '.join(ordered)}); "
                        f"--chunks {n_chunks} needs {n_chunks}")
    return ", ".join(ordered[:n_chunks])


def read_captions(root: Path) -> tuple[dict[str, list[str]], set[str]]:
    """{garment number: noun chunks} as the reference merges the two files, and the numbers
    whose entry is malformed (not a list of texts)."""
    merged: dict[str, list[str]] = {}
    bad: set[str] = set()
    for name in CAPTION_FILES:
        path = root / name
        data = read_dataset_json(path, "caption file", f"the Dress Code-multimodal caption files "
                                                       f"({' and '.join(CAPTION_FILES)}) belong in {root}")
        if not isinstance(data, dict):
            raise DatasetError(f"{path} is not a JSON object {{garment number: [noun chunks]}}")
        for key, chunks in data.items():
            if not isinstance(chunks, list) or not all(isinstance(c, str) for c in chunks):
                bad.add(str(key))
                continue
            if name == CAPTION_FILES[0] and len(chunks) < MIN_FINE_CHUNKS:
                continue
            merged[str(key)] = list(chunks)
            bad.discard(str(key))
    return merged, bad


def _pairs_lines(path: Path) -> list[str]:
    try:
        return read_regular(path, MAX_TABLE_BYTES, "pairs file").decode("utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetError(f"{path} not found: is {path.parent.parent} a Dress Code folder (with "
                           f"{path.parent.name}/{path.name})?") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None


def _garment_image(folder: Path, garment_file: str) -> Path:
    """The garment without background when the dataset has it, else the shop photo."""
    stem = garment_file.rsplit(".", 1)[0]
    cleaned = folder / "cleaned_inshop_imgs" / f"{stem}_cleaned.jpg"
    return cleaned if cleaned.is_file() else folder / "images" / garment_file


def read_dresscode(root: Path, order: str, categories: tuple[str, ...], n_chunks: int) -> TestSet:
    """The pairs of `order` in `categories`, their problems, the garments and the real photos."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"no Dress Code folder at {root}")
    if order not in ORDERS:
        raise DatasetError(f"unknown order {order!r}; expected paired or unpaired")
    captions, malformed = read_captions(root)
    out = TestSet()
    seen: set[str] = set()
    for category in sorted(categories):  # the reference reads the categories in sorted order
        if category not in CATEGORIES:
            raise DatasetError(f"unknown category {category!r}; expected {', '.join(CATEGORIES)}")
        folder = root / category
        pairs_file = folder / f"test_pairs_{order}.txt"
        for number, line in enumerate(_pairs_lines(pairs_file), 1):
            parts = line.split()
            if not parts:
                continue
            where = f"{category}/{pairs_file.name} line {number}"
            if len(parts) != 2 or not all(is_plain_name(p) for p in parts):
                out.problems.append(Problem(where, "", "expected '<person>.jpg <garment>.jpg', got "
                                                       f"{line[:120]!r}"))
                continue
            person_file, garment_file = parts
            pair_id = person_file.rsplit(".", 1)[0]
            garment_id = garment_file.rsplit(".", 1)[0]
            _add_gallery(out, folder, category, garment_file, captions.get(garment_key(garment_file)))
            key = garment_key(garment_file)
            if key in malformed:
                out.problems.append(Problem(pair_id, category, f"the caption of garment {key} is not a "
                                                               "list of noun chunks in the caption files"))
                continue
            if key not in captions:
                out.left_out[NO_CAPTION] = out.left_out.get(NO_CAPTION, 0) + 1
                continue
            if person_file in seen:
                out.left_out[DUPLICATE] = out.left_out.get(DUPLICATE, 0) + 1
                continue
            seen.add(person_file)
            try:
                query = join_chunks(captions[key], n_chunks)
            except PairError as exc:
                out.problems.append(Problem(pair_id, category, str(exc)))
                continue
            stem = person_file.rsplit("_", 1)[0]
            out.pairs.append(EvalPair(
                pair_id=pair_id, category=category, person=folder / "images" / person_file,
                garment_id=garment_id, query=query,
                keypoints=folder / "keypoints" / f"{stem}_2.json",
                label_map=folder / "label_maps" / f"{stem}_4.png",
            ))
    out.real = real_photos(root, categories)
    return out


def _add_gallery(out: TestSet, folder: Path, category: str, garment_file: str,
                 chunks: list[str] | None) -> None:
    garment_id = garment_file.rsplit(".", 1)[0]
    if garment_id in out.gallery:
        return
    queries = {}
    for n in (1, 2, 3):
        try:
            queries[n] = join_chunks(chunks or [], n)
        except PairError:
            pass
    caption = ", ".join(sorted(chunks)) if chunks else ""
    out.gallery[garment_id] = GalleryGarment(garment_id, category, _garment_image(folder, garment_file),
                                             caption, queries)


def real_photos(root: Path, categories: tuple[str, ...]) -> dict[str, list[Path]]:
    """The photos FID and KID compare with, per category and "all": the persons of the top-level
    test_pairs_paired.txt found in each category's images folder (the reference's statistics);
    without that file, those of each category's test_pairs_paired.txt."""
    top = root / "test_pairs_paired.txt"
    real: dict[str, list[Path]] = {}
    for category in sorted(categories):
        source = top if top.is_file() else root / category / "test_pairs_paired.txt"
        try:
            names = [line.split()[0] for line in _pairs_lines(source) if line.split()]
        except DatasetError:
            names = []
        folder = root / category / "images"
        real[category] = [folder / n for n in names if is_plain_name(n) and (folder / n).is_file()]
    real["all"] = [p for c in sorted(real) for p in real[c]]
    return real


def dresscode_keypoints(path: Path) -> tuple[np.ndarray, str]:
    """The raw keypoint rows [18, 2] (the mask rule reads them unscaled and uncleaned) and the JSON
    the pose node reads; PairError when the file is not Dress Code's keypoint form."""
    data = read_json(path, "keypoints file")
    rows = data.get("keypoints") if isinstance(data, dict) else None
    try:
        points = np.asarray(rows, dtype=np.float64)
        if points.ndim != 2 or points.shape[0] != NUM_KEYPOINTS or points.shape[1] < 2:
            raise ValueError(f"shape {points.shape}")
        parse_keypoints({"keypoints": rows})  # the pose node must read it too
    except (TypeError, ValueError, PoseFormatError) as exc:
        raise PairError(f"keypoints file {path}: expected {{\"keypoints\": [[x, y, score, id] x 18]}} "
                        f"({' '.join(str(exc).split())[:120]})") from None
    return points[:, :2], json.dumps({"keypoints": points.tolist()}, separators=(",", ":"))


def prepare_dresscode(pair: EvalPair, mask_type: str, size: tuple[int, int] = IMAGE_SIZE) -> PreparedPair:
    """Person, mask and pose of one pair at `size` (W, H; the reference's 384x512 by default);
    PairError says what is wrong."""
    assert pair.keypoints is not None and pair.label_map is not None
    person = resized_person(read_picture(pair.person, "person image"), size)
    points, pose = dresscode_keypoints(pair.keypoints)
    labels = read_picture(pair.label_map, "label map")
    if labels.mode not in ("L", "P"):
        raise PairError(f"label map {pair.label_map} is a {labels.mode} image; expected one channel of "
                        "label ids (mode L or P)")
    parse = np.asarray(labels.resize(size, Image.Resampling.NEAREST))
    try:
        mask = label_map_mask(parse, points, pair.category, mask_type)
    except MaskError as exc:
        raise PairError(f"label map {pair.label_map}: {exc}") from None
    return PreparedPair(person, mask, pose)
