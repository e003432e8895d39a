"""A build's plan: what the previous index holds, what each image's content is, what to encode.
The per-image steps (hash_image, read_fitted_garment) are what every engine runs, here or on
cluster workers, so all engines skip the same entries for the same reasons.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from ...images import ImageLoadError, decode_image, fit_garment, image_sha256, read_image_bytes
from ...logs import LogFn
from ...paths import PathRuleError
from ..catalog import CHANGED, OUTSIDE, Catalog, CatalogItem, Skip
from ..ondisk import (
    Encoder,
    EncoderRecord,
    IndexFormatError,
    Manifest,
    describe_encoder,
    encoder_record,
    looks_like_index,
    map_embeddings,
    map_file,
    read_version_manifest,
    resolve_version,
    same_embedding_space,
    verify_files,
)


class HashingEngine(Protocol):
    def hash_images(self, catalog: Catalog, items: Sequence[CatalogItem]) -> list[str | Skip]: ...


def hash_image(catalog: Catalog, item: CatalogItem) -> str | Skip:
    """The sha256 of the item's image file, or why it cannot be used (cheap: no decoding).

    A FIFO, device or folder under an image's name is skipped ("not a regular file"), never
    waited on: the build goes on without it.
    """
    try:
        return image_sha256(catalog.image_path(item))
    except ImageLoadError as exc:
        return item.skip(exc.reason, str(exc))
    except PathRuleError as exc:
        return item.skip(OUTSIDE, str(exc))


def garment_png(garment: Image.Image) -> bytes:
    """The fitted garment as the index stores it: PNG, lossless, so retrieval returns exactly
    the pixels the encoder saw (docs/method.md, "Stored garment images")."""
    buf = io.BytesIO()
    garment.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def read_fitted_garment(catalog: Catalog, item: CatalogItem, sha256: str) -> Image.Image | Skip:
    """The item's image in the garment form the encoder takes and the index stores, if its
    content is still `sha256`."""
    try:
        path = catalog.image_path(item)
        data = read_image_bytes(path)
        if hashlib.sha256(data).hexdigest() != sha256:
            return item.skip(CHANGED, f"{path} changed during the build (build again)")
        return fit_garment(decode_image(data, str(path)))
    except ImageLoadError as exc:
        return item.skip(exc.reason, str(exc))
    except PathRuleError as exc:
        return item.skip(OUTSIDE, str(exc))


@dataclass
class BuildPlan:
    """What a build starts from and what it has to encode."""

    enc: EncoderRecord
    old_manifest: Manifest | None
    old_version: str
    old_embeddings: np.ndarray | None  # the previous version's, memory-mapped (same space only)
    old_garments: np.ndarray | None  # the previous version's garment shard, mapped (with old_embeddings)
    old_rows: dict[str, int]  # image content hash -> its row in old_embeddings
    hashed: list[tuple[CatalogItem, str]]  # every usable catalog item and its content hash
    todo: list[tuple[str, CatalogItem]]  # content hashes to encode (one item each), in catalog order
    skipped: list[Skip]


def plan_build(catalog: Catalog, out: Path, encoder: Encoder, engine: HashingEngine, say: LogFn) -> BuildPlan:
    """Hash the catalog's images (through the engine) and decide which to encode.

    Only contents the previous index does not hold are encoded; identical files once.
    """
    enc = encoder_record(encoder)
    old_manifest, old_version, old_emb, old_shard, old_rows = _previous_embeddings(out, enc, say)
    skipped = list(catalog.skipped)
    hashed: list[tuple[CatalogItem, str]] = []
    for item, result in zip(catalog.items, engine.hash_images(catalog, catalog.items), strict=True):
        if isinstance(result, Skip):
            skipped.append(result)
        else:
            hashed.append((item, result))
    todo: dict[str, CatalogItem] = {}
    for item, h in hashed:
        if h not in old_rows:
            todo.setdefault(h, item)
    say(f"{len(hashed)} images: {sum(h in old_rows for _, h in hashed)} unchanged, {len(todo)} to encode")
    return BuildPlan(enc, old_manifest, old_version, old_emb, old_shard, old_rows, hashed, list(todo.items()),
                     skipped)


def _previous_embeddings(out: Path, enc: EncoderRecord, say: LogFn
                         ) -> tuple[Manifest | None, str, np.ndarray | None, np.ndarray | None,
                                    dict[str, int]]:
    """The previous manifest, its version, its embeddings and garment shard, and their rows by
    image hash (same space only)."""
    try:
        ver = resolve_version(out)
        old = read_version_manifest(ver)
    except (IndexFormatError, OSError) as exc:
        if looks_like_index(out):
            say(f"previous index not reusable ({exc}); building from scratch")
        return None, "", None, None, {}
    if not same_embedding_space(old.encoder, enc):
        say(f"previous index used encoder {describe_encoder(old.encoder)}; re-encoding everything")
        return old, ver.version, None, None, {}
    try:
        verify_files(ver, old)
        n, dim = len(old.items.ids), old.encoder.dim
        emb = map_embeddings(ver.data_dir / old.files.embeddings, n, dim, out, old)
        shard = map_file(ver, old, old.files.garments, "garment image file")
    except (IndexFormatError, OSError, PathRuleError) as exc:  # rebuilding is always correct, just slower
        say(f"previous embeddings unusable ({exc}); re-encoding everything")
        return old, ver.version, None, None, {}
    return old, ver.version, emb, shard, {h: i for i, h in enumerate(old.items.sha256)}
