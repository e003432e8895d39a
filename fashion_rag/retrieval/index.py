"""A loaded garment index: manifest, embeddings, vector search, stored garments, optionally its
text encoder.

load_index() reads the index folder's current version through ondisk.read_version (the pointer
resolved once, the manifest checked, the data files verified against the sha256 sums and sizes
the manifest records, all read from that version folder only). Every file is opened through the path rule and
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

from ..images import GARMENT_SIZE, decode_image
from .ondisk import (
    Encoder,
    IndexFormatError,
    StoredVersion,
    check_encoder,
    describe_encoder,
    read_version,
    rebuild_hint,
)
from .paths import shorten
from .vector_store import VectorStore, create_vector_store, load_vector_store
from .vectors import IVF_THRESHOLD


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


def load_index(index_dir: str | os.PathLike[str], encoder: Encoder | None = None) -> GarmentIndex:
    """Load an index; with an encoder, first check that it is the one the index was built with."""
    def check(manifest: dict[str, Any]) -> None:
        if encoder is not None:
            check_encoder(manifest, encoder, Path(index_dir).expanduser().resolve())

    def assemble(stored: StoredVersion) -> GarmentIndex:
        vectors = load_vector_store(stored)
        return GarmentIndex(stored.ver.index_dir, stored.manifest, stored.embeddings, vectors, encoder,
                            stored.ver.version, stored.garments)

    return read_version(index_dir, check, assemble)
