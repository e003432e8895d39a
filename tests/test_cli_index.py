"""`python -m fashion_rag index build|info|query` as users run it (subprocesses)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from cli_runs import run_cli
from PIL import Image

from fashion_rag.openclip_encoder import GarmentEncoder
from fashion_rag.retrieval.build import build_index
from fashion_rag.retrieval.catalog import scan_catalog
from fashion_rag.retrieval.index import load_index
from fashion_rag.retrieval.ondisk import resolve_version
from tools.demo.catalog import write_demo_catalog
from tools.demo.encoder import TINY_ARCH, write_tiny_encoder_weights

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fashion_rag", "index", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _cli_runs(*commands: tuple) -> list[SimpleNamespace]:
    """`index` commands, in order, each in a process of its own (cli_runs.py: one interpreter
    start for them all, not ~3 s of imports each), as `_cli` results."""
    results = run_cli([["index", *map(str, args)] for args in commands], deadline=120)
    return [SimpleNamespace(returncode=r["rc"], stdout=r["stdout"], stderr=r["stderr"]) for r in results]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    weights = write_tiny_encoder_weights(root / "tiny.safetensors", seed=0)
    catalog = write_demo_catalog(root / "catalog", seed=0)
    (catalog / "upper_body" / "broken.png").write_bytes(b"not an image")
    (catalog / "metadata.jsonl").open("a").write(
        json.dumps({"id": "broken", "image": "upper_body/broken.png", "category": "upper_body"}) + "\n")
    return root, weights, catalog


def test_build_info_query(setup):
    root, weights, catalog = setup
    out = root / "index"
    build = ("build", "--catalog", catalog, "--out", out, "--encoder", "fashion-rag-tiny",
             "--weights", weights)
    r = _cli(*build)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # progress and problems go to stderr
    assert "encoded 37/37" in r.stderr and "RANDOM demo weights" in r.stderr
    default = "cuda" if torch.cuda.is_available() else "cpu"  # --device's default
    assert f"[index] encoding on {default}\n" in r.stderr
    assert "skipped: 'broken' (metadata.jsonl line 37): not an image: " in r.stderr  # by id, row, reason
    assert "36 garments indexed (36 encoded, 0 reused, 0 removed), 1 skipped (1 not an image)" in r.stderr
    strict, info, query_json, query_image = _cli_runs(
        (*build[:-2], "--out", root / "strict", "--weights", weights, "--strict"),
        ("info", out),
        ("query", out, "red striped trousers", "-k", "3", "--mode", "caption", "--json"),
        ("query", out, "a dress", "-k", "4", "--category", "dresses", "--mode", "image",
         "--weights", weights, "--exclude", "dress00"))
    # --strict: any skip fails the build, and nothing is written.
    r = strict
    assert r.returncode == 1 and "skipped: 'broken'" in r.stderr and "--strict" in r.stderr
    assert "Traceback" not in r.stderr and not (root / "strict").exists()

    r = info
    assert r.returncode == 0, r.stderr
    assert "garments  36" in r.stdout and "upper_body: 12" in r.stdout and "dresses: 12" in r.stdout
    assert "fashion-rag-tiny" in r.stdout and "RANDOM demo weights" in r.stdout
    assert "catalog" not in r.stdout  # an index names no folder outside itself

    r = query_json
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["caption"] == "red striped trousers" and (catalog / hits[0]["path"]).is_file()

    r = query_image
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 4 and all("dresses" in line for line in lines)
    assert not any(" dress00 " in line for line in lines)


def test_errors_are_one_clear_line(setup, tmp_path):
    root, weights, catalog = setup
    before = sorted(p for p in catalog.rglob("*"))
    build = ("build", "--catalog", catalog, "--out", tmp_path / "i", "--encoder", "fashion-rag-tiny",
             "--weights", weights)
    nothing, missing, onto_catalog, long_pin, *devices = _cli_runs(
        ("info", tmp_path / "nothing"),
        ("build", "--catalog", tmp_path / "missing", "--out", tmp_path / "i", "--weights", weights),
        ("build", "--catalog", catalog, "--out", catalog, "--encoder", "fashion-rag-tiny",
         "--weights", weights),
        ("query", root / "index", "top", "-k", "3", "--mode", "caption", "--pin", "x" * 100_000),
        (*build, "--device", "cuda:99"), (*build, "--device", "gpu0"), (*build, "--device", "meta"),
        (*build, "--device", "cpu", "--engine", "ray"))
    r = nothing
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "No garment index" in r.stderr and "index build" in r.stderr
    r = missing
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    # --out equal to --catalog deleted every catalog image (exit code 0) before issue 7.
    r = onto_catalog
    assert r.returncode == 2 and "is the catalog folder" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and sorted(p for p in catalog.rglob("*")) == before
    r = long_pin
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr) < 400
    # A device the build cannot encode on is refused before the catalog is read or a model loaded.
    expected = ("--device cuda:99: torch sees", "--device 'gpu0' is not a device to encode on",
                "--device 'meta' is not a device to encode on", "--device applies to the local engine")
    for r, message in zip(devices, expected, strict=True):
        assert r.returncode == 2 and message in r.stderr and "[index] catalog" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "i").exists()


# Every file `index info` / `index query` opens, and what each kind of planted file must be called.
INDEX_FILES = ("index.json", "manifest.json", "embeddings.npy", "vectors-0.faiss", "vectors-1.faiss",
               "vectors-2.faiss", "garments.bin")
PLANTED = {"fifo": "is not a regular file", "socket": "is not a regular file", "dev_zero": "outside",
           "sparse_1tib": "1099511627776 bytes, more than"}


def _plant(path: Path, kind: str) -> None:
    """Replace `path` by a FIFO, a socket, a symlink to /dev/zero or a 1 TiB sparse file."""
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "sparse_1tib":
        with open(path, "wb") as f:
            f.truncate(1 << 40)
    else:  # a socket path is limited to ~107 bytes: bind it in a short folder, then move it
        with tempfile.TemporaryDirectory(dir="/tmp") as short:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(f"{short}/s")
            os.replace(f"{short}/s", path)


@pytest.fixture(scope="module")
def planted_runs(setup, tmp_path_factory) -> dict[tuple[str, str, str], dict]:
    """`index info` and `index query` on copies of an IVF index, each with one file replaced by
    each kind of planted file: {(kind, file, command): result}, from one run_cli call."""
    root, weights, catalog = setup
    index = root / "ivf_index"  # a .faiss file per category (3), built in this process
    build_index(scan_catalog(catalog), index, GarmentEncoder(weights, TINY_ARCH), index_type="ivf",
                log_fn=lambda m: None)
    assert sorted(p.name for p in resolve_version(index).data_dir.glob("*.faiss")) == list(INDEX_FILES[3:6])
    work = tmp_path_factory.mktemp("planted")
    keys, commands = [], []
    for kind in PLANTED:
        for name in INDEX_FILES:
            copy = Path(shutil.copytree(index, work / kind / name))
            _plant(copy / name if name == "index.json" else resolve_version(copy).data_dir / name, kind)
            for command in (["info", copy], ["query", copy, "striped", "--mode", "caption"]):
                keys.append((kind, name, command[0]))
                commands.append(["index", *map(str, command)])
    return dict(zip(keys, run_cli(commands), strict=True))


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_a_special_file_in_place_of_any_index_file_is_refused_at_once(planted_runs, kind):
    """Issue 24, items 6-7: a FIFO there hung `index info/query` (and the loader node's whole
    prompt queue); a symlink to /dev/zero or a huge file grew the process without bound."""
    for name in INDEX_FILES:
        for command in ("info", "query"):
            r = planted_runs[kind, name, command]
            case = f"{kind} as {name}, index {command}: {r}"
            assert r["rc"] == 2, case  # None: still running at the deadline (hung)
            assert r["stdout"] == "" and "Traceback" not in r["stderr"], case
            lines = r["stderr"].strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("[index] error: "), case
            # What is wrong (the file, and why), and what to do.
            assert name in lines[0] and PLANTED[kind] in lines[0] and "index build" in lines[0], case


def test_a_fifo_among_catalog_images_is_skipped_and_the_build_goes_on(setup, tmp_path):
    """Issue 24, item 7: a FIFO named like an image hung the build at hashing (then failed it)."""
    root, weights, _ = setup
    folder = tmp_path / "folder_catalog"  # found by the folder scan
    (folder / "dresses").mkdir(parents=True)
    listed = tmp_path / "listed_catalog"  # named by a metadata row
    (listed / "dresses").mkdir(parents=True)
    for catalog in (folder, listed):
        Image.new("RGB", (30, 40), (200, 0, 0)).save(catalog / "dresses" / "red.png")
        os.mkfifo(catalog / "dresses" / "fifo.png")
    (listed / "metadata.jsonl").write_text(
        '{"id": "red", "image": "dresses/red.png", "caption": "red dress"}\n'
        '{"id": "fifo", "image": "dresses/fifo.png", "caption": "a pipe"}\n')
    build = ["index", "build", "--encoder", TINY_ARCH, "--weights", str(weights), "--catalog"]
    results = run_cli([[*build, str(folder), "--out", str(tmp_path / "a")],
                       [*build, str(listed), "--out", str(tmp_path / "b")],
                       [*build, str(folder), "--out", str(tmp_path / "c"), "--strict"]], deadline=120)
    for r, row in zip(results[:2], ("", " (metadata.jsonl line 2)"), strict=True):
        assert r["rc"] == 0, r
        assert f"skipped: 'fifo'{row}: not a regular file: " in r["stderr"], r
        assert "1 garments indexed (1 encoded, 0 reused, 0 removed), 1 skipped (1 not a regular file)" in (
            r["stderr"])
    assert load_index(tmp_path / "a").ids == load_index(tmp_path / "b").ids == ["red"]
    strict = results[2]
    assert strict["rc"] == 1 and "skipped: 'fifo': not a regular file" in strict["stderr"], strict
    assert not (tmp_path / "c").exists()


# --------------------------------------------------------------------------------------------
# Issue 24: every expected failure of a build is one line naming the path, exit code 2
# --------------------------------------------------------------------------------------------

def _mount_small_disk(where: Path) -> bool:
    """A 1 MB tmpfs at `where`, where this user may mount one (root); False otherwise."""
    where.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0 and os.path.ismount(where)


def _fill(disk: Path, leave: int) -> None:
    """Fill the disk but for `leave` bytes."""
    (disk / "filler").unlink(missing_ok=True)
    st = os.statvfs(disk)
    (disk / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - leave))


def _index_files(out: Path) -> dict[str, bytes]:
    # (the lock file is the running build's: not part of the index)
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != ".build.lock"}


def _captioned(catalog: Path, tag: str, where: Path) -> Path:
    """A metadata file of the catalog with every caption changed: a build of it writes a new version."""
    rows = [json.loads(line) for line in (catalog / "metadata.jsonl").read_text().splitlines()]
    where.write_text("".join(json.dumps({**r, "caption": f"{r['caption']} {tag}"}) + "\n" for r in rows))
    return where


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert [line for line in lines if "error" in line.lower()] == lines[-1:], r.stderr[-3000:]
    return lines[-1]


def _file_size_limit(nbytes: int):
    """A preexec_fn: writes past `nbytes` in a file fail (EFBIG) instead of killing the process."""
    def limit() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return limit


# What an encoding build does with its disk: rows written into a memory map of a new file.
ENCODING_STORE = """
import sys
from pathlib import Path
import numpy as np
from fashion_rag.retrieval.build.engines import NewEmbeddings
store = NewEmbeddings(Path(sys.argv[1]), 20_000, 32)
store.put(np.arange(20_000), np.ones((20_000, 32), np.float32), [b"png"] * 20_000)
print("stored")
"""


def test_issue24_a_full_disk_fails_in_one_line_naming_the_file(catalog_dir, tiny_weights, tmp_path):
    from fashion_rag.openclip_encoder import GarmentEncoder
    from fashion_rag.retrieval.build import build_index
    from fashion_rag.retrieval.catalog import scan_catalog
    from fashion_rag.retrieval.index import load_index

    disk = tmp_path / "disk"
    mounted = _mount_small_disk(disk)
    try:
        out = disk / "idx"
        encoder = GarmentEncoder(tiny_weights, "fashion-rag-tiny")
        meta = {tag: _captioned(catalog_dir, tag, tmp_path / f"meta_{tag}.jsonl") for tag in "ab"}
        build_index(scan_catalog(catalog_dir, meta["a"]), out, encoder)
        cli_meta, preexec = meta["b"], None
        if mounted:
            # The disk full at each write of a build in turn (0, 1, 2, ... pages left).
            failed = []
            # One page at a time, but across the garment shard in one jump (its size: the current
            # version's, the same images), so every later file's write fails once too.
            shard_pages = (resolve_version(out).data_dir / "garments.bin").stat().st_size // 4096
            pages, jumped = 0, False
            while pages < 512:
                before = _index_files(out)
                _fill(disk, pages * 4096)
                try:
                    build_index(scan_catalog(catalog_dir, meta["b"]), out, encoder, index_type="ivf",
                                log_fn=lambda m: None)
                    break
                except OSError as exc:
                    assert exc.filename and Path(exc.filename).is_relative_to(out), repr(exc)
                    failed.append((pages, Path(exc.filename).name))
                assert _index_files(out) == before and len(load_index(out)) == 36
                if failed[-1][1] == "garments.bin" and not jumped:
                    pages, jumped = pages + max(shard_pages - 2, 0), True
                pages += 1
            print("failed writes (free pages, file):", failed)
            names = [name for _, name in failed]
            assert "embeddings.npy" in names and any(n.endswith(".faiss") for n in names), failed
            assert {"manifest.json", "index.json"} <= set(names), failed
            _fill(disk, next(p for p, name in failed if name.endswith(".faiss")) * 4096)
            cli_meta = meta["a"]  # (the index holds b now)
        else:  # no tmpfs here: a file size limit makes the writes fail instead
            preexec = _file_size_limit(2048)
        before = _index_files(out)
        args = ["build", "--catalog", catalog_dir, "--metadata", cli_meta, "--out", out, "--encoder",
                "fashion-rag-tiny", "--weights", tiny_weights, "--index-type", "ivf"]
        r = subprocess.run([sys.executable, "-m", "fashion_rag", "index", *map(str, args)], cwd=REPO,
                           capture_output=True, text=True, timeout=300, preexec_fn=preexec)
        line = _one_error_line(r)
        assert str(out) in line and (".faiss" in line if mounted else "embeddings.npy" in line), line
        assert ("No space left" if mounted else "File too large") in line
        assert _index_files(out) == before and len(load_index(out)) == 36
        # Encoding: the full disk is an error naming the file, not a SIGBUS from the memory map.
        work = disk / "work"
        work.mkdir()
        if mounted:
            _fill(disk, 2 * 4096)  # room for the file's first and last pages only: the map's writes fail
        r = subprocess.run([sys.executable, "-c", ENCODING_STORE, str(work)], cwd=REPO, capture_output=True,
                           text=True, timeout=300, preexec_fn=preexec)
        assert r.returncode == 1 and "stored" not in r.stdout, (r.returncode, r.stderr[-2000:])
        error = r.stderr.strip().splitlines()[-1]
        assert error.startswith("OSError") and str(work / "new-embeddings.npy") in error, error
    finally:
        if mounted:
            subprocess.run(["umount", "--lazy", str(disk)], check=True)  # (maps of its files may remain)


def test_issue24_a_folder_where_a_file_is_expected_is_one_line(catalog_dir, tiny_weights, tmp_path):
    from fashion_rag.openclip_encoder import GarmentEncoder
    from fashion_rag.retrieval.build import build_index
    from fashion_rag.retrieval.catalog import scan_catalog
    from fashion_rag.retrieval.ondisk import resolve_version

    out = tmp_path / "idx"
    encoder = GarmentEncoder(tiny_weights, "fashion-rag-tiny")
    build_index(scan_catalog(catalog_dir), out, encoder)
    before = _index_files(out)
    (out / ".build.lock").unlink()
    (out / ".build.lock").mkdir()
    with pytest.raises(ValueError) as err:  # (the CLI: one line, exit code 2)
        build_index(scan_catalog(catalog_dir), out, encoder)
    assert str(out) in str(err.value) and ".build.lock" in str(err.value), str(err.value)
    assert _index_files(out) == before and (out / ".build.lock").is_dir()
    manifest = resolve_version(out).data_dir / "manifest.json"
    manifest.unlink()
    manifest.mkdir()
    (info,) = _cli_runs(("info", out))
    line = _one_error_line(info)
    # (read as a regular file only: a folder there is "not a regular file", never a raw [Errno 21])
    assert "not a regular file" in line and str(manifest) in line and "index build" in line, line


def test_issue23_query_does_not_tell_whether_the_manifests_weights_path_exists(setup, tmp_path):
    """Issue 23: without --weights, `index query` opened the manifest's weights_path, so whoever
    placed an index learnt from the answer whether a path outside it exists."""
    root, weights, _ = setup
    catalog = tmp_path / "catalog"
    (catalog / "dresses").mkdir(parents=True)
    Image.new("RGB", (30, 40), (200, 0, 0)).save(catalog / "dresses" / "red.png")
    built = tmp_path / "built"
    build_index(scan_catalog(catalog), built, GarmentEncoder(weights, TINY_ARCH), log_fn=lambda m: None)
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not weights")
    commands = []
    for name, target in (("exists", secret), ("missing", tmp_path / "outside" / "absent.txt")):
        copy = Path(shutil.copytree(built, tmp_path / name))
        manifest_file = resolve_version(copy).data_dir / "manifest.json"
        manifest = json.loads(manifest_file.read_text())
        manifest["encoder"]["weights_path"] = str(target)
        manifest_file.write_text(json.dumps(manifest))
        commands.append(["index", "query", str(copy), "red dress"])
    exists, missing = run_cli(commands)
    assert exists["rc"] == missing["rc"] == 2, (exists, missing)
    assert exists["stderr"] == missing["stderr"], (exists, missing)
    assert "--weights" in exists["stderr"] and "absent" not in exists["stderr"] and "secret" not in (
        exists["stderr"])


def test_build_device_benchmark_smoke(tmp_path, capsys):
    """benchmarks/build_device.py (`index build --device` per device; its GPU figures in
    benchmarks/RESULTS.md) runs, in this process: the tiny encoder, 24 garments, the CPU."""
    saved = list(sys.path)
    try:
        sys.path.insert(0, str(REPO / "benchmarks"))
        import build_device
    finally:
        sys.path[:] = saved
    assert build_device.main(["--smoke", "--cache", str(tmp_path / "cache"), "--devices", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "fashion-rag-tiny, 24 garments, batch 8" in table
    assert "| cpu |" in table and "| 0.0e+00 / 1.000000 | 1.000 |" in table


# --------------------------------------------------------------------------------------------
# In-process checks of the CLI's error handling, option checks and defaults (fast: no subprocess)
# --------------------------------------------------------------------------------------------

def test_friendly_errors_exit_codes_and_one_line(capsys):
    """_friendly, given commands that fail each expected way: a Ctrl-C is 130 with its note; a
    KeyError (a library error) one line, exit code 2; a message over 2000 characters cut to
    2000 and "…"; a multi-line message one line; a BuildFailedError lists 50 ids and counts the
    rest. Mutations caught: Ctrl-C returning 1; KeyError left out of the caught errors (a
    traceback); _one_line not cutting long messages; _one_line not joining lines; the failed
    ids listed without the cap of 50."""
    from fashion_rag.cli.index import _friendly
    from fashion_rag.retrieval.build.engines import BuildFailedError

    def failing(exc: BaseException):
        def command(args):
            raise exc
        return _friendly(command)

    assert failing(KeyboardInterrupt())(None) == 130
    assert capsys.readouterr().err == ("[index] interrupted (an interrupted build leaves the previous index "
                                       "as it was)\n")
    assert failing(KeyError("no such column"))(None) == 2
    assert capsys.readouterr().err == "[index] error: 'no such column'\n"
    assert failing(ValueError("x" * 5000))(None) == 2
    assert capsys.readouterr().err == "[index] error: " + "x" * 2000 + "…\n"
    assert failing(OSError("first line\n  second\tline"))(None) == 2
    assert capsys.readouterr().err == "[index] error: first line second line\n"
    ids = [f"g{i}" for i in range(53)]
    assert failing(BuildFailedError("3 blocks failed", ids))(None) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"[index] not encoded: 'g{i}'" for i in range(50)] + [
        "[index] … and 3 more not encoded", "[index] error: 3 blocks failed"]


def test_build_option_checks_come_before_any_work(tmp_path, capsys):
    """A CUDA device index torch does not have (cuda:N with N GPUs here, the first one past the
    last) and --ray-actors 0 are refused, exit code 2, before the catalog is read.
    Mutations caught: the device check `index > count` (cuda:N accepted); --ray-actors checked
    against 0 instead of 1."""
    from fashion_rag.cli import main
    from fashion_rag.cli.index import _local_device

    n = torch.cuda.device_count()
    with pytest.raises(ValueError, match=rf"--device cuda:{n}: torch sees {n} CUDA GPUs here"):
        _local_device(f"cuda:{n}")
    build = ["index", "build", "--catalog", str(tmp_path / "missing"), "--out", str(tmp_path / "i"),
             "--weights", str(tmp_path / "w.safetensors")]
    assert main([*build, "--engine", "ray", "--ray-actors", "0"]) == 2
    assert capsys.readouterr().err == "[index] error: --ray-actors must be at least 1\n"
    assert not (tmp_path / "i").exists()


def test_query_defaults_and_one_line_per_hit(tiny_weights, tmp_path, capsys):
    """`index query` without -k or --category: 5 garments of any category; a caption holding a
    newline and a tab is printed on its hit's one line.
    Mutations caught: -k's default not 5; --category's default not "any"; the caption printed
    as stored (its newline a line of its own)."""
    from fashion_rag.cli import main

    catalog = tmp_path / "catalog"
    catalog.mkdir()
    rows = []
    for i, category in enumerate(["upper_body", "lower_body", "dresses"] * 2):
        Image.new("RGB", (384, 512), (40 * i, 200 - 30 * i, 90)).save(catalog / f"g{i}.png")
        caption = "red\nstriped\ttop" if i == 0 else f"garment {i}"
        rows.append(json.dumps({"id": f"g{i}", "image": f"g{i}.png", "category": category,
                                "caption": caption}))
    (catalog / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    build_index(scan_catalog(catalog), tmp_path / "shop", GarmentEncoder(tiny_weights, TINY_ARCH),
                log_fn=lambda m: None)
    assert main(["index", "query", str(tmp_path / "shop"), "red garment", "--mode", "caption", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 5 and {h["category"] for h in hits} == {"upper_body", "lower_body", "dresses"}
    assert main(["index", "query", str(tmp_path / "shop"), "red striped top", "--mode", "caption",
                 "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].split()[2:] == ["g0", "upper_body", "red", "striped", "top"], lines
