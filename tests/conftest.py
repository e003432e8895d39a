"""Shared fixtures: the real ComfyUI, in-process and as a server, with the pack installed."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # comfy_harness, helpers
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `import fashion_rag`

from comfy_harness import InProcessComfy, comfyui_version  # noqa: E402
from tools.harness import ComfyServer, comfy_path  # noqa: E402


def pytest_report_header(config) -> str:
    """Which ComfyUI the suite runs on (COMFYUI_PATH; .ci/test sets it)."""
    try:
        path = comfy_path()
        return f"ComfyUI {'.'.join(map(str, comfyui_version(path)))} at {path}"
    except (RuntimeError, OSError) as exc:
        return f"ComfyUI: {exc}"


def _new_files_in_checkout() -> set[str] | None:
    """Untracked and ignored files of the checkout, as `git status` lists them, or None where
    there is no git checkout. Left out: bytecode caches, and hidden or editor backup files (an
    editor's swap files and tool caches come and go while the tests run)."""
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--ignored", "--untracked-files=all"],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = set()
    for line in out.splitlines():
        status, path = line[:2], line[3:]
        parts = Path(path.strip('"')).parts
        if status not in ("??", "!!") or "__pycache__" in parts or path.endswith((".pyc", "~")):
            continue
        if any(p.startswith((".", "#")) for p in parts):
            continue
        found.add(path)
    return found


# Memory decides the xdist groups (`--dist loadgroup`, .ci/test): a process holding the full-size
# demo weights takes ~5 GB (ViT-H vision, the SD2 text encoder and VAE in fp32), so every test
# that loads them, in-process (`comfy`, `demo_models`) or in the shared server (`comfy_server`),
# runs on one worker, as does a module asking for the server by a fixture the collection cannot
# see (the browser, once it knows Chromium exists). A run then holds them once, as a serial run
# does, never twice on a 24 GB machine. That group is the run's critical path, so nothing else
# goes in it: the benchmark smokes (tiny models in ComfyUI processes of their own) and
# test_missing_dependency (a server on an empty base) peak at 1.4-2.7 GiB with their children,
# below test_unet_architecture's 7.4 GiB on the other worker (benchmarks/RESULTS.md, "Test suite").
FULL_SIZE_GROUP = "full-size-models"
_FULL_SIZE_FIXTURES = {"comfy", "comfy_server", "demo_models"}
_FULL_SIZE_MODULES = {"test_browser"}
# Modules sharing a session fixture on one worker: the benchmark smokes write their tiny model
# files once (`bench_cache`), not once per test.
_SHARED_GROUPS = {"test_precision": "bench-smoke", "test_gpu_check": "bench-smoke",
                  "test_benchmark_memory": "bench-smoke"}
# The groups left out of the run before a commit (`bash .ci/test -m "not slow"`, README): the
# full-size demo weights, the benchmark scripts, a Ray cluster, a fresh process per memory
# figure, a builder killed over and over. ~80 % of the full run's test seconds in ~13 % of its
# tests (benchmarks/RESULTS.md, "Test suite"); CI and a plain `bash .ci/test` run them all.
SLOW_GROUPS = frozenset({FULL_SIZE_GROUP, "bench-smoke", "test_index_ray", "test_batch_ray",
                         "test_load_memory", "test_index_kill"})


def pytest_itemcollected(item) -> None:
    """The xdist groups: the full-size group above; every other module whole on one worker, so
    its module-scoped fixtures (a Ray cluster, built indexes) are built once per run, not once
    per worker; the `slow` mark on SLOW_GROUPS. Marked as each test is collected, before xdist
    reads the groups into the test ids (its pytest_collection_modifyitems); without xdist the
    group marks are inert."""
    module = Path(str(item.fspath)).stem
    fixtures = getattr(item, "fixturenames", ())
    full = module in _FULL_SIZE_MODULES or not _FULL_SIZE_FIXTURES.isdisjoint(fixtures)
    group = FULL_SIZE_GROUP if full else _SHARED_GROUPS.get(module, module)
    item.add_marker(pytest.mark.xdist_group(group))
    if group in SLOW_GROUPS:  # before the mark plugin's -m deselection (collection_modifyitems)
        item.add_marker(pytest.mark.slow)


# Tests that send the same full-size prompt to the shared server: the second runs right after the
# first, so ComfyUI answers it from its output cache (which keeps the last prompt's outputs only)
# instead of a second minute-long 384x512, 50-step run. (module, test) -> the test it follows.
# In-process likewise: the best-of-N test's garment (k 1, "a red striped short-sleeve top") is the
# outfit's second pass's, so right after the outfit run its retrieval and Garment Inversion (one
# full-size ViT-H pass and the text encoder, ~6 s on one thread) come from the executor's cache.
_RUNS_FROM_CACHE = {("test_example_workflow", "test_demo_command_runs_the_example"):
                    ("test_browser", "test_example_workflow_in_the_browser"),
                    ("test_best_of_n", "test_the_best_scored_sample_is_saved"):
                    ("test_outfit", "test_second_pass_keeps_the_first_outside_its_mask")}


def _follow_cached_runs(items: list) -> None:
    """Move each test of _RUNS_FROM_CACHE right after the test it follows, where both run."""
    key = {id(item): (Path(str(item.fspath)).stem, item.name) for item in items}
    for follower, leader in _RUNS_FROM_CACHE.items():
        moving = [item for item in items if key[id(item)] == follower]
        if not moving or not any(key[id(item)] == leader for item in items):
            continue
        for item in moving:
            items.remove(item)
        at = next(i for i, item in enumerate(items) if key[id(item)] == leader)
        items[at + 1:at + 1] = moving


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items) -> None:
    """The order of _RUNS_FROM_CACHE (every worker collects the same order, as xdist requires).
    Then: pytest-xdist 3.8 tells the controller a test's group by a suffix on its id, written to
    `item._nodeid`; pytest 9 keeps the id in `item._id`, so the suffix is lost and loadgroup
    silently spreads a group over every worker (two full-size ComfyUIs: an OOM kill seen
    here). Write it where this pytest reads it, as xdist means to."""
    _follow_cached_runs(items)
    if not config.getoption("loadgroup", False):
        return
    from _pytest.nodeid import NodeId

    for item in items:
        mark = item.get_closest_marker("xdist_group")
        if mark is not None and "@" not in item.nodeid and hasattr(item, "_id"):
            item._id = NodeId.parse(f"{item.nodeid}@{mark.args[0]}")


