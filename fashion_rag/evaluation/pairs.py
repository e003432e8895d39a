"""What `fashion-rag evaluate` reads from a test set, whatever its source (Dress Code, a CSV):
the pairs, the garments retrieval searches, the real photos FID compares with, and the problems
found on the way, each tied to a pair id."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import MAX_JSON_BYTES, read_regular
from ..images import decode_image, read_image_bytes
from ..inpaint.keypoints import Keypoints, openpose_frames
from ..reference import IMAGE_SIZE


@dataclass(frozen=True)
class EvalPair:
    """One test pair: a person, the garment they are dressed in, and the text describing it."""

    pair_id: str  # Dress Code: the person file's stem (unique across categories); CSV: its id
    category: str
    person: Path  # the person photo; in a paired run also the target the result is compared with
    garment_id: str  # the pair's own garment: the one retrieval should find for `query`
    query: str  # the text retrieval runs on and CLIP-T scores (Dress Code: noun chunks joined)
    keypoints: Path | None = None
    label_map: Path | None = None
    mask: Path | None = None  # a given mask image (CSV), white = repaint


@dataclass(frozen=True)
class GalleryGarment:
    """A garment retrieval may return (Dress Code: the test garments of the categories run)."""

    id: str
    category: str
    image: Path
    caption: str  # for caption/fusion retrieval
    queries: dict[int, str] = field(default_factory=dict)  # noun chunks used -> the text it answers


@dataclass(frozen=True)
class Problem:
    """Something that makes one pair (or one line of a list file) unusable."""

    pair_id: str
    category: str
    message: str

    def __str__(self) -> str:
        return f"{self.category}/{self.pair_id}: {self.message}" if self.category else \
            f"{self.pair_id}: {self.message}"


@dataclass
class TestSet:
    pairs: list[EvalPair] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)  # by the reference's own rules, not problems
    gallery: dict[str, GalleryGarment] = field(default_factory=dict)
    real: dict[str, list[Path]] = field(default_factory=dict)  # category -> photos FID compares with

    def usable_per_category(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for pair in self.pairs:
            counts[pair.category] = counts.get(pair.category, 0) + 1
        return counts


@dataclass(frozen=True)
class PreparedPair:
    """A pair as the generation graph takes it, at the generation size (the reference's 384x512)."""

    person: Image.Image  # RGB
    mask: np.ndarray  # [H, W] bool, True = repaint
    keypoints_json: str  # what the pose node reads


class DatasetError(ValueError):
    """The test set cannot be read at all (one line: what is missing and where)."""


class PairError(ValueError):
    """One pair cannot be used; the message says which file and why."""


def read_json(path: Path, what: str) -> object:
    """A JSON file from the test set, bounded in size; PairError names the file."""
    try:
        return json.loads(read_regular(path, MAX_JSON_BYTES, what))
    except FileNotFoundError:
        raise PairError(f"{what} {path} not found") from None
    except (OSError, ValueError) as exc:  # UnreadableFileError and JSONDecodeError are ValueErrors
        raise PairError(f"{what} {path} is not readable JSON ({' '.join(str(exc).split())[:200]})") from None


def read_dataset_json(path: Path, what: str, missing: str) -> object:
    """A JSON file the whole run needs (caption file, retrieval file): DatasetError, which stops the
    run, where read_json's PairError would skip one pair. `missing` says what belongs there."""
    if not path.is_file():
        raise DatasetError(f"{path} not found: {missing}")
    try:
        return read_json(path, what)
    except PairError as exc:
        raise DatasetError(str(exc)) from None


def read_picture(path: Path, what: str) -> Image.Image:
    """An image file, decoded to RGB (a label map: as stored, its palette indices are the labels)."""
    try:
        return decode_image(read_image_bytes(path), str(path), rgb=what != "label map")
    except ValueError as exc:  # ImageLoadError names the file and the reason
        raise PairError(f"{what}: {' '.join(str(exc).split())[:300]}") from None


def resized_person(img: Image.Image, size: tuple[int, int] = IMAGE_SIZE) -> Image.Image:
    """The person at the generation size (the reference resizes to 384x512 with PIL's default,
    bicubic, whatever the photo's shape)."""
    return img.convert("RGB").resize(size, Image.Resampling.BICUBIC)


def pose_json(keypoints: Keypoints | None, size: tuple[int, int] = IMAGE_SIZE) -> str:
    """Keypoints in the frame `size` (W, H) as the pose node's OpenPose JSON (none: no pose)."""
    people = [keypoints] if keypoints is not None else [Keypoints.none()]
    return json.dumps(openpose_frames(people, size)[0])


def reference_file_stem(pair_id: str, query: str) -> str:
    """The name the reference saves a result under: the person stem, then the noun chunks with
    '_' for spaces and for '/'."""
    words = "_".join("_".join(chunk.split(" ")) for chunk in query.split(", "))
    return f"{pair_id}_{words}".replace("/", "_")
