"""The Ray engines' pure parts, without a cluster: how `index build --engine ray` cuts the work into
blocks, reads the workers' tables back (results, skips, failures, lost rows), and what a worker
puts in them; and the batch engine's result mapping, resource line and output-file cleanup.
Expected values are written out by hand (or come from hashlib / pyarrow)."""

from __future__ import annotations

import collections
import hashlib
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="Ray Data is optional (pip install \"fashion-rag[ray]\")")
pq = pytest.importorskip("pyarrow.parquet")

from fashion_rag.cli import batch_ray  # noqa: E402
from fashion_rag.cli.comfy_server import PromptFailed  # noqa: E402
from fashion_rag.retrieval.build import engines  # noqa: E402
from fashion_rag.retrieval.build.engines import BuildFailedError  # noqa: E402
from fashion_rag.retrieval.catalog import CatalogItem, Skip  # noqa: E402


def _rows(blocks) -> list[list[int]]:
    return [b["row"].to_pylist() for b in blocks]


def test_blocks_number_every_row_once_two_per_cpu_within_their_bounds():
    """Mutations caught: a block one row short (`table.slice(start, per_block - 1)`: rows lost);
    `math.ceil` -> floor division (3 blocks, not 2, on 2 CPUs); the 4096-row cap dropped or off by one;
    min_rows ignored."""
    paths = [f"p{i}.png" for i in range(10)]
    blocks = engines._blocks({"path": paths}, 1, 2)  # ceil(10 / 4) = 3 rows a block
    assert _rows(blocks) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert [p for b in blocks for p in b["path"].to_pylist()] == paths
    assert _rows(engines._blocks({"path": paths}, 1, 1)) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert _rows(engines._blocks({"path": paths[:7]}, 1, 1)) == [[0, 1, 2, 3], [4, 5, 6]]  # ceil(7 / 2)
    assert _rows(engines._blocks({"path": paths}, 6, 2)) == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9]]  # min_rows
    big = engines._blocks({"path": ["x"] * 10_000}, 1, 1)  # ceil(10000 / 2) = 5000, capped at 4096
    assert [b.num_rows for b in big] == [4096, 4096, 1808]
    assert big[2]["row"].to_pylist()[-1] == 9999


def _items(ids: str) -> list[CatalogItem]:
    return [CatalogItem(i, f"{i}.png", "", row=n + 2, source="metadata.jsonl") for n, i in enumerate(ids)]


def _table(rows, reasons, details, errors, **extra):
    return pa.table({"row": pa.array(rows, pa.int64()), "reason": reasons, "detail": details, "error": errors,
                     **extra})


def test_results_yield_usable_rows_record_skips_and_name_failed_and_lost_items():
    """Rows 0 and 3 usable, row 1 skipped, row 2 skipped and then failed (its batch raised after the
    skip: a failure), row 4 never returned (lost): both named, in row order.
    Mutations caught: the usable filter with or_ (skipped rows passed on as results); lost rows not
    reported (`errors.update(...)` dropped); `lost.discard` dropped; the reason checked before the
    error (a row of a failed batch recorded as a skip); failures named in error order, not row order."""
    items = _items("abcde")
    tables = [_table([2, 0, 1], ["not an image", "", "missing"], ["d2", "", "d1"], ["boom", "", ""],
                     sha256=["", "h0", ""]),
              _table([3], [""], [""], [""], sha256=["h3"])]
    skips: dict[int, Skip] = {}
    usable = []
    with pytest.raises(BuildFailedError) as err:
        for table in engines._results("hashing", tables, items, skips):
            usable.append(table["row"].to_pylist())
    assert usable == [[0], [3]]
    assert skips == {1: Skip("b", "missing", "d1", 3, "metadata.jsonl")}
    assert err.value.failed == ["c", "e"]
    assert str(err.value).startswith(
        "hashing failed on Ray for 2 images ('c', 'e'): boom; the previous index")


def test_results_of_a_complete_run_raise_nothing():
    """Mutation caught: the BuildFailedError raised when nothing failed (`if not errors`)."""
    items = _items("ab")
    skips: dict[int, Skip] = {}
    got = [t["row"].to_pylist() for t in engines._results(
        "encoding", [_table([1, 0], ["", "missing"], ["", "gone"], ["", ""])], items, skips)]
    assert got == [[1]] and skips == {0: Skip("a", "missing", "gone", 2, "metadata.jsonl")}


