"""How a build hashes and encodes images: in this process (LocalEngine) or on a Ray cluster
(RayEngine; what runs where: docs/index-on-ray.md). Both run the per-image steps here (hash_image,
read_fitted_garment), so they skip the same images for the same reasons, and fill a NewEmbeddings
store (row i: the embedding and garment PNG of the plan's todo[i]) kept in files, so a 10M-image
first build holds neither in memory. On Ray the driver never reads an image: CPU tasks hash and
prepare them, the model encodes them into Parquet shards, which the driver reads into the store.
A failed batch fails the build, naming its images, once the other batches have finished.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import secrets
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image

from ... import images
from ...files import naming
from ...logs import ProgressFn, error_line
from ...paths import PathRuleError, listing, shorten
from ..catalog import CHANGED, OUTSIDE, Catalog, CatalogItem, Skip

if TYPE_CHECKING:
    from ...openclip_encoder import GarmentEncoder

T = TypeVar("T")


def _or_skip(item: CatalogItem, step: Callable[[], T]) -> T | Skip:
    """step(), or the item's Skip when its image cannot be used."""
    try:
        return step()
    except images.ImageLoadError as exc:
        return item.skip(exc.reason, str(exc))
    except PathRuleError as exc:
        return item.skip(OUTSIDE, str(exc))


def hash_image(catalog: Catalog, item: CatalogItem) -> str | Skip:
    """The sha256 of the item's image (no decoding); a FIFO, device or folder is skipped, not waited on."""
    return _or_skip(item, lambda: images.image_sha256(catalog.image_path(item)))


def read_fitted_garment(catalog: Catalog, item: CatalogItem, sha256: str) -> Image.Image | Skip:
    """The item's image fitted as a garment (what is encoded and stored), if its content is still `sha256`."""

    def read() -> Image.Image | Skip:
        path = catalog.image_path(item)
        data = images.read_image_bytes(path)
        if hashlib.sha256(data).hexdigest() != sha256:
            return item.skip(CHANGED, f"{path} changed during the build (build again)")
        return images.fit_garment(images.decode_image(data, str(path)))

    return _or_skip(item, read)


def garment_png(garment: Image.Image) -> bytes:
    """The fitted garment as the index stores it: lossless PNG, so retrieval returns the pixels encoded."""
    buf = io.BytesIO()
    garment.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


class BuildFailedError(ValueError):
    """An engine could not encode some images (a worker kept failing): nothing was written."""

    def __init__(self, message: str, failed: list[str]) -> None:
        super().__init__(message)
        self.failed = failed  # ids of the items that were not encoded


class NewEmbeddings:
    """What a build encodes: [n, dim] float32 embeddings and garment PNGs, in files of its temp folder."""

    def __init__(self, folder: Path, n: int, dim: int) -> None:
        path = folder / "new-embeddings.npy"
        self.images_path = folder / "new-garments.bin"
        self.dim = int(dim)
        with naming(path):  # a failed write (a full disk) names the file
            self.vectors = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
            if hasattr(os, "posix_fallocate"):  # (elsewhere the file is not sparse, or there is no way)
                # Allocated now: a full disk is an OSError here, not a SIGBUS when the map writes a page.
                with open(path, "r+b") as f:
                    os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        self.filled = np.zeros(n, dtype=bool)
        self.image_at = np.zeros((n, 2), dtype=np.int64)  # (offset, size) in images_path, per row
        self._images = open(self.images_path, "w+b")  # noqa: SIM115 (closed by close())

    def put(self, rows: np.ndarray, vectors: np.ndarray, pngs: Sequence[bytes]) -> None:
        """Store the embeddings and garment PNGs of todo rows `rows`."""
        rows = np.asarray(rows, dtype=np.int64)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(rows), self.dim) or not np.isfinite(vectors).all():
            # An encoder of another dimension or a broken model: never store it as an embedding.
            raise ValueError(f"the encoder returned {vectors.shape[1:] or 'no'} embeddings for "
                             f"{len(rows)} images where {self.dim}-d ones were expected, or non-finite "
                             f"values; check the encoder weights")
        with naming(self.images_path):
            for row, data in zip(rows, pngs, strict=True):  # (strict: one PNG an embedding)
                self.image_at[row] = (self._images.tell(), len(data))  # (image() reads with pread: no seek)
                self._images.write(data)
        self.vectors[rows] = vectors
        self.filled[rows] = True

    def image(self, row: int) -> bytes:
        offset, size = self.image_at[row]
        self._images.flush()
        return os.pread(self._images.fileno(), int(size), int(offset))

    def close(self) -> None:
        self._images.close()


