"""A loaded garment index: manifest, embeddings, vector search, stored garments, optionally its
text encoder.

load_index() resolves the index folder's pointer once (storage.py), checks the manifest
(manifest.py), verifies the data files against the sha256 sums and sizes the manifest records,
and reads them from that version folder only. Every file is opened through the path rule and
only as a regular file of a bounded size (files.open_regular): a FIFO, a device, a socket or a
huge sparse file in place of one is refused with the rebuild command, never waited on or read
without end. Garment images come from the index's own shard (mapped at load, each image read
within the bounds the manifest records): nothing outside the index folder is ever opened.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..files import UnreadableFileError, cached_sha256, open_regular, read_regular
from ..images import GARMENT_SIZE, decode_image
from .limits import shorten
from .manifest import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    Encoder,
    IndexFormatError,
    check_encoder,
    describe_encoder,
    parse_manifest,
    rebuild_hint,
)
from .paths import PathRuleError, inside
from .storage import IndexVersion, resolve_version
from .vector_store import VectorStore, create_vector_store, load_vector_store
from .vectors import IVF_THRESHOLD

_LOAD_ATTEMPTS = 3


class GarmentIndex:
    """A loaded index: garment metadata, embeddings, the vector index, the stored garment images,
    optionally the encoder."""

    def __init__(self, index_dir: Path, manifest: dict[str, Any], embeddings: np.ndarray,
                 vectors: VectorStore, encoder: Encoder | None = None, version: str = "",
                 shard: np.ndarray | None = None) -> None:
        self.index_dir = index_dir
        self.version = version
        self.manifest = manifest
        self.embeddings = embeddings
        self.vectors = vectors
        self.encoder = encoder
        items = manifest["items"]
        self.ids: list[str] = list(items["ids"])
        self.rel_paths: list[str] = list(items["paths"])
        self.categories: list[str] = list(items["categories"])
        self.captions: list[str] = list(items["captions"])
        self.content_hashes: list[str] = list(items["sha256"])
        self._positions = {item_id: i for i, item_id in enumerate(self.ids)}
        # Category codes once, so a filtered query on a million garments costs no Python loop.
        names, codes = np.unique(np.asarray(self.categories, dtype=object).astype(str), return_inverse=True)
        self._category_names = {str(name): code for code, name in enumerate(names)}
        self._category_codes = codes.reshape(-1)
        self._shard = shard  # uint8, mapped: the stored garments (None: an index without files)
        self._image_at = list(zip(items.get("image_offsets", ()), items.get("image_sizes", ()), strict=True))
        self._captions_index = None

    @classmethod
    def in_memory(cls, embeddings: np.ndarray, categories: Sequence[str] | None = None,
                  captions: Sequence[str] | None = None, index_type: str = "auto",
                  ivf_threshold: int = IVF_THRESHOLD, name: str = "in-memory") -> GarmentIndex:
        """An index over given embeddings with no files (benchmarks, experiments); ids are '0'..'N-1'."""
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        n = len(emb)
        cats = list(categories) if categories is not None else [""] * n
        vectors = create_vector_store(emb, cats, index_type, ivf_threshold)
        manifest: dict[str, Any] = {
            "encoder": {"name": "none", "dim": int(emb.shape[1]), "weights_file": None, "weights_sha256": ""},
            "built": "", "vector_index": vectors.record(),
            "items": {"ids": [str(i) for i in range(n)], "paths": [""] * n, "categories": cats,
                      "captions": list(captions) if captions is not None else [""] * n, "sha256": [""] * n},
        }
        return cls(Path(name), manifest, emb, vectors)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def name(self) -> str:
        return self.index_dir.name

    @property
    def dim(self) -> int:
        return int(self.manifest["encoder"]["dim"])


    @property
    def built(self) -> str:
        return str(self.manifest.get("built", ""))

    @property
    def has_captions(self) -> bool:
        return any(c.strip() for c in self.captions)

    def position(self, item_id: str) -> int:
        return self._positions[item_id]

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._positions

    def stored_png(self, pos: int) -> bytes:
        """The stored garment's PNG bytes, as the build wrote them into the index."""
        if self._shard is None:
            raise ValueError(f"Index {self.name!r} holds no garment images (an in-memory index).")
        offset, size = self._image_at[pos]
        return bytes(self._shard[offset : offset + size])  # bounds checked against the shard at load

    def garment_image(self, pos: int) -> Image.Image:
        """The garment's image as the pipeline uses it: 384x512 RGB, read from the index."""
        name = f"stored image of garment {shorten(self.ids[pos])}"
        try:
            img = decode_image(self.stored_png(pos), name)
        except ValueError as exc:  # ImageLoadError: the shard passed its checksum, so a foreign build
            raise IndexFormatError(f"Index {self.index_dir}: {exc}; "
                                   f"{rebuild_hint(self.index_dir, self.manifest)}") from exc
        if img.size != GARMENT_SIZE:
            raise IndexFormatError(f"Index {self.index_dir}: the {name} is {img.width}x{img.height}, not "
                                   f"{GARMENT_SIZE[0]}x{GARMENT_SIZE[1]}; "
                                   f"{rebuild_hint(self.index_dir, self.manifest)}")
        return img

    def image(self, item_id: str) -> Image.Image:
        """The stored garment `item_id` (KeyError if the index has no such garment)."""
        return self.garment_image(self._positions[item_id])

    def category_mask(self, category: str) -> np.ndarray:
        """[N] bool: which garments have exactly this category."""
        code = self._category_names.get(category)
        if code is None:
            return np.zeros(len(self), dtype=bool)
        return self._category_codes == code

    def per_category(self) -> dict[str, int]:
        return dict(Counter(c or "uncategorised" for c in self.categories))

    @property
    def caption_index(self):  # -> lexical.CaptionIndex (built on first use: see lexical.py)
        if self._captions_index is None:
            from .lexical import CaptionIndex

            self._captions_index = CaptionIndex(self.captions)
        return self._captions_index

    def info(self) -> dict[str, Any]:
        """A summary for people: what `index info` prints and the loader node shows."""
        return {
            "name": self.name,
            "path": str(self.index_dir),
            "version": self.version,
            "items": len(self),
            "per_category": self.per_category(),
            "encoder": describe_encoder(self.manifest["encoder"]),
            "random_demo_encoder": bool(self.manifest["encoder"].get("random_demo")),
            "built": self.built,
            "stored_images_bytes": int(self._shard.nbytes) if self._shard is not None else 0,
            "vector_index": {"type": self.vectors.kind, "factory": self.vectors.factory,
                             "parts": len(self.vectors.parts)},
            "captions": sum(1 for c in self.captions if c.strip()),
        }


