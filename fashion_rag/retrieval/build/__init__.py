"""Building an index: incremental (only new image contents are encoded), safe, reported.

Three steps: plan (plan_build: hash every catalog image through the path rule, decide what to
encode), encode (the engine: this process or a Ray cluster, build/engines.py), write (write_index:
garment shard and embeddings streamed from the previous version and the engine's store, hashed
while written, then the vector indexes one part at a time; published by ondisk.write_version, so
a failure or a kill leaves the previous index as it was). The catalog is never read again after
the build. Every entry left out is reported with its reason; `strict` makes any skip a failed build.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...files import hashed_file
from ...logs import LogFn, ProgressFn, log
from ...paths import PathRuleError, listing
from .. import ann, ondisk
from ..catalog import Catalog, CatalogItem, Skip
from ..ondisk import BuildLock, Items, Manifest, build_lock
from .engines import BuildFailedError, Engine, LocalEngine, NewEmbeddings

if TYPE_CHECKING:
    from ...openclip_encoder import GarmentEncoder


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

    def summary(self) -> str:
        """One line: indexed / encoded / reused / removed / skipped by reason."""
        by_reason = Counter(s.reason for s in self.skipped)
        counts = ", ".join(f"{n} {reason}" for reason, n in sorted(by_reason.items()))
        return (f"{self.items} garments indexed ({self.encoded} encoded, {self.reused} reused, "
                f"{self.removed} removed), {len(self.skipped)} skipped" + (f" ({counts})" if counts else ""))


class SkippedItemsError(ValueError):
    """A strict build that skipped catalog entries: nothing was written."""

    def __init__(self, report: BuildReport) -> None:
        super().__init__(f"{len(report.skipped)} catalog entries skipped and --strict given: the index was "
                         f"not written ({report.summary()}). Fix or remove those entries and build again.")
        self.report = report


@dataclass
class BuildPlan:
    """What a build starts from and what it has to encode."""

    enc: ondisk.EncoderRecord
    old_manifest: Manifest | None = None
    old_version: str = ""
    old_embeddings: np.ndarray | None = None  # the previous version's, memory-mapped (same space only)
    old_garments: np.ndarray | None = None  # its garment shard, mapped (with old_embeddings)
    old_rows: dict[str, int] = field(default_factory=dict)  # image content hash -> its row in both
    hashed: list[tuple[CatalogItem, str]] = field(default_factory=list)  # usable items, content hash
    todo: list[tuple[str, CatalogItem]] = field(default_factory=list)  # to encode: one item a content
    skipped: list[Skip] = field(default_factory=list)


def build_index(
    catalog: Catalog,
    out_dir: str | os.PathLike[str],
    encoder: GarmentEncoder,
    *,
    index_type: str = "auto",
    ivf_threshold: int = ann.IVF_THRESHOLD,
    batch_size: int = 16,
    strict: bool = False,
    log_fn: LogFn | None = None,
    progress: ProgressFn | None = None,
    engine: Engine | None = None,
) -> BuildReport:
    """Build or update the index of `catalog` in `out_dir` (absent, empty or an index:
    ondisk.prepare_out); when nothing changed, nothing is written. engine: LocalEngine() (this
    process) by default, or engines.RayEngine(); both give the same index."""
    if index_type not in ann.INDEX_TYPES:
        raise ValueError(f"index type must be one of {ann.INDEX_TYPES}, not {index_type!r}")
    say = log_fn or log.info
    out = ondisk.prepare_out(out_dir, catalog.root)
    out.parent.mkdir(parents=True, exist_ok=True)
    created = False  # made here, before the lock is taken, so two first builds lock the same folder
    with contextlib.suppress(FileExistsError):  # (or made by a build racing this one: the lock decides)
        out.mkdir()
        created = True
    with build_lock(out) as lock:  # the build that does not get it has changed nothing
        try:
            return _build_locked(catalog, lock, encoder, engine or LocalEngine(), index_type, ivf_threshold,
                                 batch_size, strict, say, progress)
        except BaseException:
            if created:
                ondisk.discard_unpublished(lock)  # a first build that failed leaves no folder behind
            raise


def _build_locked(catalog: Catalog, lock: BuildLock, encoder: GarmentEncoder, engine: Engine, index_type: str,
                  ivf_threshold: int, batch_size: int, strict: bool, say: LogFn, progress: ProgressFn | None
                  ) -> BuildReport:
    out = lock.out
    cleaned, alone = ondisk.clean_stale(lock)  # what dead builds left
    if alone:
        say(f"left alone in {out} (no build marker proves a build made them): {', '.join(alone)}")
    plan = plan_build(catalog, out, encoder, engine, say)
    with contextlib.ExitStack() as stack:
        store, bad = None, {}
        if plan.todo:  # (no temp folder otherwise: a build with nothing to encode starts writing late)
            work = stack.enter_context(ondisk.temp_folder(lock))
            store = stack.enter_context(contextlib.closing(NewEmbeddings(work, len(plan.todo), plan.enc.dim)))
            bad = engine.encode(catalog, plan.todo, encoder, batch_size, store, work, progress)
            missing = [item.id for (h, item), filled in zip(plan.todo, store.filled, strict=True)
                       if not filled and h not in bad]
            if missing:  # an engine that lost results must not publish an index with holes in it
                raise BuildFailedError(f"the {engine.name} engine returned no embedding for {len(missing)} "
                                       f"images ({listing(missing)}); the previous index is unchanged: "
                                       "build again", missing)
        first = dict(plan.todo)
        copies = [item.skip(bad[h].reason, bad[h].detail)  # of a refused file (same content): refused with it
                  for item, h in plan.hashed if h in bad and first[h] is not item]
        skipped = plan.skipped + list(bad.values()) + copies
        kept = [(item, h) for item, h in plan.hashed if h not in bad]
        items = Items([item.id for item, _ in kept], [item.path for item, _ in kept],
                      [item.category for item, _ in kept], [item.caption for item, _ in kept],
                      [h for _, h in kept], [], [])  # (the images' places: when written)
        old = plan.old_manifest
        encoded = int(store.filled.sum()) if store is not None else 0
        report = BuildReport(out, len(kept), encoded, sum(h in plan.old_rows for _, h in kept),
                             len(set(old.items.ids) - set(items.ids)) if old else 0, "", written=False,
                             version=plan.old_version, skipped=skipped, cleaned=cleaned)
        if strict and skipped:
            raise SkippedItemsError(report)
        if not kept:
            shown = "; ".join(str(s) for s in skipped[:3])
            raise ValueError(f"No usable garment images in catalog {catalog.root}"
                             + (f" ({len(skipped)} skipped: {shown})" if skipped else "")
                             + ". Point --catalog at a folder of garment images (or a metadata file "
                               "listing them).")
        counts = Counter(items.categories)
        parts = [(list(g), ann.part_kind(index_type, sum(counts[c] for c in g), ivf_threshold))
                 for g in ann.partition_categories(items.categories)]
        report.index_type = ann.overall_type(k for _, k in parts)
        if (old is not None and plan.old_rows and old.encoder == plan.enc
                and dataclasses.replace(old.items, image_offsets=[], image_sizes=[]) == items
                and [(p.categories, p.type) for p in old.vector_index.parts] == parts):
            say(f"index {out} is up to date ({len(kept)} garments)")
            return report
        report.version, record = write_index(lock, plan, store, items, index_type, ivf_threshold, say)
        report.written = True
        report.cleaned += ondisk.clean_stale(lock)[0]  # versions before the previous one
        factories = ", ".join(sorted({p.factory for p in record.parts}))
        say(f"index written to {out} ({report.version}): {report.summary()}, {factories}")
        return report


def plan_build(catalog: Catalog, out: Path, encoder: GarmentEncoder, engine: Engine, say: LogFn) -> BuildPlan:
    """Hash the catalog's images (through the engine) and decide which to encode: only contents
    the previous index does not hold, identical files once, in catalog order."""
    plan = _previous(out, ondisk.encoder_record(encoder), say)
    plan.skipped = list(catalog.skipped)
    todo: dict[str, CatalogItem] = {}
    for item, result in zip(catalog.items, engine.hash_images(catalog, catalog.items), strict=True):
        if isinstance(result, Skip):
            plan.skipped.append(result)
        else:
            plan.hashed.append((item, result))
            if result not in plan.old_rows:
                todo.setdefault(result, item)
    plan.todo = list(todo.items())
    unchanged = sum(h in plan.old_rows for _, h in plan.hashed)
    say(f"{len(plan.hashed)} images: {unchanged} unchanged, {len(todo)} to encode")
    return plan


def _previous(out: Path, enc: ondisk.EncoderRecord, say: LogFn) -> BuildPlan:
    """A plan from the previous version: its manifest, and its embeddings and shard when in the same space."""
    try:
        ver = ondisk.resolve_version(out)
        old = ondisk.read_version_manifest(ver)
    except (ondisk.IndexFormatError, OSError) as exc:
        if ondisk.looks_like_index(out):
            say(f"previous index not reusable ({exc}); building from scratch")
        return BuildPlan(enc)
    if not ondisk.same_embedding_space(old.encoder, enc):
        say(f"previous index used encoder {ondisk.describe_encoder(old.encoder)}; re-encoding everything")
        return BuildPlan(enc, old, ver.version)
    try:
        ondisk.verify_files(ver, old)
        n, dim = len(old.items.ids), old.encoder.dim
        emb = ondisk.map_embeddings(ver.data_dir / old.files.embeddings, n, dim, out, old)
        shard = ondisk.map_file(ver, old, old.files.garments, "garment image file")
    except (ondisk.IndexFormatError, OSError, PathRuleError) as exc:
        say(f"previous embeddings unusable ({exc}); re-encoding everything")
        return BuildPlan(enc, old, ver.version)
    return BuildPlan(enc, old, ver.version, emb, shard, {h: i for i, h in enumerate(old.items.sha256)})


def _embedding_blocks(plan: BuildPlan, store: NewEmbeddings | None, new_rows: dict[str, int],
                      hashes: list[str]) -> Iterator[np.ndarray]:
    """The embedding of each content hash in order, a block of rows at a time."""
    for start in range(0, len(hashes), ann.BLOCK_ROWS):
        chunk = hashes[start : start + ann.BLOCK_ROWS]
        reused = np.fromiter((h in plan.old_rows for h in chunk), bool, len(chunk))
        block = np.empty((len(chunk), plan.enc.dim), dtype=np.float32)
        if reused.any():
            block[reused] = plan.old_embeddings[[plan.old_rows[h] for h in chunk if h in plan.old_rows]]
        if not reused.all():
            block[~reused] = store.vectors[[new_rows[h] for h in chunk if h not in plan.old_rows]]
        yield block


def write_index(lock: BuildLock, plan: BuildPlan, store: NewEmbeddings | None,
                items: Items, index_type: str, ivf_threshold: int, say: LogFn
                ) -> tuple[str, ondisk.VectorIndexRecord]:
    """Write and publish a new version holding `items` (ondisk.write_version): its name and vector_index."""
    n, dim, hashes = len(items.ids), plan.enc.dim, items.sha256
    new_rows = {h: i for i, (h, _) in enumerate(plan.todo)}
    placed: dict[str, tuple[int, int]] = {}  # content hash -> (offset, size) of its PNG in the shard
    with ondisk.temp_folder(lock, version=True) as tmp:
        blocks = _embedding_blocks(plan, store, new_rows, hashes)
        sha = ondisk.write_embeddings_file(tmp / ondisk.EMBEDDINGS, n, dim, blocks)
        with hashed_file(tmp / ondisk.GARMENTS) as shard:  # each content's PNG once, in item order
            for h in dict.fromkeys(hashes):
                old = plan.old_rows.get(h)
                if old is None:
                    data = store.image(new_rows[h])
                else:
                    start = plan.old_manifest.items.image_offsets[old]
                    data = bytes(plan.old_garments[start : start + plan.old_manifest.items.image_sizes[old]])
                placed[h] = (shard.f.tell(), len(data))
                shard.write(data)
        offsets, sizes = (list(column) for column in zip(*(placed[h] for h in hashes), strict=True))
        emb = ondisk.map_embeddings(tmp / ondisk.EMBEDDINGS, n, dim)
        record = ann.write_vector_parts(emb, items.categories, tmp, index_type, ivf_threshold, log_fn=say)
        del emb  # unmapped before the folder is renamed (Windows cannot rename a mapped file's folder)
        manifest = Manifest(plan.enc, n, record, ondisk.Files(ondisk.EMBEDDINGS, ondisk.GARMENTS, {}, {}),
                            dataclasses.replace(items, image_offsets=offsets, image_sizes=sizes),
                            built=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        sums = {ondisk.EMBEDDINGS: sha, ondisk.GARMENTS: shard.digest.hexdigest()}
        return ondisk.write_version(lock, tmp, manifest, sums), record