@dataclass
class LocalEngine:
    """This process, batch by batch (memory: one batch), the encoder's model on `device` (a torch
    device; moved there when the build has images to encode). An engine's two steps: hash_images
    (each item's content hash, or its Skip, in order); encode (todo[i]'s embedding into store row i;
    returns the Skip of each hash not usable; raises on failure; work_dir: the build's own folder,
    removed after)."""

    device: str = "cpu"

    name = "local"

    def hash_images(self, catalog: Catalog, items: Sequence[CatalogItem]) -> list[str | Skip]:
        return [hash_image(catalog, item) for item in items]

    def encode(self, catalog: Catalog, todo: Sequence[tuple[str, CatalogItem]], encoder: GarmentEncoder,
               batch_size: int, store: NewEmbeddings, work_dir: Path, progress: ProgressFn | None
               ) -> dict[str, Skip]:
        encoder.module.to(self.device)  # (the image tower follows: pixels go to its device)
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


def _worker_rows(batch: Any, root: str, step: Callable[[Catalog, CatalogItem, str], Any]
                 ) -> tuple[list[Any], dict[str, list[str]]]:
    """step(catalog, item, sha256 or "") for each row of a block (None where it skipped the image),
    and its reason, detail and error columns: an exception fills "error" for every row."""
    catalog = Catalog(Path(root), [])
    n = batch.num_rows
    shas = batch["sha256"].to_pylist() if "sha256" in batch.column_names else [""] * n
    results: list[Any] = [None] * n
    columns = {"reason": [""] * n, "detail": [""] * n, "error": [""] * n}
    try:
        for i, (path, sha) in enumerate(zip(batch["path"].to_pylist(), shas, strict=True)):
            result = step(catalog, CatalogItem("", path, ""), sha)
            if isinstance(result, Skip):
                columns["reason"][i], columns["detail"][i] = result.reason, result.detail
            else:
                results[i] = result
    except Exception as exc:
        columns["error"] = [_failure(exc)] * n
    return results, columns


def hash_batch(batch: Any, root: str) -> Any:
    """A block's content hashes (a CPU task), as a table of the same columns as the shards'."""
    import pyarrow as pa

    shas, columns = _worker_rows(batch, root, lambda catalog, item, _: hash_image(catalog, item))
    columns["sha256"] = [sha or "" for sha in shas]
    return pa.table({"row": batch["row"], **{k: pa.array(v, pa.string()) for k, v in columns.items()}})


def prepare_batch(batch: Any, root: str, encoder: Any) -> dict[str, np.ndarray]:
    """Read, check, decode and preprocess a batch (CPU): pixels, garment PNGs, skips, errors."""
    garments, columns = _worker_rows(batch, root, read_fitted_garment)
    blank = Image.new("RGB", images.GARMENT_SIZE, images.PAD_COLOR)  # in place of an image not encoded
    try:
        pixels = encoder.preprocess_images([blank if g is None else g for g in garments]).numpy()
        pngs = [b"" if g is None else garment_png(g) for g in garments]
    except Exception as exc:
        columns["error"] = [_failure(exc)] * len(garments)
        pixels = encoder.preprocess_images([blank] * len(garments)).numpy()  # same shape as other batches
        pngs = [b""] * len(garments)
    return {"row": batch["row"].to_numpy(), "pixels": pixels, "garment": np.asarray(pngs, dtype=object),
            **{k: np.asarray(v, dtype=object) for k, v in columns.items()}}