def read_version_manifest(ver: IndexVersion) -> dict[str, Any]:
    """The checked manifest of one version (FileNotFoundError passes through: see load_index)."""
    path = ver.data_dir / MANIFEST
    try:
        raw = read_regular(data_file(ver.data_dir, MANIFEST, ver.index_dir, None, "index manifest"),
                           MAX_MANIFEST_BYTES, "index manifest")
    except UnreadableFileError as exc:
        raise IndexFormatError(f"Index {ver.index_dir}: {exc}; {rebuild_hint(ver.index_dir)}") from exc
    except OSError as exc:
        if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
            raise
        raise IndexFormatError(f"Cannot read {path} ({exc}); {rebuild_hint(ver.index_dir)}") from exc
    return parse_manifest(raw, path, ver.index_dir)


def data_file(data_dir: Path, name: str, index_dir: Path, manifest: dict[str, Any] | None, what: str) -> Path:
    """A file of an index version, resolved; IndexFormatError unless it lies inside the version folder."""
    try:
        return inside(name, data_dir, what)
    except PathRuleError as exc:
        raise IndexFormatError(f"Index {index_dir}: {exc}; {rebuild_hint(index_dir, manifest)}") from exc


def file_size(manifest: dict[str, Any], name: str) -> int | None:
    """The byte size the manifest records for a file of the version (checked present at parse)."""
    return manifest["files"].get("bytes", {}).get(name)


