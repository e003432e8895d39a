"""Building an index: incremental (only new image contents are encoded), safe, reported.

Three steps: plan (build/plan.py: hash every catalog image through the path rule, decide what to
encode), encode (the engine: this process or a Ray cluster, build/engines.py), write (write_index:
the garment shard, the embeddings, the vector indexes and the manifest, streamed, published as a
new version by ondisk.write_version, so a failure or a kill leaves the previous index as it was).
The catalog is never read again after the build. Every entry left out is reported with its
reason; `strict` makes any skip a failed build.
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

import numpy as np

from ...logs import LogFn, ProgressFn, log
from ..ann import (
    BLOCK_ROWS,
    INDEX_TYPES,
    IVF_THRESHOLD,
    overall_type,
    part_kind,
    partition_categories,
    write_vector_parts,
)
from ..catalog import Catalog, Skip
from ..ondisk import (
    EMBEDDINGS,
    GARMENTS,
    BuildLock,
    Files,
    Items,
    Manifest,
    VectorIndexRecord,
    build_lock,
    clean_stale,
    discard_unpublished,
    map_embeddings,
    new_data_file,
    prepare_out,
    temp_folder,
    write_embeddings_file,
    write_version,
)
from .engines import BuildFailedError, Engine, ImageEncoder, LocalEngine, NewEmbeddings
from .plan import BuildPlan, plan_build


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


def build_index(
    catalog: Catalog,
    out_dir: str | os.PathLike[str],
    encoder: ImageEncoder,
    *,
    index_type: str = "auto",
    ivf_threshold: int = IVF_THRESHOLD,
    batch_size: int = 16,
    strict: bool = False,
    log_fn: LogFn | None = None,
    progress: ProgressFn | None = None,
    engine: Engine | None = None,
) -> BuildReport:
    """Build or update the index of `catalog` in `out_dir` (absent, empty or an index:
    ondisk.prepare_out); when nothing changed, nothing is written. engine: LocalEngine() (this
    process) by default, or engines.RayEngine(); both give the same index."""
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index type must be one of {INDEX_TYPES}, not {index_type!r}")
    say = log_fn or log.info
    out = prepare_out(out_dir, catalog.root)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:  # made before the lock is taken, so two first builds lock the same folder
        out.mkdir()
        created = True
    except FileExistsError:
        created = False  # (or made by a build racing this one: the lock decides)
    with build_lock(out) as lock:  # the build that does not get it has changed nothing
        try:
            return _build_locked(catalog, lock, encoder, engine or LocalEngine(), index_type, ivf_threshold,
                                 batch_size, strict, say, progress)
        except BaseException:
            if created:
                discard_unpublished(lock)  # a first build that failed leaves no folder behind
            raise


def _build_locked(catalog: Catalog, lock: BuildLock, encoder: ImageEncoder, engine: Engine, index_type: str,
                  ivf_threshold: int, batch_size: int, strict: bool, say: LogFn, progress: ProgressFn | None
                  ) -> BuildReport:
    cleaned, alone = clean_stale(lock)  # what dead builds left
    if alone:
        say(f"left alone in {lock.out} (no build marker proves a build made them): {', '.join(alone)}")
    plan = plan_build(catalog, lock.out, encoder, engine, say)
    with contextlib.ExitStack() as stack:
        store, bad = None, {}
        if plan.todo:  # (no temp folder otherwise: a build with nothing to encode starts writing late)
            work = stack.enter_context(temp_folder(lock))
            store = NewEmbeddings(work, len(plan.todo), plan.enc.dim)
            stack.callback(store.close)
            bad = engine.encode(catalog, plan.todo, encoder, batch_size, store, work, progress)
            _check_complete(plan, store, bad, engine)
        return _finish(catalog, lock, plan, store, bad, index_type, ivf_threshold, strict, say, cleaned)


def _check_complete(plan: BuildPlan, store: NewEmbeddings, bad: dict[str, Skip], engine: Engine) -> None:
    missing = [item.id for i, (h, item) in enumerate(plan.todo) if not store.filled[i] and h not in bad]
    if missing:  # an engine that lost results must not publish an index with holes in it
        raise BuildFailedError(f"the {engine.name} engine returned no embedding for {len(missing)} images "
                               f"({', '.join(missing[:5])}{', …' if len(missing) > 5 else ''}); the previous "
                               f"index is unchanged: build again", missing)


def _finish(catalog: Catalog, lock: BuildLock, plan: BuildPlan, store: NewEmbeddings | None,
            bad: dict[str, Skip], index_type: str, ivf_threshold: int, strict: bool, say: LogFn,
            cleaned: list[str]) -> BuildReport:
    out = lock.out
    skipped = plan.skipped + list(bad.values())
    first = {h: item for h, item in plan.todo}
    for item, h in plan.hashed:  # copies of a refused file (same content) are refused with it
        if h in bad and first[h] is not item:
            skipped.append(item.skip(bad[h].reason, bad[h].detail))
    kept = [(item, h) for item, h in plan.hashed if h not in bad]
    items = Items([item.id for item, _ in kept], [item.path for item, _ in kept],
                  [item.category for item, _ in kept], [item.caption for item, _ in kept],
                  [h for _, h in kept], [], [])  # (the images' places: when written)
    old = plan.old_manifest
    old_ids = set(old.items.ids) if old else set()
    encoded = store.count if store is not None else 0
    report = BuildReport(out, len(kept), encoded, len(kept) - sum(h not in plan.old_rows for _, h in kept),
                         len(old_ids - set(items.ids)), "", written=False, version=plan.old_version,
                         skipped=skipped, cleaned=cleaned)
    if strict and skipped:
        raise SkippedItemsError(report)
    if not kept:
        shown = "; ".join(str(s) for s in skipped[:3])
        raise ValueError(f"No usable garment images in catalog {catalog.root}"
                         + (f" ({len(skipped)} skipped: {shown})" if skipped else "")
                         + ". Point --catalog at a folder of garment images (or a metadata file "
                           "listing them).")
    groups = partition_categories(items.categories)
    counts = Counter(items.categories)
    parts = [(list(g), part_kind(index_type, sum(counts[c] for c in g), ivf_threshold)) for g in groups]
    report.index_type = overall_type(k for _, k in parts)
    if (old is not None and plan.old_rows and old.encoder == plan.enc
            and dataclasses.replace(old.items, image_offsets=[], image_sizes=[]) == items
            and [(p.categories, p.type) for p in old.vector_index.parts] == parts):
        say(f"index {out} is up to date ({len(kept)} garments)")
        return report
    report.version, record = write_index(lock, plan, store, items, index_type, ivf_threshold, say)
    report.written = True
    report.cleaned += clean_stale(lock)[0]  # versions before the previous one
    factories = ", ".join(sorted({p.factory for p in record.parts}))
    say(f"index written to {out} ({report.version}): {report.summary()}, {factories}")
    return report


# The last step, the same for every engine. Streamed: the garment shard image by image and the
# embeddings block by block (reused ones from the previous version, new ones from the engine's
# store), hashed while written, then memory-mapped to build the vector indexes one part at a time.

def write_garments_file(path: Path, plan: BuildPlan, store: NewEmbeddings | None, hashes: list[str]
                        ) -> tuple[str, list[int], list[int]]:
    """Write the garment shard: each distinct content's stored PNG once (from the previous
    version's shard, or the engine's new ones), in item order. Returns its sha256 and every
    item's (offset, size)."""
    new_rows = {h: i for i, (h, _) in enumerate(plan.todo)}
    placed: dict[str, tuple[int, int]] = {}
    offsets, sizes = [], []
    with new_data_file(path) as out:
        end = 0
        for h in hashes:
            if h not in placed:
                old = plan.old_rows.get(h)
                if old is not None and plan.old_garments is not None and plan.old_manifest is not None:
                    start = plan.old_manifest.items.image_offsets[old]
                    data = bytes(plan.old_garments[start : start + plan.old_manifest.items.image_sizes[old]])
                else:
                    assert store is not None
                    data = store.image(new_rows[h])
                out.write(data)
                placed[h] = (end, len(data))
                end += len(data)
            offsets.append(placed[h][0])
            sizes.append(placed[h][1])
    return out.digest.hexdigest(), offsets, sizes