class EncoderActor:
    """Holds the model, loaded (on the GPU with gpu) when it starts, not in its first batch."""

    def __init__(self, encoder: Any, gpu: bool) -> None:
        self.encoder = encoder
        encoder.module.to("cuda" if gpu else "cpu")

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        return encode_prepared(self.encoder, batch)


def encode_prepared(encoder: Any, batch: dict[str, np.ndarray], gpu: bool = False) -> Any:
    """A prepared batch (prepare_batch) -> its shard rows: embeddings, garment PNGs, skips, errors.
    The model is loaded (on the GPU with gpu) only when the batch has an image to encode."""
    import pyarrow as pa

    errors = [str(e) for e in batch["error"]]
    ok = (batch["reason"] == "") & (batch["error"] == "")
    emb = np.zeros((len(ok), int(encoder.dim)), dtype=np.float32)
    try:
        if ok.any():
            if gpu:
                encoder.module.to("cuda")
            emb[ok] = encoder.encode_pixels(batch["pixels"][ok])
    except Exception as exc:  # recorded, not raised: the build names every failing item at the end
        errors = [_failure(exc) if k else e for k, e in zip(ok, errors, strict=True)]
    strings = {"reason": batch["reason"], "detail": batch["detail"], "error": errors}
    return pa.table({"row": pa.array(batch["row"].astype(np.int64)),
                     **{k: pa.array(list(v), pa.string()) for k, v in strings.items()},
                     "garment": pa.array(list(batch["garment"]), pa.binary()),
                     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])})