@pytest.hookimpl(optionalhook=True)  # an xdist hook: inert (and no error) without xdist
def pytest_xdist_make_scheduler(config, log):
    """Under --dist loadgroup, the longest group first (group_schedule.py), so the full-size
    group and the Ray module start at once instead of where their test counts put them."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from group_schedule import make_scheduler

    return make_scheduler(config, log)


@pytest.fixture(scope="session", autouse=True)
def checkout_stays_clean():
    """Tests write into temp folders only: a file a test session adds to the checkout
    (screenshots, benchmark folders, outputs) fails the session at its end."""
    before = _new_files_in_checkout()
    yield
    after = _new_files_in_checkout()
    if before is not None and after is not None:
        new = sorted(after - before)
        assert not new, f"the tests wrote into the checkout: {new[:20]}"


# glibc keeps freed heap for reuse; malloc_trim hands it back (None: another libc, nothing to do).
_LIBC_TRIM = None
with contextlib.suppress(OSError, AttributeError):
    _LIBC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim


@pytest.fixture(scope="module", autouse=True)
def return_freed_memory():
    """After each module (its fixtures gone), collect and return freed memory to the OS: the
    full-size worker kept 1.5-1.9 GB of what a module had freed (test_checkpoint_loader, the
    candidates test: 9.6 -> 7.7 GB, 7.4 -> 5.9 GB), beside the next module's own peak, on a
    machine whose 23 GB the suite fills to ~21 (benchmarks/RESULTS.md, "Memory")."""
    yield
    gc.collect()
    if _LIBC_TRIM is not None:
        _LIBC_TRIM(0)


@pytest.fixture(scope="session")
def comfy_base(tmp_path_factory) -> Path:
    """The base directory (models/, custom_nodes/, output/) shared by in-process and server."""
    return tmp_path_factory.mktemp("comfy_base")


@pytest.fixture(scope="session")
def comfy(comfy_base, demo_models) -> InProcessComfy:
    return InProcessComfy.get(comfy_base)


@pytest.fixture(scope="session")
def comfy_runtime(comfy_base) -> InProcessComfy:
    """Real ComfyUI in-process, without waiting for the demo weights (tests bring tiny ones)."""
    return InProcessComfy.get(comfy_base)


@pytest.fixture(scope="session")
def metric_weights_dir(tmp_path_factory) -> Path:
    """A folder of the demo's metric weights (random, the real layouts: Inception, CLIP, AlexNet,
    LPIPS), linked to files written once into the demo cache. Tests only read it."""
    from tools.demo.metric_weights import write_demo_metric_weights

    folder = tmp_path_factory.mktemp("metric_weights")
    write_demo_metric_weights(folder, log=lambda _: None)
    return folder


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray cluster of 2 CPUs for the module; its GCS address (for processes that join it).
    Its temp folder is a short one under /tmp, not pytest's: Ray makes unix sockets in it
    (<temp>/session_<date>_<pid>/sockets/plasma_store), whose path may hold at most 107 bytes, and
    pytest's folder grows with its run counter: at /tmp/pytest-of-root/pytest-1346/popen-gw1/ray1/
    the path was 108 bytes and every Ray test failed at ray.init."""
    import ray

    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, _temp_dir=temp,
             logging_level="ERROR", configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run ~10x faster on one thread when the CPU cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def comfy_server(comfy_base, demo_models):
    """One ComfyUI server per pytest process (per xdist worker; the groups above keep it to one worker).
    It computes with every core: .ci/test pins each worker to one thread (OMP_NUM_THREADS=1), but
    the full-size demo runs happen here, mostly while the other worker is done or idle. (One thread
    was tried, 2026-12-05: beside a busy core it saved ~28 of ~130 CPU s of the browser test, but
    whole runs took 10 min 59 s and 11 min 1 s with it against 10 min 15 s without; the end-to-end
    evaluation test alone 52 s against 30 s.)"""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    server = ComfyServer(comfy_base, env=env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def demo_models(comfy_base) -> dict:
    """The demo index, random-weight model files and person image, in the shared base dir."""
    from tools.demo.person import install_demo_person
    from tools.demo.weights import install_demo_models

    models = install_demo_models(comfy_base / "models")
    models["person"] = install_demo_person(comfy_base / "input")  # the example's LoadImage
    return models


@pytest.fixture(scope="session")
def index_base(tmp_path_factory) -> Path:
    """A ComfyUI base directory holding the demo index, its tiny encoder and the demo person only:
    for ComfyUI processes whose workflow loads no full-size model (the batch tests'), so that
    their tests need neither the full-size demo weights nor the full-size worker."""
    from tools.demo.catalog import install_demo_index
    from tools.demo.person import install_demo_person
    from tools.harness import make_base_dir

    base = make_base_dir(tmp_path_factory.mktemp("index_base"))
    install_demo_index(base / "models")
    install_demo_person(base / "input")
    return base


@pytest.fixture(scope="session")
def bench_cache(tmp_path_factory) -> Path:
    """The benchmarks' --cache for their smoke runs: the tiny random model files (benchmarks/
    memory_models.py, ~9 s to write) are generated by the first smoke and read by the others."""
    return tmp_path_factory.mktemp("bench_cache")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """The tiny random open_clip encoder's weights (tools/demo/encoder.py), seed 0."""
    from tools.demo.encoder import write_tiny_encoder_weights

    return write_tiny_encoder_weights(tmp_path_factory.mktemp("weights") / "tiny.safetensors", seed=0)


@pytest.fixture(scope="session")
def demo_source(tmp_path_factory) -> Path:
    """The demo catalog (36 garments with metadata.jsonl), written once; copy it to modify it."""
    from tools.demo.catalog import write_demo_catalog

    return write_demo_catalog(tmp_path_factory.mktemp("demo_src") / "catalog", seed=0)


@pytest.fixture
def catalog_dir(tmp_path, demo_source) -> Path:
    """A private, modifiable copy of the demo catalog."""
    import shutil

    return Path(shutil.copytree(demo_source, tmp_path / "catalog"))


@pytest.fixture(scope="session")
def mini_source(tmp_path_factory) -> Path:
    """The mini Dress Code (tools/demo/dresscode.py, 2 pairs per category), written once."""
    from tools.demo.dresscode import write_mini_dresscode

    return write_mini_dresscode(tmp_path_factory.mktemp("dresscode") / "DressCode", per_category=2)


@pytest.fixture
def mini(tmp_path, mini_source) -> Path:
    """A private, modifiable copy of the mini Dress Code."""
    import shutil

    return Path(shutil.copytree(mini_source, tmp_path / "DressCode"))