def test_a_worker_step_that_raises_fails_every_row_of_its_block():
    """A block whose step raises on its third row: every row carries the error (none of them passes
    as a result, not even the rows before or after it).
    Mutation caught: the error set on the raising row only (`columns["error"][i] = ...`: the fourth
    row would come back with no result, no skip and no error, i.e. usable, with an empty hash)."""
    batch = pa.table({"row": [0, 1, 2, 3], "path": ["a", "b", "c", "d"], "sha256": ["", "", "", ""]})
    seen = []

    def step(catalog, item, sha):
        seen.append(item.path)
        if item.path == "a":
            return item.skip("missing", "no a")
        if item.path == "c":
            raise RuntimeError("disk gone")
        return f"result-{item.path}"

    results, columns = engines._worker_rows(batch, "/nonexistent", step)
    assert seen == ["a", "b", "c"]
    assert results == [None, "result-b", None, None]
    assert columns["error"] == ["'RuntimeError: disk gone'"] * 4
    assert columns["reason"] == ["missing", "", "", ""] and columns["detail"] == ["no a", "", "", ""]


def test_hash_batch_hashes_each_image_and_skips_a_missing_one(tmp_path):
    """The hashing task's table: each row's sha256 (hashlib's) or its skip, in the block's row numbers.
    Mutations caught: the rows renumbered from 0 (not the block's own "row" column); sha256 and
    reason columns crossed."""
    (tmp_path / "a.png").write_bytes(b"first image bytes")
    (tmp_path / "c.png").write_bytes(b"third")
    batch = pa.table({"row": pa.array([7, 8, 9], pa.int64()), "path": ["a.png", "b.png", "c.png"]})
    table = engines.hash_batch(batch, str(tmp_path))
    assert table["row"].to_pylist() == [7, 8, 9]
    assert table["sha256"].to_pylist() == [hashlib.sha256(b"first image bytes").hexdigest(), "",
                                           hashlib.sha256(b"third").hexdigest()]
    assert table["reason"].to_pylist() == ["", "missing", ""]
    assert "b.png" in table["detail"].to_pylist()[1] and table["error"].to_pylist() == ["", "", ""]


def test_result_raises_what_the_worker_reported():
    """The batch driver re-raises a worker's outcome as batch.execute raised it.
    Mutations caught: an HTTP outcome's code and reason swapped; the timeout and HTTP branches crossed;
    a prompt_failed outcome returned as a result."""
    with pytest.raises(PromptFailed) as pf:
        batch_ray._result({"prompt_failed": ["execution_error", {"node_id": "4"}]})()
    assert (pf.value.kind, pf.value.payload) == ("execution_error", {"node_id": "4"})
    with pytest.raises(TimeoutError):
        batch_ray._result({"timeout": True})()
    with pytest.raises(urllib.error.HTTPError) as http:
        batch_ray._result({"http": [404, "http://w/view", "Not Found"]})()
    assert (http.value.code, http.value.url, http.value.reason) == (404, "http://w/view", "Not Found")
    image = {"filename": "g_00001_.png", "subfolder": "", "type": "output"}
    entry, fetched = batch_ray._result({"entry": {"outputs": {}}, "images": {
        ("g_00001_.png", "", "output"): b"png bytes"}})()
    assert entry == {"outputs": {}} and fetched.view(image) == b"png bytes"
    assert fetched.view({"filename": "g_00001_.png"}) == b"png bytes"  # subfolder "" and type output


def test_a_row_runs_again_three_times_then_fails_on_its_fourth_worker_death():
    """The batch's count of worker deaths per row (the driver's loop asks it after each death):
    three runs again, the fourth death fails the row with the count and the cause; rows count apart.
    Mutations caught: `died > RETRIES` as `>=` (failed after three deaths); the count not incremented
    (`died[row] = 1`: the row retried for ever); one count shared by all rows."""
    died: collections.Counter[str] = collections.Counter()
    assert [batch_ray._worker_died(died, "r0", "ActorDiedError") for _ in range(3)] == [None] * 3
    assert batch_ray._worker_died(died, "r1", "ActorDiedError") is None  # another row: its own count
    assert batch_ray._worker_died(died, "r0", "ActorDiedError: SIGKILL") == (
        "its worker died 4 times (not run again): ActorDiedError: SIGKILL")
    assert died == {"r0": 4, "r1": 1}