def encode_block(block: Any, root: str, encoder: Any, batch_size: int, gpu: bool, shards: str) -> None:
    """A small build's block, prepared and encoded in one task: one Parquet shard named by its first row."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    tables = [encode_prepared(encoder, prepare_batch(block.slice(start, batch_size), root, encoder), gpu)
              for start in range(0, block.num_rows, batch_size)]
    fs, folder = pafs.FileSystem.from_uri(shards)
    name = f"{block['row'][0].as_py()}.parquet"
    fs.create_dir(folder)
    # Under a hidden name (the reader skips it) until whole: a worker killed mid-write leaves no half shard.
    pq.write_table(pa.concat_tables(tables), f"{folder}/.{name}", filesystem=fs)
    fs.move(f"{folder}/.{name}", f"{folder}/{name}")


PREPARE_BATCH = 32  # images a decoding task holds at once (the encoder's batches can be larger)
# Memory a decoding task asks for: a worker with torch and open_clip imported (Ray Data measured
# ~550 MiB), plus one decoded product photo (~5 MP RGB) and its copies per image of its batch.
WORKER_BYTES, DECODED_IMAGE_BYTES = 640 * 2**20, 16 * 2**20
# Attempts after the first for a batch whose worker died (preemption, OOM kill, crash): Ray Data's
# default, forever, would let one image that crashes its decoder hang the build.
RETRIES = 3
# Up to this many new images, plain tasks (each loading the model) beat the actor pool's 6-9 s start-up.
SMALL_BUILD = 2 * PREPARE_BATCH


def import_ray() -> Any:
    """Ray, with Ray Data (an optional dependency: one line saying how to install it when missing)."""
    try:
        import ray.data
    except ImportError as exc:
        raise ValueError(
            f"--engine ray needs Ray Data, which is not installed ({exc}): pip install \"fashion-rag[ray]\" "
            "(or pip install \"ray[data]\"), or build with the default --engine local.") from None
    return ray


@dataclass
class RayEngine:
    """Hash and encode on Ray (see the module docstring)."""

    address: str | None = None  # as ray.init takes it ("auto", "ray://head:10001"); None: a local Ray
    _: KW_ONLY
    actors: int | None = None  # encoder actors at most (default: one per GPU, else one per two CPUs)
    shards: str | None = None  # a folder every node sees, or a URI (s3://...); default: in the index
    small_build: int | None = None  # builds encoding at most this many run in tasks (default SMALL_BUILD)

    name = "ray"

    def _connect(self) -> tuple[Any, int, int]:
        ray = import_ray()
        if not ray.is_initialized():
            import fashion_rag

            # Ship this package with the job: workers run the driver's code, not another one.
            package = str(Path(fashion_rag.__file__).parent)
            ray.init(address=self.address, runtime_env={"py_modules": [package]})
        resources = ray.cluster_resources()
        return ray, int(resources.get("CPU", 1)), int(resources.get("GPU", 0))

    def hash_images(self, catalog: Catalog, items: Sequence[CatalogItem]) -> list[str | Skip]:
        if not items:
            return []
        ray, cpus, _ = self._connect()
        try:
            tables = _in_tasks(ray, hash_batch, _blocks({"path": [i.path for i in items]}, 64, cpus),
                               str(catalog.root))
        except Exception as exc:
            raise BuildFailedError(f"hashing the images on Ray failed ({error_line(exc)}); the previous "
                                   "index is unchanged", []) from exc
        results: dict[int, Any] = {}
        for usable in _results("hashing", tables, items, results):
            results.update(zip(usable["row"].to_pylist(), usable["sha256"].to_pylist(), strict=True))
        return [results[r] for r in range(len(items))]

    def encode(self, catalog: Catalog, todo: Sequence[tuple[str, CatalogItem]], encoder: GarmentEncoder,
               batch_size: int, store: NewEmbeddings, work_dir: Path, progress: ProgressFn | None
               ) -> dict[str, Skip]:
        import pyarrow.fs as pafs

        ray, cpus, gpus = self._connect()
        small = len(todo) <= (SMALL_BUILD if self.small_build is None else self.small_build)
        blocks = _blocks({"path": [item.path for _, item in todo], "sha256": [h for h, _ in todo]},
                         PREPARE_BATCH if small else batch_size, cpus)
        items = [item for _, item in todo]
        shards = f"{self.shards.rstrip('/')}/fashion-rag-{secrets.token_hex(6)}" if self.shards else str(
            work_dir / "shards")
        try:
            try:
                if small:
                    _in_tasks(ray, encode_block, blocks, str(catalog.root), encoder, batch_size, gpus > 0,
                              shards, num_gpus=1 if gpus else 0,
                              memory=WORKER_BYTES + PREPARE_BATCH * DECODED_IMAGE_BYTES)
                else:
                    _encode_on_actors(ray, blocks, str(catalog.root), encoder, batch_size, gpus,
                                      self.actors or gpus or max(1, cpus // 2), shards)
            except Exception as exc:  # retries exhausted, or an actor that cannot start
                done = {r for batch in _shards(shards, ["row"]) for r in batch["row"].to_pylist()}
                failed = [item.id for i, item in enumerate(items) if i not in done]
                raise BuildFailedError(f"the Ray build failed ({error_line(exc)}); {len(failed)} images were "
                                       f"not encoded ({listing(failed)}); the previous index is unchanged",
                                       failed) from exc
            skips: dict[int, Skip] = {}
            for usable in _results("encoding", _shards(shards), items, skips):
                emb = usable["embedding"]
                vectors = np.asarray(emb.flatten()).reshape(len(usable), emb.type.list_size)
                store.put(usable["row"].to_numpy(), vectors, usable["garment"].to_pylist())
        finally:
            # Deleted now, not with the build's temp folder: 10M embeddings are 30 GB of shards.
            with contextlib.suppress(OSError, ValueError):  # never written, or already gone
                fs, base = pafs.FileSystem.from_uri(shards)
                fs.delete_dir(base)
        if progress:
            progress(len(todo), len(todo))
        return {todo[row][0]: skip for row, skip in skips.items()}


def _in_tasks(ray: Any, fn: Any, blocks: list[Any], *args: Any, **options: Any) -> list[Any]:
    """fn(block, *args) of every block, each in a plain task retried RETRIES times; raises, if any
    failed, once every task has ended (none still writing when the shards are read)."""
    task = ray.remote(fn).options(num_cpus=1, max_retries=RETRIES, **options)
    refs = [task.remote(block, *args) for block in blocks]
    ray.wait(refs, num_returns=len(refs))
    return ray.get(refs)


def _encode_on_actors(ray: Any, blocks: list[Any], root: str, encoder: Any, batch_size: int, gpus: int,
                      actors: int, shards: str) -> None:
    """Write the shards of a large build: Ray Data's decoding tasks feeding an encoder actor pool."""
    # The memory request sizes the decoding tasks and, being one the actors do not make, keeps
    # them tasks: Ray Data fuses map steps of equal requests, moving decoding into the actors.
    prepare = min(batch_size, PREPARE_BATCH)
    with warnings.catch_warnings():
        # Ray Data 2.60 takes the retry limits only as `ray_remote_args`, which it calls deprecated
        # with no named replacement yet; hence the ray extra's upper bound (pyproject.toml).
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ray.data.from_arrow(blocks).map_batches(
            prepare_batch, fn_kwargs={"root": root, "encoder": encoder}, batch_size=prepare,
            batch_format="pyarrow", num_cpus=1, memory=WORKER_BYTES + prepare * DECODED_IMAGE_BYTES,
            max_retries=RETRIES)
        ds = ds.map_batches(EncoderActor, fn_constructor_kwargs={"encoder": encoder, "gpu": gpus > 0},
                            batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
                            num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1,
                            max_task_retries=RETRIES)  # (a dead actor is still restarted, however often)
        ds.write_parquet(shards)


