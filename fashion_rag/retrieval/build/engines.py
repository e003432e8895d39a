"""How a build hashes and encodes images: in this process (LocalEngine) or on a Ray cluster
(RayEngine). Both run the plan's per-image steps (plan.hash_image, plan.read_fitted_garment), so
they skip the same images for the same reasons; the plan and the write are shared
(build/__init__.py), so both publish the same index. An engine fills a NewEmbeddings store (row i:
the embedding and garment PNG of the plan's todo[i]) in files, so a 10M-image first build holds
neither embeddings nor images in memory.

On Ray: the listing becomes a Ray dataset; CPU tasks hash (hash_batch), and read, check, decode
and preprocess (prepare_batch) the images, so the driver never reads 10M images; actors hold the
model (EncoderActor: one per GPU, else CPU actors) and encode batches into Parquet shards
(row, reason, detail, error, garment PNG, embedding) that the driver reads into the store. A
small build (SMALL_BUILD new images or fewer: an incremental one) skips the actor pool and its
start-up: a plain task per block prepares and encodes it (encode_block), same shards.
A batch whose worker dies is retried RETRIES times (Ray Data's default, forever, would let one
image that crashes its decoder hang the build), then the build fails naming the images not
encoded. A batch whose code raises is recorded row by row in its "error" column: the other
batches finish, then the build fails naming every such item. Nothing is published on failure.
Every node needs the catalog, the weights and the shard folder at the same paths.
"""

from __future__ import annotations

import math
import os
import secrets
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from ...images import GARMENT_SIZE, PAD_COLOR
from ...logs import ProgressFn
from ...paths import shorten
from ..catalog import Catalog, CatalogItem, Skip
from ..ondisk import Encoder, naming
from .plan import garment_png, hash_image, read_fitted_garment

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
                garment = read_fitted_garment(catalog, item, h)
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


def _failure(exc: Exception) -> str:
    return shorten(f"{type(exc).__name__}: {exc}", 500)


def hash_batch(batch: Any, root: str) -> Any:
    import pyarrow as pa

    catalog = Catalog(Path(root), [])
    rows = batch["row"].to_pylist()
    out: dict[str, list[Any]] = {"sha256": [], "reason": [], "detail": [], "error": []}
    try:
        for path in batch["path"].to_pylist():
            result = hash_image(catalog, CatalogItem("", path, ""))
            skip = result if isinstance(result, Skip) else None
            out["sha256"].append("" if skip else result)
            out["reason"].append(skip.reason if skip else "")
            out["detail"].append(skip.detail if skip else "")
            out["error"].append("")
    except Exception as exc:  # a bug or a broken worker, not a bad image (those are skips)
        out = {"sha256": [""] * len(rows), "reason": [""] * len(rows), "detail": [""] * len(rows),
               "error": [_failure(exc)] * len(rows)}
    columns = {k: pa.array(v, pa.string()) for k, v in out.items()}
    return pa.table({"row": pa.array(rows, pa.int64()), **columns})


def prepare_batch(batch: Any, root: str, encoder: Any) -> dict[str, np.ndarray]:
    """Read, check, decode and preprocess a batch (CPU): pixels and the garment PNG the index
    stores, or the reason an image is skipped."""
    catalog = Catalog(Path(root), [])
    rows = batch["row"].to_pylist()
    blank = Image.new("RGB", GARMENT_SIZE, PAD_COLOR)  # in place of an image that is not encoded
    reasons, details, errors = [""] * len(rows), [""] * len(rows), [""] * len(rows)
    try:
        garments = []
        listed = zip(batch["path"].to_pylist(), batch["sha256"].to_pylist(), strict=True)
        for i, (path, sha) in enumerate(listed):
            result = read_fitted_garment(catalog, CatalogItem("", path, ""), sha)
            if isinstance(result, Skip):
                reasons[i], details[i] = result.reason, result.detail
            garments.append(blank if isinstance(result, Skip) else result)
        pixels = encoder.preprocess_images(garments).numpy()
        pngs = [b"" if reasons[i] else garment_png(g) for i, g in enumerate(garments)]
    except Exception as exc:
        errors = [_failure(exc)] * len(rows)
        pixels = encoder.preprocess_images([blank] * len(rows)).numpy()  # same shape as other batches
        pngs = [b""] * len(rows)
    return {"row": np.asarray(rows, dtype=np.int64), "reason": np.asarray(reasons, dtype=object),
            "detail": np.asarray(details, dtype=object), "error": np.asarray(errors, dtype=object),
            "pixels": pixels, "garment": np.asarray(pngs, dtype=object)}


class EncoderActor:
    """An actor holding the model: pixels -> embeddings, a batch at a time."""

    def __init__(self, encoder: Any, gpu: bool) -> None:
        self.encoder = encoder
        module = encoder.module  # loaded here, once per actor, not in its first batch
        if gpu:
            module.to("cuda")

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        return encode_prepared(self.encoder, batch)