def test_the_start_deadline_holds_only_until_a_worker_has_started():
    """--start-timeout gives up on workers Ray cannot place, while none has started and no row
    runs; after one has started, a batch longer than the timeout (the default is 600 s) goes on
    between its rows. Mutations caught: the started-worker guard dropped (such a batch stopped
    between two rows with "no Ray worker started"); the running-row guard dropped; the deadline
    compared the other way."""
    pool = batch_ray._Pool(None, None, {}, print)
    past, future = time.monotonic() - 1, time.monotonic() + 3600
    assert batch_ray._none_started_in_time(pool, {}, past)
    assert not batch_ray._none_started_in_time(pool, {}, future)
    assert not batch_ray._none_started_in_time(pool, {"ref": "a row"}, past)
    pool.file_inputs = {("LoadImage", "image")}  # what the first started worker reports
    assert not batch_ray._none_started_in_time(pool, {}, past)


def test_resources_line_reads_cpus_and_gpus():
    """Mutations caught: CPU and GPU swapped; a missing GPU key not read as 0."""
    node = {"CPU": 2.0, "GPU": 0.0, "memory": 1e9, "node:10.0.0.1": 1.0}
    assert batch_ray._resources(node) == "2 CPU, 0 GPU"
    assert batch_ray._resources({"CPU": 16.0, "GPU": 0.5}) == "16 CPU, 0.5 GPU"
    assert batch_ray._resources({"CPU": 4.0}) == "4 CPU, 0 GPU"


def test_a_worker_deletes_each_fetched_output_in_its_own_folders_only(tmp_path):
    """A worker deletes each output file once fetched (a worker running for days must not fill its
    disk): the output and temp files named, never a file outside its scratch folder.
    Mutations caught: temp and output folders swapped; the is_relative_to guard inverted or dropped;
    the subfolder ignored."""
    scratch = tmp_path / "scratch"
    for rel in ("output/sub/x.png", "output/x.png", "temp/x.png", "temp/y.png"):
        (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
        (scratch / rel).write_bytes(b"img")
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"not the worker's")
    worker = batch_ray.BatchWorker({})
    worker.scratch = scratch
    worker._forget({"filename": "x.png", "subfolder": "sub", "type": "output"})
    worker._forget({"filename": "y.png", "subfolder": "", "type": "temp"})
    worker._forget({"filename": "victim.png", "subfolder": "../..", "type": "output"})
    left = sorted(str(p.relative_to(scratch)) for p in scratch.rglob("*.png"))
    assert left == ["output/x.png", "temp/x.png"]
    assert victim.read_bytes() == b"not the worker's"
    assert worker.stop() == "" and not scratch.exists() and worker.scratch is None  # no server: no log


def test_shards_of_nothing_written_are_none(tmp_path):
    """A build whose workers wrote nothing (or not into a missing folder) reads no rows; a half-written
    (hidden) shard is not read. Mutation caught: FileNotFoundError not caught (a failed build's
    report raised from reading the shards instead)."""
    assert list(engines._shards(str(tmp_path / "never"))) == []
    (tmp_path / "s").mkdir()
    assert list(engines._shards(str(tmp_path / "s"), ["row"])) == []
    pq.write_table(pa.table({"row": pa.array([5], pa.int64())}), tmp_path / "s" / ".5.parquet")
    pq.write_table(pa.table({"row": pa.array([0, 1], pa.int64())}), tmp_path / "s" / "0.parquet")
    assert [r for b in engines._shards(str(tmp_path / "s"), ["row"]) for r in b["row"].to_pylist()] == [0, 1]


@pytest.fixture(scope="module")
def encoder(tiny_weights):
    from fashion_rag.openclip_encoder import GarmentEncoder
    from tools.demo.encoder import TINY_ARCH

    class FailsOnGreen(GarmentEncoder):
        """The real tiny encoder, raising on a batch holding a mostly green image (a model error), and
        preprocessing none holding a blue one."""

        def encode_pixels(self, pixels):
            px = np.asarray(pixels)
            if ((px[:, 1].mean(axis=(1, 2)) > 1.0) & (px[:, 0].mean(axis=(1, 2)) < -1.0)).any():
                raise ValueError("green poisons the model")
            return super().encode_pixels(pixels)

        def preprocess_images(self, images):
            if any(im.getpixel((192, 256)) == (0, 0, 255) for im in images):
                raise OSError("blue breaks the preprocessing")
            return super().preprocess_images(images)

    return FailsOnGreen(tiny_weights, TINY_ARCH)


