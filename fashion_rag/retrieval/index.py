"""A loaded garment index: manifest, embeddings, vector search, optionally its text encoder.

load_index() resolves the index folder's pointer once (storage.py), checks the manifest
(manifest.py), verifies the data files against the sha256 sums and sizes the manifest records,
and reads them from that version folder only. Every file is opened through the path rule and
only as a regular file of a bounded size (files.open_regular): a FIFO, a device, a socket or a
huge sparse file in place of one is refused with the rebuild command, never waited on or read
without end. Garment images are read the same way and must still have the content that was
indexed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..files import UnreadableFileError, cached_sha256, open_regular, read_regular
from ..images import decode_image, fit_garment, read_image_bytes
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

_MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on a header
_LOAD_ATTEMPTS = 3


class CatalogChangedError(FileNotFoundError):
    """A garment image is gone, or its content is not what was indexed."""


class GarmentIndex:
    """A loaded index: garment metadata, embeddings, the vector index, optionally the encoder."""

    def __init__(self, index_dir: Path, manifest: dict[str, Any], embeddings: np.ndarray,
                 vectors: VectorStore, encoder: Encoder | None = None, version: str = "") -> None:
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
        self.catalog_root = _resolve_catalog_root(index_dir, manifest)
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
            "catalog_root": "", "built": "", "vector_index": vectors.record(),
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

    def image_path(self, pos: int) -> Path:
        """The garment's image, resolved; PathRuleError unless it lies inside the catalog folder."""
        return inside(self.rel_paths[pos], self.catalog_root, f"image of garment {shorten(self.ids[pos])}")

    def garment_image(self, pos: int) -> Image.Image:
        """The garment's image fitted to 384x512, refused unless its content is what was indexed.

        The content check means a manifest (which anyone can edit) can only ever make the
        server read back images whose exact bytes its author already had.
        """
        path = self.image_path(pos)
        data = read_image_bytes(path)
        expected = self.content_hashes[pos]
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise CatalogChangedError(
                f"The image of garment {shorten(self.ids[pos])} ({path}) changed after index {self.name!r} "
                f"was built; {rebuild_hint(self.index_dir, self.manifest)}")
        return fit_garment(decode_image(data, str(path)))

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
            "catalog_root": str(self.catalog_root),
            "vector_index": {"type": self.vectors.kind, "factory": self.vectors.factory,
                             "parts": len(self.vectors.parts)},
            "captions": sum(1 for c in self.captions if c.strip()),
        }


def _resolve_catalog_root(index_dir: Path, manifest: dict[str, Any]) -> Path:
    # The absolute root is what was built; the relative one keeps an index usable when the
    # models folder (index and catalog together) is moved or mounted elsewhere.
    absolute = Path(manifest["catalog_root"])
    if absolute.is_dir():
        return absolute.resolve()
    relative = manifest.get("catalog_root_relative")
    if relative:
        candidate = (index_dir / relative).resolve()
        if candidate.is_dir():
            return candidate
    return absolute


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
    return GarmentIndex(ver.index_dir, manifest, emb, vectors, encoder, ver.version)


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
    """The [n, dim] float32 "embeddings" tensor of a safetensors file, memory-mapped read-only.

    Mapped rather than read so a 1M-garment index (3 GB of float32) costs page cache, not
    process memory, when the IVF index answers queries and only a few rows are ever read.
    The file must be a regular file (of at most `max_bytes`, the size the manifest records);
    it is opened once and mapped through that descriptor. The header is parsed here (no
    pickle, no library trusting its offsets) and checked against the file size and the
    manifest before anything is mapped.
    """
    def bad(why: str) -> IndexFormatError:
        return IndexFormatError(f"Index {index_dir or path.parent}: {path.name} {why}; "
                                f"{rebuild_hint(index_dir or path.parent, manifest)}")

    try:
        f = open_regular(path, max_bytes, "embeddings file")
    except UnreadableFileError as exc:
        raise IndexFormatError(f"Index {index_dir or path.parent}: {exc}; "
                               f"{rebuild_hint(index_dir or path.parent, manifest)}") from exc
    with f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        header_len = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= header_len <= min(size - 8, _MAX_HEADER_BYTES):
            raise bad("is truncated or not a safetensors file")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise bad(f"has an unreadable header ({str(exc)[:80]})") from exc
        meta = header.get("embeddings") if isinstance(header, dict) else None
        if not isinstance(meta, dict):
            raise bad("holds no 'embeddings' tensor")
        shape, offsets = meta.get("shape"), meta.get("data_offsets")
        if meta.get("dtype") != "F32" or shape != [n, dim]:
            raise bad(f"holds a {str(meta.get('dtype'))[:10]} tensor of shape {str(shape)[:40]}, the "
                      f"manifest {n} garments x {dim} float32")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or offsets[1] - offsets[0] != n * dim * 4 or offsets[0] < 0
                or 8 + header_len + offsets[1] > size):
            raise bad("is truncated, or its tensor offsets are wrong")
        if n == 0:
            return np.zeros((0, dim), dtype=np.float32)
        # The map holds its own reference to the file: closing `f` leaves it valid.
        return np.memmap(f, dtype=np.float32, mode="r", offset=8 + header_len + offsets[0], shape=(n, dim))
