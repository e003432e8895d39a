"""How a build hashes and encodes images: here, in this process (LocalEngine), or on a Ray
cluster (ray_engine.RayEngine). Everything else about a build is shared (build.py).

An engine fills a NewEmbeddings store: row i holds the embedding of the plan's todo[i] and its
fitted garment image (PNG bytes, stored in the index), in files on disk, so a 10M-image first
build holds neither embeddings nor images in memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from .build_plan import ProgressFn, garment_png, hash_image, load_garment
from .catalog import Catalog, CatalogItem, Skip
from .ondisk import Encoder, naming

NEW_EMBEDDINGS = "new-embeddings.npy"
NEW_GARMENTS = "new-garments.bin"


class BuildFailedError(ValueError):
    """An engine could not encode some images (a worker kept failing): nothing was written."""

    def __init__(self, message: str, failed: list[str]) -> None:
        super().__init__(message)
        self.failed = failed  # ids of the items that were not encoded


class NewEmbeddings:
    """What a build encodes: [n, dim] float32 embeddings and the fitted garment images (PNG), in
    files of the build's temp folder."""

    def __init__(self, folder: Path, n: int, dim: int) -> None:
        self.path = folder / NEW_EMBEDDINGS
        self.images_path = folder / NEW_GARMENTS
        self.dim = int(dim)
        with naming(self.path):  # a failed write (a full disk) names the file
            self.vectors = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32, shape=(n, dim))
            _reserve(self.path)
        self.filled = np.zeros(n, dtype=bool)
        self.image_at = np.zeros((n, 2), dtype=np.int64)  # (offset, size) in images_path, per row
        self._images = open(self.images_path, "w+b")  # noqa: SIM115 (closed by close())
        self._end = 0

    def __len__(self) -> int:
        return len(self.filled)

    def put(self, rows: np.ndarray, vectors: np.ndarray, images: Sequence[bytes]) -> None:
        """Store the embeddings and garment PNGs of todo rows `rows`."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(images) != len(rows):
            raise ValueError(f"{len(images)} garment images for {len(rows)} embeddings")
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(rows), self.dim) or not np.isfinite(vectors).all():
            # An encoder of another dimension or a broken model: never store it as an embedding.
            raise ValueError(f"the encoder returned {vectors.shape[1:] or 'no'} embeddings for "
                             f"{len(rows)} images where {self.dim}-d ones were expected, or non-finite "
                             f"values; check the encoder weights")
        with naming(self.images_path):
            for row, data in zip(rows, images, strict=True):
                self._images.write(data)
                self.image_at[row] = (self._end, len(data))
                self._end += len(data)
        self.vectors[rows] = vectors
        self.filled[rows] = True

    def image(self, row: int) -> bytes:
        offset, size = self.image_at[row]
        self._images.flush()
        return os.pread(self._images.fileno(), int(size), int(offset))

    def close(self) -> None:
        self._images.close()

    @property
    def count(self) -> int:
        return int(self.filled.sum())


def _reserve(path: Path) -> None:
    """Allocate the whole of a new (sparse) file now: a full disk is then an OSError here, not a
    SIGBUS that kills the build when the memory map first writes a page."""
    if not hasattr(os, "posix_fallocate"):  # (Windows, macOS: the file is not sparse there, or no way)
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)


class ImageEncoder(Encoder, Protocol):
    """What an engine needs of an encoder (encoder.GarmentEncoder)."""

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 16) -> np.ndarray: ...


class Engine(Protocol):
    """Hashes a catalog's images and encodes the new ones (see the module docstring)."""

    name: str

    def hash_images(self, catalog: Catalog, items: Sequence[CatalogItem]) -> list[str | Skip]:
        """The content hash of each item's image, or its Skip, in the order given."""
        ...

    def encode(self, catalog: Catalog, todo: Sequence[tuple[str, CatalogItem]], encoder: ImageEncoder,
               batch_size: int, store: NewEmbeddings, work_dir: Path, progress: ProgressFn | None
               ) -> dict[str, Skip]:
        """Put the embedding of todo[i] into store row i; return the Skip of each hash not usable.

        work_dir: a folder of the build's own, removed after the build. On failure, raise:
        nothing is written then.
        """
        ...


class LocalEngine:
    """This process: images read, decoded and encoded batch by batch (memory: one batch)."""

    name = "local"

    def hash_images(self, catalog: Catalog, items: Sequence[CatalogItem]) -> list[str | Skip]:
        return [hash_image(catalog, item) for item in items]

    def encode(self, catalog: Catalog, todo: Sequence[tuple[str, CatalogItem]], encoder: ImageEncoder,
               batch_size: int, store: NewEmbeddings, work_dir: Path, progress: ProgressFn | None
               ) -> dict[str, Skip]:
        bad: dict[str, Skip] = {}
        for start in range(0, len(todo), batch_size):
            batch, rows = [], []
            for row, (h, item) in enumerate(todo[start : start + batch_size], start):
                garment = load_garment(catalog, item, h)
                if isinstance(garment, Skip):
                    bad[h] = garment
                else:
                    batch.append(garment)
                    rows.append(row)
            if batch:
                store.put(np.asarray(rows), encoder.encode_images(batch, batch_size=batch_size),
                          [garment_png(g) for g in batch])
            if progress:
                progress(min(start + batch_size, len(todo)), len(todo))
        return bad