def _catalog_block(root: Path, colours: dict[str, tuple[int, int, int] | None], first_row: int):
    from PIL import Image

    paths, shas = [], []
    for name, colour in colours.items():
        if colour is not None:
            Image.new("RGB", (24, 32), colour).save(root / f"{name}.png")
            shas.append(hashlib.sha256((root / f"{name}.png").read_bytes()).hexdigest())
        else:
            shas.append("0" * 64)
        paths.append(f"{name}.png")
    rows = list(range(first_row, first_row + len(paths)))
    return pa.table({"row": pa.array(rows, pa.int64()), "path": paths, "sha256": shas})


def test_a_small_builds_block_is_one_whole_shard_named_by_its_first_row(encoder, tmp_path):
    """encode_block (a small build's task) on five images in batches of two: one shard "<first
    row>.parquet", no hidden half shard left, every row once with its skip or a finite embedding.
    Mutations caught: each batch one row short (`block.slice(start, batch_size - 1)`); the hidden
    shard never moved into place; the shard named by another row."""
    root = tmp_path / "cat"
    root.mkdir()
    block = _catalog_block(root, {"r": (200, 10, 10), "b": (10, 10, 200), "gone": None,
                                  "w": (250, 250, 250), "k": (5, 5, 5)}, first_row=40)
    engines.encode_block(block, str(root), encoder, 2, False, str(tmp_path / "shards"))
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["40.parquet"]
    table = pq.read_table(tmp_path / "shards" / "40.parquet")
    assert table["row"].to_pylist() == [40, 41, 42, 43, 44]
    assert table["reason"].to_pylist() == ["", "", "missing", "", ""]
    assert table["error"].to_pylist() == [""] * 5
    emb = np.asarray(table["embedding"].to_pylist(), dtype=np.float32)
    assert emb.shape[0] == 5 and np.isfinite(emb).all()
    assert (np.abs(emb[[0, 1, 3, 4]]).sum(axis=1) > 0).all() and not emb[2].any()
    assert [len(g) > 0 for g in table["garment"].to_pylist()] == [True, True, False, True, True]


def test_a_model_error_fails_the_rows_it_was_encoding_never_the_skipped_ones(encoder, tmp_path):
    """A batch the model raises on: each image it was encoding carries the error (so the build
    names it), the image already skipped keeps its skip and no error.
    Mutations caught: the error given to the rows not encoded (`if not k`: the encoded rows would
    pass as usable with all-zero embeddings); the model's error not recorded at all."""
    root = tmp_path / "cat"
    root.mkdir()
    block = _catalog_block(root, {"g": (0, 255, 0), "gone": None, "r": (255, 0, 0)}, first_row=0)
    table = engines.encode_prepared(encoder, engines.prepare_batch(block, str(root), encoder))
    assert table["reason"].to_pylist() == ["", "missing", ""]
    errors = table["error"].to_pylist()
    assert errors[1] == "" and errors[0] == errors[2] == "'ValueError: green poisons the model'"


def test_a_batch_whose_preprocessing_raises_fails_every_row_never_encodes_blanks(encoder, tmp_path):
    """A decoding task whose preprocessing raises: every row of the batch carries the error, no garment
    PNG, pixels of the usual shape; the build then names every image of the batch.
    Mutation caught: the error not recorded when preprocessing raises (`columns["error"] = ...`
    dropped: the red and blue images would be encoded from blank pixels and indexed as if fine)."""
    root = tmp_path / "cat"
    root.mkdir()
    block = _catalog_block(root, {"r": (255, 0, 0), "gone": None, "b": (0, 0, 255)}, first_row=0)
    prepared = engines.prepare_batch(block, str(root), encoder)
    assert list(prepared["error"]) == ["'OSError: blue breaks the preprocessing'"] * 3
    assert list(prepared["reason"]) == ["", "missing", ""] and list(prepared["garment"]) == [b""] * 3
    assert prepared["pixels"].shape[0] == 3
    table = engines.encode_prepared(encoder, prepared)
    with pytest.raises(BuildFailedError) as err:
        list(engines._results("encoding", [table], _items("rgb"), {}))
    assert err.value.failed == ["r", "g", "b"]
