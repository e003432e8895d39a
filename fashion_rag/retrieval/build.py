"""Building an index: incremental (only new image contents are encoded), safe, reported.

A build reads the catalog's images through the path rule, hashes them, encodes the new ones,
and publishes a new version of the index folder (storage.py), so a failure or a kill leaves
the previous index as it was. Every catalog entry it leaves out is reported by id (and
metadata line) with its reason; `strict` turns any such skip into a failed build.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import images
from ..files import sha256_file
from ..images import TOO_LARGE, ImageLoadError, decode_image, fit_garment, read_image_bytes
from ..logs import log
from .catalog import CHANGED, OUTSIDE, Catalog, CatalogItem, Skip
from .index import map_embeddings, read_version_manifest, verify_files
from .manifest import (
    EMBEDDINGS,
    FORMAT,
    FORMAT_VERSION,
    Encoder,
    IndexFormatError,
    describe_encoder,
    encoder_record,
    same_embedding_space,
)
from .paths import PathRuleError
from .storage import (
    build_lock,
    clean_stale,
    discard_unpublished,
    looks_like_index,
    prepare_out,
    publish,
    resolve_version,
)
from .vector_store import VECTORS, VectorStore, create_vector_store, partition_categories
from .vectors import INDEX_TYPES, IVF_THRESHOLD, part_kind

ProgressFn = Callable[[int, int], None]
LogFn = Callable[[str], None]


@dataclass
class BuildReport:
    """What a build did: counts, the version it published, and every entry it skipped."""

    index_dir: Path
    items: int  # garments in the index now
    encoded: int  # images run through the encoder in this build
    reused: int  # embeddings kept from the previous build (same image content)
    removed: int  # previous items no longer in the catalog
    index_type: str
    written: bool  # False when nothing changed and the index was left untouched
    version: str = ""  # the version folder now current
    skipped: list[Skip] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)  # stale build folders / versions deleted

    def skip_counts(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped))

    def summary(self) -> str:
        """One line: indexed / encoded / reused / removed / skipped by reason."""
        counts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skip_counts().items()))
        return (f"{self.items} garments indexed ({self.encoded} encoded, {self.reused} reused, "
                f"{self.removed} removed), {len(self.skipped)} skipped" + (f" ({counts})" if counts else ""))


class SkippedItemsError(ValueError):
    """A strict build that skipped catalog entries: nothing was written."""

    def __init__(self, report: BuildReport) -> None:
        super().__init__(f"{len(report.skipped)} catalog entries skipped and --strict given: the index was "
                         f"not written ({report.summary()}). Fix or remove those entries and build again.")
        self.report = report


def _previous_embeddings(out_dir: Path, enc: dict[str, Any], say: LogFn
                         ) -> tuple[dict[str, Any] | None, str, dict[str, np.ndarray]]:
    """The previous manifest, its version and its embeddings by image hash (same space only)."""
    try:
        ver = resolve_version(out_dir)
        old = read_version_manifest(ver)
    except (IndexFormatError, OSError) as exc:
        if looks_like_index(out_dir):
            say(f"previous index not reusable ({exc}); building from scratch")
        return None, "", {}
    if not same_embedding_space(old["encoder"], enc):
        say(f"previous index used encoder {describe_encoder(old['encoder'])}; re-encoding everything")
        return old, ver.version, {}
    try:
        verify_files(ver, old)
        n, dim = len(old["items"]["ids"]), int(old["encoder"]["dim"])
        emb = map_embeddings(ver.data_dir / old["files"]["embeddings"], n, dim, out_dir, old)
    except (IndexFormatError, OSError, PathRuleError) as exc:  # rebuilding is always correct, just slower
        say(f"previous embeddings unusable ({exc}); re-encoding everything")
        return old, ver.version, {}
    return old, ver.version, {h: emb[i] for i, h in enumerate(old["items"]["sha256"])}


def _hash_items(catalog: Catalog, skipped: list[Skip]) -> list[tuple[CatalogItem, str]]:
    """Pass 1: the content hash of every usable image (cheap, streaming)."""
    hashed = []
    for item in catalog.items:
        try:
            path = catalog.image_path(item)
            size = path.stat().st_size
            if size > images.MAX_IMAGE_BYTES:
                skipped.append(item.skip(TOO_LARGE, f"{path} is {size:,} bytes, more than "
                                                    f"{images.MAX_IMAGE_BYTES:,}"))
                continue
            hashed.append((item, sha256_file(path)))
        except PathRuleError as exc:
            skipped.append(item.skip(OUTSIDE, str(exc)))
        except OSError as exc:
            reason = "missing" if isinstance(exc, FileNotFoundError) else "unreadable"
            skipped.append(item.skip(reason, f"cannot read {item.path} ({exc.strerror or exc})"))
    return hashed


def build_index(
    catalog: Catalog,
    out_dir: str | os.PathLike[str],
    encoder: Encoder,
    *,
    index_type: str = "auto",
    ivf_threshold: int = IVF_THRESHOLD,
    batch_size: int = 16,
    strict: bool = False,
    log_fn: LogFn | None = None,
    progress: ProgressFn | None = None,
) -> BuildReport:
    """Build or update the index of `catalog` in `out_dir` (see the module docstring).

    out_dir must be absent, empty or an index (storage.prepare_out). Only images whose content
    is not in the previous index are encoded; when nothing changed at all nothing is written.
    On any error the previous index stays as it was.
    """
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index type must be one of {INDEX_TYPES}, not {index_type!r}")
    say = log_fn or log.info
    out = prepare_out(out_dir, catalog.root)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with build_lock(out):
            return _build_locked(catalog, out, encoder, index_type, ivf_threshold, batch_size, strict, say,
                                 progress)
    except BaseException:
        if created:
            discard_unpublished(out)  # a first build that failed leaves no folder behind
        raise


def _build_locked(catalog: Catalog, out: Path, encoder: Encoder, index_type: str, ivf_threshold: int,
                  batch_size: int, strict: bool, say: LogFn, progress: ProgressFn | None) -> BuildReport:
    cleaned = clean_stale(out)  # what dead builds left
    enc = encoder_record(encoder)
    old_manifest, old_version, old_emb = _previous_embeddings(out, enc, say)
    skipped = list(catalog.skipped)
    hashed = _hash_items(catalog, skipped)
    todo: dict[str, CatalogItem] = {}  # identical files (same hash) are encoded once
    for item, h in hashed:
        if h not in old_emb:
            todo.setdefault(h, item)
    say(f"{len(hashed)} images: {sum(h in old_emb for _, h in hashed)} unchanged, {len(todo)} to encode")
    new_emb, bad = _encode(catalog, list(todo.items()), encoder, batch_size, skipped, progress)
    for item, h in hashed:  # copies of a refused file (same content) are refused with it
        if h in bad and todo[h] is not item:
            skipped.append(item.skip(bad[h].reason, bad[h].detail))

    kept = [(item, h) for item, h in hashed if h not in bad]
    items = {
        "ids": [item.id for item, _ in kept],
        "paths": [item.path for item, _ in kept],
        "categories": [item.category for item, _ in kept],
        "captions": [item.caption for item, _ in kept],
        "sha256": [h for _, h in kept],
    }
    old_ids = set(old_manifest["items"]["ids"]) if old_manifest else set()
    report = BuildReport(out, len(kept), len(new_emb), len(kept) - sum(h in new_emb for _, h in kept),
                         len(old_ids - set(items["ids"])), "", written=False, version=old_version,
                         skipped=skipped, cleaned=cleaned)
    if strict and skipped:
        raise SkippedItemsError(report)
    if not kept:
        shown = "; ".join(str(s) for s in skipped[:3])
        raise ValueError(f"No usable garment images in catalog {catalog.root}"
                         + (f" ({len(skipped)} skipped: {shown})" if skipped else "")
                         + ". Point --catalog at a folder of garment images (or a metadata file "
                           "listing them).")
    groups = partition_categories(items["categories"])
    plan = [(list(g), part_kind(index_type, sum(c in g for c in items["categories"]), ivf_threshold))
            for g in groups]
    kinds = {k for _, k in plan}
    report.index_type = kinds.pop() if len(kinds) == 1 else "mixed"
    if (old_manifest is not None and old_emb and old_manifest.get("format_version") == FORMAT_VERSION
            and old_manifest["items"] == items and old_manifest["encoder"] == enc
            and [(p["categories"], p["type"]) for p in old_manifest["vector_index"]["parts"]] == plan
            and old_manifest["catalog_root"] == str(catalog.root)):
        say(f"index {out} is up to date ({len(kept)} garments)")
        return report

    emb = np.stack([old_emb[h] if h in old_emb else new_emb[h] for _, h in kept]).astype(np.float32)
    vectors = create_vector_store(emb, items["categories"], index_type, ivf_threshold, log_fn=say)
    manifest, writers = _manifest_and_writers(catalog, out, enc, items, emb, vectors)
    report.version = publish(out, writers, manifest)
    report.written = True
    report.cleaned += clean_stale(out)  # versions before the previous one
    say(f"index written to {out} ({report.version}): {report.summary()}, {vectors.factory}")
    return report


def _encode(catalog: Catalog, todo: list[tuple[str, CatalogItem]], encoder: Encoder, batch_size: int,
            skipped: list[Skip], progress: ProgressFn | None
            ) -> tuple[dict[str, np.ndarray], dict[str, Skip]]:
    """Pass 2: decode and encode the new images, batch by batch (memory stays one batch).

    Returns the embeddings by content hash, and the skip of each hash that could not be used.
    """
    new_emb: dict[str, np.ndarray] = {}
    bad: dict[str, Skip] = {}
    for start in range(0, len(todo), batch_size):
        batch, hashes = [], []
        for h, item in todo[start : start + batch_size]:
            try:
                path = catalog.image_path(item)
                data = read_image_bytes(path)
                if hashlib.sha256(data).hexdigest() != h:
                    bad[h] = item.skip(CHANGED, f"{path} changed during the build (build again)")
                else:
                    batch.append(fit_garment(decode_image(data, str(path))))
                    hashes.append(h)
            except ImageLoadError as exc:
                bad[h] = item.skip(exc.reason, str(exc))
            except PathRuleError as exc:
                bad[h] = item.skip(OUTSIDE, str(exc))
            if h in bad:
                skipped.append(bad[h])
        if batch:
            vecs = np.asarray(encoder.encode_images(batch, batch_size=batch_size), dtype=np.float32)
            new_emb.update(zip(hashes, vecs, strict=True))
        if progress:
            progress(min(start + batch_size, len(todo)), len(todo))
    return new_emb, bad


Writers = dict[str, Callable[[Path], None]]


def _manifest_and_writers(catalog: Catalog, out: Path, enc: dict[str, Any], items: dict[str, list[str]],
                          emb: np.ndarray, vectors: VectorStore) -> tuple[dict[str, Any], Writers]:
    import faiss
    from safetensors.numpy import save_file

    writers: Writers = {
        EMBEDDINGS: lambda path: save_file({"embeddings": np.ascontiguousarray(emb)}, str(path))}
    record = vectors.record()
    for i, (part, rec) in enumerate(zip(vectors.parts, record["parts"], strict=True)):
        if part.vectors.kind == "ivf":
            rec["file"] = VECTORS.format(i)
            writers[rec["file"]] = lambda path, index=part.vectors.index: faiss.write_index(index, str(path))
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "encoder": enc,
        "catalog_root": str(catalog.root),
        "catalog_root_relative": os.path.relpath(catalog.root, out),
        "count": len(items["ids"]),
        "vector_index": record,
        "files": {"embeddings": EMBEDDINGS},
        "items": items,
    }
    return manifest, writers