def embedding_blocks(plan: BuildPlan, store: NewEmbeddings | None, hashes: list[str]) -> Iterator[np.ndarray]:
    """The embedding of each content hash in order, a block of rows at a time."""
    dim = plan.enc.dim
    new_rows = {h: i for i, (h, _) in enumerate(plan.todo)}
    for start in range(0, len(hashes), BLOCK_ROWS):
        chunk = hashes[start : start + BLOCK_ROWS]
        old = np.fromiter((plan.old_rows.get(h, -1) for h in chunk), np.int64, len(chunk))
        block = np.empty((len(chunk), dim), dtype=np.float32)
        reused = old >= 0
        if reused.any():
            assert plan.old_embeddings is not None
            block[reused] = plan.old_embeddings[old[reused]]
        if not reused.all():
            assert store is not None
            new = np.fromiter((new_rows[h] for h, r in zip(chunk, reused, strict=True) if not r), np.int64)
            block[~reused] = store.vectors[new]
        yield block


def write_index(lock: BuildLock, plan: BuildPlan, store: NewEmbeddings | None,
                items: Items, index_type: str, ivf_threshold: int, say: LogFn
                ) -> tuple[str, VectorIndexRecord]:
    """Write a new version of the index holding `items` and swap it in (ondisk.write_version).

    Returns the version's name and its vector_index record. Call under the build lock.
    """
    n, dim, hashes = len(items.ids), plan.enc.dim, items.sha256
    with temp_folder(lock, version=True) as tmp:
        sha = write_embeddings_file(tmp / EMBEDDINGS, n, dim, embedding_blocks(plan, store, hashes))
        shard_sha, offsets, sizes = write_garments_file(tmp / GARMENTS, plan, store, hashes)
        emb = map_embeddings(tmp / EMBEDDINGS, n, dim)
        record = write_vector_parts(emb, items.categories, tmp, index_type, ivf_threshold, log_fn=say)
        del emb  # unmapped before the folder is renamed (Windows cannot rename a mapped file's folder)
        manifest = Manifest(plan.enc, n, record, Files(EMBEDDINGS, GARMENTS, {}, {}),
                            dataclasses.replace(items, image_offsets=offsets, image_sizes=sizes),
                            built=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        return write_version(lock, tmp, manifest, {EMBEDDINGS: sha, GARMENTS: shard_sha}), record