def _blocks(columns: dict[str, list[str]], min_rows: int, cpus: int) -> list[Any]:
    """The columns, numbered by "row", as Arrow tables, one a task: two per CPU at least (every
    worker busy), of at most 4096 rows (a retry redoes little) and `min_rows` at least."""
    import pyarrow as pa

    n = len(next(iter(columns.values())))
    table = pa.table({"row": pa.array(range(n), pa.int64()),
                      **{k: pa.array(v, pa.string()) for k, v in columns.items()}})
    per_block = max(min_rows, min(4096, math.ceil(n / (2 * cpus))))
    return [table.slice(start, per_block) for start in range(0, n, per_block)]


def _results(step: str, tables: Iterable[Any], items: Sequence[CatalogItem], skips: dict[int, Any]
             ) -> Iterator[Any]:
    """The rows of each worker table that hold a result (the Skip of each image refused goes into
    `skips`, by row); then a BuildFailedError naming every item whose batch raised, or was lost."""
    import pyarrow.compute as pc

    errors: dict[int, str] = {}
    lost = set(range(len(items)))
    for table in tables:
        columns = (table[c].to_pylist() for c in ("row", "reason", "detail", "error"))
        for row, reason, detail, error in zip(*columns, strict=True):
            lost.discard(row)
            if error:
                errors[row] = error
            elif reason:
                skips[row] = items[row].skip(reason, detail)
        yield table.filter(pc.and_(pc.equal(table["reason"], ""), pc.equal(table["error"], "")))
    errors.update(dict.fromkeys(sorted(lost), "no result returned"))
    if errors:
        failed = [items[r].id for r in sorted(errors)]
        raise BuildFailedError(f"{step} failed on Ray for {len(failed)} images ({listing(failed)}): "
                               f"{next(iter(errors.values()))}; the previous index is unchanged: fix or "
                               "remove them and build again", failed)


def _shards(uri: str, columns: list[str] | None = None) -> Iterator[Any]:
    """The record batches of the Parquet shards under `uri` (none when nothing was written)."""
    import pyarrow.dataset as pads

    try:
        shards = pads.dataset(uri, format="parquet")
    except FileNotFoundError:
        return iter(())
    return shards.to_batches(columns=columns) if shards.files else iter(())  # (no files: no columns)


Engine = LocalEngine | RayEngine  # (what build_index takes)