def encode_prepared(encoder: Any, batch: dict[str, np.ndarray], gpu: bool = False) -> Any:
    """A prepared batch (prepare_batch) -> its shard rows: embeddings, garment PNGs, skips, errors.
    The model is loaded (on the GPU with gpu) only when the batch has an image to encode."""
    import pyarrow as pa

    rows = batch["row"].astype(np.int64)
    errors = [str(e) for e in batch["error"]]
    ok = (batch["reason"] == "") & (batch["error"] == "")
    emb = np.zeros((len(rows), int(encoder.dim)), dtype=np.float32)
    try:
        if ok.any():
            if gpu:
                encoder.module.to("cuda")
            emb[ok] = encoder.encode_pixels(batch["pixels"][ok])
    except Exception as exc:  # recorded, not raised: the build names every failing item at the end
        errors = [_failure(exc) if k else e for k, e in zip(ok, errors, strict=True)]
    flat = pa.array(emb.reshape(-1), pa.float32())
    return pa.table({"row": pa.array(rows), "reason": pa.array(list(batch["reason"]), pa.string()),
                     "detail": pa.array(list(batch["detail"]), pa.string()),
                     "error": pa.array(errors, pa.string()),
                     "garment": pa.array(list(batch["garment"]), pa.binary()),
                     "embedding": pa.FixedSizeListArray.from_arrays(flat, emb.shape[1])})


