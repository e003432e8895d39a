"""A build's last step, the same for every engine: write the new version and swap it in.

Streams: the embeddings file is written block by block (reused rows from the previous
version's file, new ones from the engine's NewEmbeddings file), hashed while written, then
memory-mapped to build the vector indexes one part at a time (vector_store.write_vector_parts).
Nothing here holds all the float32 embeddings in memory.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .build_plan import BuildPlan, LogFn
from .catalog import Catalog
from .engines import NewEmbeddings
from .index import map_embeddings
from .manifest import EMBEDDINGS, FORMAT, FORMAT_VERSION
from .storage import BuildLock, naming, publish, temp_folder
from .vector_rows import BLOCK_ROWS
from .vector_store import write_vector_parts


def write_embeddings_file(path: Path, n: int, dim: int, blocks: Iterable[np.ndarray]) -> str:
    """Write a safetensors file holding one [n, dim] float32 tensor "embeddings", from row blocks.

    The bytes are those of safetensors' own save_file (compact JSON header padded with spaces
    to 8 bytes); returns their sha256, computed while writing.
    """
    with naming(path):  # a failed write (a full disk) names the file
        return _write_embeddings(path, n, dim, blocks)


def _write_embeddings(path: Path, n: int, dim: int, blocks: Iterable[np.ndarray]) -> str:
    nbytes = n * dim * 4
    header = json.dumps({"embeddings": {"dtype": "F32", "shape": [n, dim], "data_offsets": [0, nbytes]}},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    digest = hashlib.sha256()
    written = 0
    with open(path, "wb") as f:
        for part in (len(header).to_bytes(8, "little"), header):
            f.write(part)
            digest.update(part)
        for block in blocks:
            data = np.ascontiguousarray(block, dtype="<f4")
            if data.ndim != 2 or data.shape[1] != dim or written + len(data) > n:
                raise ValueError(f"embedding block of shape {data.shape} does not fit a [{n}, {dim}] file")
            f.write(memoryview(data).cast("B"))
            digest.update(memoryview(data).cast("B"))
            written += len(data)
        f.flush()
        os.fsync(f.fileno())
    if written != n:
        raise ValueError(f"{written} embedding rows written where {n} were expected")
    return digest.hexdigest()


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
        emb = map_embeddings(tmp / EMBEDDINGS, n, dim)
        record = write_vector_parts(emb, items["categories"], tmp, index_type, ivf_threshold, log_fn=say)
        del emb  # unmapped before the folder is renamed (Windows cannot rename a mapped file's folder)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "encoder": plan.enc,
            "catalog_root": str(catalog.root),
            "catalog_root_relative": os.path.relpath(catalog.root, lock.out),
            "count": n,
            "vector_index": record,
            "files": {"embeddings": EMBEDDINGS},
            "items": items,
        }
        return publish(lock, tmp, manifest, {EMBEDDINGS: sha}), record
