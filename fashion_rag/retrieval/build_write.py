"""A build's last step, the same for every engine: write the new version and swap it in.

Streams: the garment shard is written image by image (stored PNGs from the previous version's
shard, new ones from the engine's store), the embeddings file block by block (reused rows from the previous
version's file, new ones from the engine's NewEmbeddings file), hashed while written, then
memory-mapped to build the vector indexes one part at a time (vector_store.write_vector_parts).
Nothing here holds all the float32 embeddings in memory.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .ann import BLOCK_ROWS, write_vector_parts
from .build_plan import BuildPlan, LogFn
from .catalog import Catalog
from .engines import NewEmbeddings
from .ondisk import (
    EMBEDDINGS,
    FORMAT,
    FORMAT_VERSION,
    GARMENTS,
    BuildLock,
    HashingWriter,
    map_embeddings,
    naming,
    temp_folder,
    write_embeddings_file,
    write_version,
)


def write_garments_file(path: Path, plan: BuildPlan, store: NewEmbeddings | None, hashes: list[str]
                        ) -> tuple[str, list[int], list[int]]:
    """Write the garment shard: each distinct content's stored PNG once (from the previous
    version's shard, or the engine's new ones), in item order. Returns its sha256 and every
    item's (offset, size)."""
    new_rows = {h: i for i, (h, _) in enumerate(plan.todo)}
    old_at = plan.old_manifest["items"] if plan.old_garments is not None and plan.old_manifest else {}
    placed: dict[str, tuple[int, int]] = {}
    offsets, sizes = [], []
    with naming(path), open(path, "wb") as f:
        out, end = HashingWriter(f), 0
        for h in hashes:
            if h not in placed:
                old = plan.old_rows.get(h)
                if old is not None and plan.old_garments is not None:
                    start = old_at["image_offsets"][old]
                    data = bytes(plan.old_garments[start : start + old_at["image_sizes"][old]])
                else:
                    assert store is not None
                    data = store.image(new_rows[h])
                out.write(data)
                placed[h] = (end, len(data))
                end += len(data)
            offsets.append(placed[h][0])
            sizes.append(placed[h][1])
        f.flush()
        os.fsync(f.fileno())
    return out.digest.hexdigest(), offsets, sizes


def embedding_blocks(plan: BuildPlan, store: NewEmbeddings | None, hashes: list[str]) -> Iterator[np.ndarray]:
    """The embedding of each content hash in order, a block of rows at a time."""
    dim = int(plan.enc["dim"])
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


def write_index(lock: BuildLock, catalog: Catalog, plan: BuildPlan, store: NewEmbeddings | None,
                items: dict[str, list[str]], index_type: str, ivf_threshold: int, say: LogFn
                ) -> tuple[str, dict[str, Any]]:
    """Write a new version of the index holding `items` and swap it in (storage.publish).

    Returns the version's name and its vector_index record. Call under the build lock.
    """
    n, dim = len(items["ids"]), int(plan.enc["dim"])
    with temp_folder(lock, version=True) as tmp:
        sha = write_embeddings_file(tmp / EMBEDDINGS, n, dim, embedding_blocks(plan, store, items["sha256"]))
        shard_sha, offsets, sizes = write_garments_file(tmp / GARMENTS, plan, store, items["sha256"])
        emb = map_embeddings(tmp / EMBEDDINGS, n, dim)
        record = write_vector_parts(emb, items["categories"], tmp, index_type, ivf_threshold, log_fn=say)
        del emb  # unmapped before the folder is renamed (Windows cannot rename a mapped file's folder)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "encoder": plan.enc,
            "count": n,
            "vector_index": record,
            "files": {"embeddings": EMBEDDINGS, "garments": GARMENTS},
            "items": {**items, "image_offsets": offsets, "image_sizes": sizes},
        }
        return write_version(lock, tmp, manifest, {EMBEDDINGS: sha, GARMENTS: shard_sha}), record