def encode_block(block: Any, root: str, encoder: Any, batch_size: int, gpu: bool, shard: str) -> None:
    """A small build's block in one task: prepare and encode it (the model loaded once, in this
    task), written as one Parquet shard. No actor: see RayEngine.encode."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    tables = [encode_prepared(encoder, prepare_batch(block.slice(start, batch_size), root, encoder), gpu)
              for start in range(0, block.num_rows, batch_size)]
    fs, path = pafs.FileSystem.from_uri(shard)
    folder, name = path.rsplit("/", 1)
    fs.create_dir(folder)
    # Under a hidden name (the shard reader skips it) until whole: a worker killed mid-write by
    # its last try leaves no half shard to read.
    pq.write_table(pa.concat_tables(tables), f"{folder}/.{name}", filesystem=fs)
    fs.move(f"{folder}/.{name}", path)


PREPARE_BATCH = 32  # images a decoding task holds at once (the encoder's batches can be larger)
# Memory a decoding task asks for: a worker with torch and open_clip imported (Ray Data measured
# ~550 MiB), plus one decoded product photo (~5 MP RGB) and its copies per image of its batch.
WORKER_BYTES, DECODED_IMAGE_BYTES = 640 * 2**20, 16 * 2**20
RETRIES = 3  # attempts after the first for a batch whose worker died (preemption, OOM kill, crash)


class RayUnavailableError(ValueError):
    """Ray Data is not installed (it is an optional dependency)."""


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayUnavailableError(
            f"--engine ray needs Ray Data, which is not installed ({exc}): pip install \"fashion-rag[ray]\" "
            "(or pip install \"ray[data]\"), or build with the default --engine local.") from None
    return ray


class RayEngine:
    """Hash and encode on Ray (see the module docstring).

    address: the cluster (as ray.init takes it: "auto", "ray://head:10001", ...); None starts
    a local one unless Ray is already initialised. actors: encoder actors at most (default:
    one per GPU, else one per two CPUs). shards: where the embedding shards go (a folder every
    node sees, or a URI such as s3://bucket/tmp); default: the build's temp folder in the index.
    small_build: builds with this many images to encode or fewer run in plain tasks, larger ones
    on the actor pool (default SMALL_BUILD; 0: always the actor pool).
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, actors: int | None = None, shards: str | None = None,
                 gpus: bool | None = None, small_build: int | None = None) -> None:
        self.address = address
        self.small_build = SMALL_BUILD if small_build is None else small_build
        self.actors = actors
        self.shards = shards
        self.gpus = gpus  # None: use GPUs when the cluster has any

    def _connect(self) -> Any:
        ray = import_ray()
        if not ray.is_initialized():
            import fashion_rag

            # Ship this package with the job, so workers run the driver's code, not another version.
            package = str(Path(fashion_rag.__file__).parent)
            ray.init(address=self.address, runtime_env={"py_modules": [package]})
        return ray

    def hash_images(self, catalog: Catalog, items: Sequence[CatalogItem]) -> list[str | Skip]:
        if not items:
            return []
        ray = self._connect()
        cpus = int(ray.cluster_resources().get("CPU", 1))
        ds = ray.data.from_arrow(_listing(range(len(items)), [i.path for i in items], None, 64, cpus))
        ds = _map_batches(ds, hash_batch, fn_kwargs={"root": str(catalog.root)}, batch_format="pyarrow",
                          num_cpus=1, max_retries=RETRIES)
        results: list[str | Skip | None] = [None] * len(items)
        errors: dict[int, str] = {}
        try:
            batches = list(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
        except Exception as exc:
            raise BuildFailedError(f"hashing the images on Ray failed ({_cause(exc)}); the previous index "
                                   "is unchanged", []) from exc
        for batch in batches:
            cols = (batch[c].to_pylist() for c in ("row", "sha256", "reason", "detail", "error"))
            for row, sha, reason, detail, error in zip(*cols, strict=True):
                if error:
                    errors[row] = error
                else:
                    results[row] = sha if not reason else items[row].skip(reason, detail)
        missing = [i for i, r in enumerate(results) if r is None and i not in errors]
        _raise_failures("hashing", items, errors, missing)
        return results  # type: ignore[return-value]

    def encode(self, catalog: Catalog, todo: Sequence[tuple[str, CatalogItem]], encoder: ImageEncoder,
               batch_size: int, store: NewEmbeddings, work_dir: Path, progress: ProgressFn | None
               ) -> dict[str, Skip]:
        ray = self._connect()
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0) if self.gpus is None else int(self.gpus)
        cpus = int(resources.get("CPU", 1))
        items = [item for _, item in todo]
        shards = f"{self.shards.rstrip('/')}/fashion-rag-{secrets.token_hex(6)}" if self.shards else str(
            work_dir / "shards")
        try:
            try:
                if len(todo) <= self.small_build:
                    _encode_in_tasks(ray, catalog, todo, encoder, batch_size, bool(gpus), shards)
                else:
                    actors = self.actors or (int(gpus) if gpus else max(1, cpus // 2))
                    _encode_on_actors(ray, catalog, todo, encoder, batch_size, int(gpus), actors, cpus,
                                      shards)
            except Exception as exc:  # retries exhausted, or an actor that cannot start
                done = _written_rows(shards)
                failed = [item.id for i, item in enumerate(items) if i not in done]
                raise BuildFailedError(f"the Ray build failed ({_cause(exc)}); {len(failed)} images were not "
                                       f"encoded ({_ids(failed)}); the previous index is unchanged",
                                       failed) from exc
            bad, errors = _read_shards(shards, todo, store)
            _raise_failures("encoding", items, errors, [])
        finally:
            _delete(shards)  # now, not with the build's temp folder: 10M embeddings are 30 GB of shards
        if progress:
            progress(len(todo), len(todo))
        return bad


# A build with this many images to encode or fewer (an incremental one, typically) runs in plain
# tasks, PREPARE_BATCH images each, that also encode: an actor pool costs a fresh process per
# build (torch and open_clip imported, ~2 s of Ray Data's actor start-up on top: 6-9 s measured,
# benchmarks/ray_build.py), where a task runs in a worker Ray keeps between tasks. A task loads
# the model itself, so a large build's thousands of blocks go to actors that load it once.
SMALL_BUILD = 2 * PREPARE_BATCH


def _encode_in_tasks(ray: Any, catalog: Catalog, todo: Sequence[tuple[str, CatalogItem]], encoder: Any,
                     batch_size: int, gpu: bool, shards: str) -> None:
    """Write the shards of a small build: a task per block, retried RETRIES times if its worker
    dies; raises once every task has ended if any did not write its shard."""
    blocks = _listing(range(len(todo)), [item.path for _, item in todo], [h for h, _ in todo],
                      PREPARE_BATCH, 1)
    task = ray.remote(encode_block).options(
        num_cpus=1, num_gpus=1 if gpu else 0, max_retries=RETRIES,
        memory=WORKER_BYTES + PREPARE_BATCH * DECODED_IMAGE_BYTES)
    refs = [task.remote(block, str(catalog.root), encoder, batch_size, gpu, f"{shards}/{i}.parquet")
            for i, block in enumerate(blocks)]
    ray.wait(refs, num_returns=len(refs))  # all ended: none still writing when the shards are read
    for ref in refs:
        ray.get(ref)


def _encode_on_actors(ray: Any, catalog: Catalog, todo: Sequence[tuple[str, CatalogItem]], encoder: Any,
                      batch_size: int, gpus: int, actors: int, cpus: int, shards: str) -> None:
    """Write the shards of a large build: Ray Data's decoding tasks feeding an encoder actor pool."""
    ds = ray.data.from_arrow(_listing(range(len(todo)), [item.path for _, item in todo],
                                      [h for h, _ in todo], batch_size, cpus))
    # The memory request sizes the decoding tasks and, being one the actors do not make, keeps
    # them tasks: Ray Data fuses map steps of equal requests, moving decoding into the actors.
    prepare = min(batch_size, PREPARE_BATCH)
    ds = _map_batches(ds, prepare_batch, fn_kwargs={"root": str(catalog.root), "encoder": encoder},
                      batch_size=prepare, batch_format="pyarrow", num_cpus=1,
                      memory=WORKER_BYTES + prepare * DECODED_IMAGE_BYTES, max_retries=RETRIES)
    ds = _map_batches(ds, EncoderActor, fn_constructor_kwargs={"encoder": encoder, "gpu": bool(gpus)},
                      batch_size=batch_size, batch_format="numpy",
                      compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
                      num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1,
                      max_task_retries=RETRIES)  # (a dead actor is still restarted, however often)
    ds.write_parquet(shards)


def _map_batches(ds: Any, fn: Any, **kwargs: Any) -> Any:
    """ds.map_batches, quietly: Ray Data 2.60 takes the retry limits (max_retries, max_task_retries)
    only as `ray_remote_args`, which it calls deprecated with no named replacement yet; hence the
    ray extra's upper bound (pyproject.toml)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(fn, **kwargs)


def _listing(rows: range, paths: list[str], hashes: list[str] | None, batch_size: int,
             cpus: int) -> list[Any]:
    """The rows as Arrow tables, one Ray block each: the unit a task runs, retries and writes.

    Two blocks per CPU at least (every worker busy), at most 4096 rows (a retry redoes little).
    """
    import pyarrow as pa

    per_block = max(batch_size, min(4096, math.ceil(len(rows) / (2 * cpus))))
    tables = []
    for start in range(0, len(rows), per_block):
        cols = {"row": pa.array(rows[start : start + per_block], pa.int64()),
                "path": pa.array(paths[start : start + per_block], pa.string())}
        if hashes is not None:
            cols["sha256"] = pa.array(hashes[start : start + per_block], pa.string())
        tables.append(pa.table(cols))
    return tables


def _raise_failures(step: str, items: Sequence[CatalogItem], errors: dict[int, str],
                    missing: list[int]) -> None:
    """A BuildFailedError naming every item whose batch raised, or that no worker returned."""
    if not errors and not missing:
        return
    failed = [items[r].id for r in sorted(errors) + missing]
    first = next(iter(errors.values()), "no result returned")
    raise BuildFailedError(f"{step} failed on Ray for {len(failed)} images ({_ids(failed)}): {first}; the "
                           f"previous index is unchanged: fix or remove them and build again", failed)


def _cause(exc: BaseException) -> str:
    """The line that says what went wrong (Ray's errors carry the worker's whole traceback)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return shorten(lines[-1] if lines else type(exc).__name__, 300)


def _ids(ids: list[str]) -> str:
    return ", ".join(shorten(i, 60) for i in ids[:5]) + (f", … ({len(ids)} in all)" if len(ids) > 5 else "")


def _shards(uri: str, columns: list[str] | None = None) -> Iterator[Any]:
    """The record batches of the Parquet shards under `uri` (none when nothing was written)."""
    import pyarrow.dataset as pads

    try:
        shards = pads.dataset(uri, format="parquet")
    except FileNotFoundError:
        return iter(())
    return shards.to_batches(columns=columns) if shards.files else iter(())  # (no files: no columns)


def _written_rows(uri: str) -> set[int]:
    return {int(r) for batch in _shards(uri, ["row"]) for r in batch["row"].to_numpy()}


def _read_shards(uri: str, todo: Sequence[tuple[str, CatalogItem]], store: NewEmbeddings
                 ) -> tuple[dict[str, Skip], dict[int, str]]:
    """Fill the store from the shards; return the Skip of every image a worker refused and the
    error of every row whose batch raised."""
    bad: dict[str, Skip] = {}
    errors: dict[int, str] = {}
    for table in _shards(uri):
        rows = table["row"].to_numpy()
        reasons, details, errs = (table[c].to_pylist() for c in ("reason", "detail", "error"))
        emb = table["embedding"]
        vectors = emb.flatten().to_numpy(zero_copy_only=False).reshape(len(rows), emb.type.list_size)
        ok = np.asarray([not r and not e for r, e in zip(reasons, errs, strict=True)], dtype=bool)
        garments = table["garment"].to_pylist()
        store.put(rows[ok], vectors[ok], [garments[i] for i in np.flatnonzero(ok)])
        for i in np.flatnonzero(~ok):
            h, item = todo[rows[i]]
            if errs[i]:
                errors[int(rows[i])] = errs[i]
            else:
                bad[h] = item.skip(reasons[i], details[i])
    return bad, errors


def _delete(uri: str) -> None:
    import pyarrow.fs as pafs

    try:
        fs, base = pafs.FileSystem.from_uri(uri)
        fs.delete_dir(base)
    except (OSError, ValueError):  # never written, or already gone
        pass