def read_manifest(index_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked manifest of an index's current version."""
    return _retrying(index_dir, read_version_manifest)


def load_index(index_dir: str | os.PathLike[str], encoder: Encoder | None = None) -> GarmentIndex:
    """Load an index; with an encoder, first check that it is the one the index was built with."""
    return _retrying(index_dir, lambda ver: _load_version(ver, encoder))


def _retrying(index_dir: str | os.PathLike[str], load: Any) -> Any:
    for attempt in range(_LOAD_ATTEMPTS):
        ver = resolve_version(index_dir)
        try:
            return load(ver)
        except (FileNotFoundError, NotADirectoryError) as exc:
            # Builds keep the current and the previous version: this one can only vanish when
            # two builds finished during this load, and then the pointer names a newer one.
            if attempt + 1 < _LOAD_ATTEMPTS and resolve_version(index_dir).version != ver.version:
                continue
            raise IndexFormatError(f"Index {ver.index_dir} is incomplete ({exc.filename or exc} is missing); "
                                   f"{rebuild_hint(ver.index_dir)}") from exc
    raise AssertionError("unreachable")


def _load_version(ver: IndexVersion, encoder: Encoder | None) -> GarmentIndex:
    manifest = read_version_manifest(ver)
    if encoder is not None:
        check_encoder(manifest, encoder, ver.index_dir)
    verify_files(ver, manifest)
    n, dim = len(manifest["items"]["ids"]), int(manifest["encoder"]["dim"])
    name = manifest["files"]["embeddings"]
    emb_path = data_file(ver.data_dir, name, ver.index_dir, manifest, "embeddings file")
    emb = map_embeddings(emb_path, n, dim, ver.index_dir, manifest, file_size(manifest, name))
    vectors = load_vector_store(ver.data_dir, ver.index_dir, manifest, emb)
    shard = map_file(ver, manifest, manifest["files"]["garments"], "garment image file")
    return GarmentIndex(ver.index_dir, manifest, emb, vectors, encoder, ver.version, shard)


def map_file(ver: IndexVersion, manifest: dict[str, Any], name: str, what: str) -> np.ndarray:
    """A data file of the version as read-only uint8, mapped through one checked descriptor:
    a regular file of exactly the size the manifest records (its checksum passed verify_files)."""
    path = data_file(ver.data_dir, name, ver.index_dir, manifest, what)
    size = file_size(manifest, name)
    try:
        f = open_regular(path, size, what)
    except UnreadableFileError as exc:
        raise IndexFormatError(f"Index {ver.index_dir}: {exc}; {rebuild_hint(ver.index_dir, manifest)}"
                               ) from exc
    with f:
        if os.fstat(f.fileno()).st_size != size:
            raise IndexFormatError(f"Index {ver.index_dir}: {name} is not the size its manifest records "
                                   f"(damaged or replaced); {rebuild_hint(ver.index_dir, manifest)}")
        return np.memmap(f, dtype=np.uint8, mode="r", shape=(size,)) if size else np.zeros(0, np.uint8)


def verify_files(ver: IndexVersion, manifest: dict[str, Any]) -> None:
    """Every file of the version is a regular file of the size and sha256 its manifest records,
    before FAISS parses it (read no further than that size: a huge sparse file is not hashed)."""
    for name, expected in manifest["files"]["sha256"].items():
        path = data_file(ver.data_dir, name, ver.index_dir, manifest, "index data file")
        try:
            digest = cached_sha256(path, file_size(manifest, name), "index data file")
        except UnreadableFileError as exc:
            raise IndexFormatError(f"Index {ver.index_dir}: {exc}; {rebuild_hint(ver.index_dir, manifest)}"
                                   ) from exc
        if digest != expected:
            raise IndexFormatError(f"Index {ver.index_dir}: {name} does not match the checksum in its "
                                   f"manifest (damaged or replaced); {rebuild_hint(ver.index_dir, manifest)}")


def map_embeddings(path: Path, n: int, dim: int, index_dir: Path | None = None,
                   manifest: dict[str, Any] | None = None, max_bytes: int | None = None) -> np.ndarray:
    """The [n, dim] float32 embeddings of a .npy file, memory-mapped read-only.

    Mapped rather than read so a 1M-garment index (3 GB of float32) costs page cache, not
    process memory, when the IVF index answers queries and only a few rows are ever read.
    The file must be a regular file (of at most `max_bytes`, the size the manifest records);
    it is opened once, its header parsed by numpy (no pickle: an object dtype is refused) and
    checked against the manifest and the file size, then mapped through that descriptor.
    """
    where = index_dir or path.parent

    def bad(why: str) -> IndexFormatError:
        return IndexFormatError(f"Index {where}: {path.name} {why}; {rebuild_hint(where, manifest)}")

    try:
        f = open_regular(path, max_bytes, "embeddings file")
    except UnreadableFileError as exc:
        raise IndexFormatError(f"Index {where}: {exc}; {rebuild_hint(where, manifest)}") from exc
    with f:
        size = os.fstat(f.fileno()).st_size
        try:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
        except Exception as exc:  # noqa: BLE001 numpy's parser raises ValueError, SyntaxError, TokenError, ...
            raise bad(f"is not a .npy file ({str(exc)[:80]})") from exc
        if dtype != np.dtype("<f4") or fortran or shape != (n, dim):
            raise bad(f"holds a {str(dtype)[:10]} array of shape {str(shape)[:40]}, the manifest {n} "
                      f"garments x {dim} float32")
        offset = f.tell()
        if offset + n * dim * 4 != size:
            raise bad("is truncated, or longer than its header says")
        if n == 0:
            return np.zeros((0, dim), dtype=np.float32)
        # The map holds its own reference to the file: closing `f` leaves it valid.
        return np.memmap(f, dtype=np.float32, mode="r", offset=offset, shape=(n, dim))
