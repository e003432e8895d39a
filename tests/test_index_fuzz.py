"""Fuzzing an index's files (issue 7): corrupt manifests, truncated or garbled embeddings and
.faiss files give a clear error (IndexFormatError, naming the rebuild command), never a crash
and never a read outside the index folder. Seeded and bounded: a few seconds.

FAISS itself does not survive garbled files (a flipped length field makes it allocate
terabytes), which is why version-2 indexes record a sha256 of every data file and check it
before FAISS sees a byte; consistent-but-truncated files (checksum updated) reach FAISS and
must come back as the same clear error.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from audit import opened_files

from comfy_harness import fifo_in_place_of
from fashion_rag.openclip_encoder import GarmentEncoder
from fashion_rag.retrieval.ann import load_vector_store
from fashion_rag.retrieval.build import build_index
from fashion_rag.retrieval.catalog import scan_catalog
from fashion_rag.retrieval.index import load_index
from fashion_rag.retrieval.ondisk import (
    FORMAT,
    MANIFEST,
    EncoderMismatchError,
    IndexBusyError,
    IndexFormatError,
    OutDirError,
    StoredVersion,
    build_lock,
    clean_stale,
    map_embeddings,
    map_file,
    parse_manifest,
    prepare_out,
    read_version_manifest,
    resolve_version,
    verify_files,
)
from tools.demo.catalog import write_demo_catalog
from tools.demo.encoder import TINY_ARCH, write_tiny_encoder_weights

MANIFEST_CASES, EMBEDDING_CASES, FAISS_CASES = 400, 120, 60
ODD_VALUES: list[Any] = [None, True, 0, -1, 2**70, 1.5, float("nan"), "", "../../etc/passwd", "/abs/x.png",
                         "x" * 5000, [], [1, 2], {}, {"a": 1}, "C:\\x.png", "a\x00b"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, GarmentEncoder, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("fuzz")
    encoder = GarmentEncoder(write_tiny_encoder_weights(root / "tiny.safetensors"), TINY_ARCH)
    catalog = write_demo_catalog(root / "catalog", seed=0)
    out = root / "indexes" / "idx"
    build_index(scan_catalog(catalog), out, encoder, index_type="ivf")  # .faiss files too
    data_dir = resolve_version(out).data_dir
    return out, encoder, {p.name: p.read_bytes() for p in data_dir.iterdir()}


def _outside(opened: list[str], index_dir: Path) -> list[str]:
    """Opened files outside the index folder (Python's own module files aside)."""
    prefixes = tuple({sys.prefix, sys.base_prefix, os.path.dirname(os.__file__)})
    bad = []
    for path in opened:
        real = os.path.realpath(path)
        if not Path(real).is_relative_to(index_dir.resolve()) and not real.startswith(prefixes):
            bad.append(real)
    return bad


REBUILD = "python -m fashion_rag index build"  # the command a refusal names, with the index folder


def _check_load(out: Path, encoder: GarmentEncoder, what: str, hints: tuple[str, ...] = (REBUILD,)) -> str:
    """Load once: 'ok' (a usable index) or 'refused' (a clear error naming one of `hints` and the
    index folder); anything else fails the test. Mutation caught: the damaged-manifest message's rebuild
    command replaced by "build it again" (which the former `"build" in message` let pass: failed
    now, yes)."""
    with opened_files() as opened:
        try:
            index = load_index(out, encoder)
            index.search(np.asarray(index.embeddings[0]), 3)  # and it answers queries
            outcome = "ok"
        except (IndexFormatError, EncoderMismatchError) as exc:
            message = str(exc)
            assert "\n" not in message and len(message) < 3000, (what, message[:500])
            assert any(h in message for h in hints) and str(out) in message, (what, message)
            outcome = "refused"
        except Exception as exc:  # the failure this test exists to catch
            raise AssertionError(f"{what}: {type(exc).__name__}: {str(exc)[:300]}") from exc
    assert not _outside(opened, out), (what, _outside(opened, out))
    return outcome


def _restore(out: Path, pristine: dict[str, bytes]) -> Path:
    data_dir = resolve_version(out).data_dir
    for name, data in pristine.items():
        (data_dir / name).write_bytes(data)
    return data_dir


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key/index path into a JSON tree (lists sampled: the item lists hold 36 entries)."""
    found = [prefix] if prefix else []
    if isinstance(obj, dict):
        for key, value in obj.items():
            found += _paths(value, prefix + (key,))
    elif isinstance(obj, list):
        for i in sorted({0, len(obj) // 2, len(obj) - 1}) if obj else ():
            found += _paths(obj[i], prefix + (i,))
    return found


def _mutate(manifest: dict, rng: random.Random) -> tuple[Any, str]:
    """A damaged copy of the manifest (a JSON value or raw bytes) and what was done."""
    kind = rng.choice(["set", "set", "delete", "list", "text", "text"])
    m = copy.deepcopy(manifest)
    path = rng.choice(_paths(m))
    parent = m
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if kind == "set":
        parent[last] = rng.choice(ODD_VALUES)
        return m, f"set {path} = {str(parent[last])[:40]!r}"
    if kind == "delete":
        del parent[last]
        return m, f"delete {path}"
    if kind == "list":
        target = parent[last]
        if isinstance(target, list) and target:
            choice = rng.choice(["pop", "dup", "shuffle"])
            if choice == "pop":
                target.pop()
            elif choice == "dup":
                target.append(target[0])
            else:
                rng.shuffle(target)
            return m, f"list {choice} {path}"
        parent[last] = [parent[last]]
        return m, f"wrap {path} in a list"
    raw = json.dumps(m).encode()
    choice = rng.choice(["truncate", "flip", "nest", "bytes"])
    if choice == "truncate":
        return raw[: rng.randrange(len(raw))], "truncate the text"
    if choice == "flip":
        b = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b), "flip bytes of the text"
    if choice == "nest":
        return b"[" * 100_000 + b"]" * 100_000, "100k nested lists"
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 300))), "random bytes"


def test_fuzzed_manifests_give_clear_errors(built):
    out, encoder, pristine = built
    data_dir = _restore(out, pristine)
    manifest = json.loads(pristine[MANIFEST])
    rng = random.Random(1)
    outcomes = []
    for i in range(MANIFEST_CASES):
        damaged, what = _mutate(manifest, rng)
        raw = damaged if isinstance(damaged, bytes) else json.dumps(damaged).encode()
        (data_dir / MANIFEST).write_bytes(raw)
        outcomes.append(_check_load(out, encoder, f"case {i}: {what}"))
    (data_dir / MANIFEST).write_bytes(pristine[MANIFEST])
    assert outcomes.count("refused") > MANIFEST_CASES // 2 and "ok" in outcomes  # both kinds exercised


def test_manifest_fields_of_a_wrong_json_type_are_named(built, tmp_path):
    """The typed manifest (issue 19): each field's JSON type is checked exactly, a bool being no
    int and null allowed only where the format has it, and the problem named by its path.
    Mutations caught: a bool accepted as an int (type(v) is int made isinstance)."""
    out, _, pristine = built
    good = json.loads(pristine[MANIFEST])
    edits = {
        "count is bool, not int": lambda m: m.__setitem__("count", True),
        "encoder.dim is bool, not int": lambda m: m["encoder"].__setitem__("dim", True),
        "encoder.random_demo is int, not bool": lambda m: m["encoder"].__setitem__("random_demo", 1),
        "encoder.name is NoneType, not str": lambda m: m["encoder"].__setitem__("name", None),
        "items.image_offsets[2] is float, not int": lambda m: m["items"]["image_offsets"].__setitem__(2, 0.5),
        "vector_index.parts[1] is list, not dict": lambda m: m["vector_index"]["parts"].__setitem__(1, []),
        "vector_index.parts[0].nprobe_filtered is str, not int":
            lambda m: m["vector_index"]["parts"][0].__setitem__("nprobe_filtered", "8"),
        "files.bytes['embeddings.npy'] is str, not int":
            lambda m: m["files"]["bytes"].__setitem__("embeddings.npy", "10"),
    }
    for message, edit in edits.items():
        m = copy.deepcopy(good)
        edit(m)
        with pytest.raises(IndexFormatError) as err:
            parse_manifest(json.dumps(m).encode(), tmp_path / MANIFEST, out)
        assert f"is damaged: {message};" in str(err.value) and REBUILD in str(err.value), str(err.value)
    # The encoder fields newer than format 4's first manifests are read as None when absent.
    assert "config_sha256" not in good["encoder"]
    manifest = parse_manifest(pristine[MANIFEST], tmp_path / MANIFEST, out)
    assert (manifest.encoder.config_sha256, manifest.encoder.tokenizer_sha256) == (None, None)
    assert manifest.to_json() == good


def _set_checksum(data_dir: Path, name: str) -> None:
    manifest = json.loads((data_dir / MANIFEST).read_text())
    manifest["files"]["sha256"][name] = hashlib.sha256((data_dir / name).read_bytes()).hexdigest()
    manifest["files"]["bytes"][name] = (data_dir / name).stat().st_size
    (data_dir / MANIFEST).write_text(json.dumps(manifest))


def _garble(data: bytes, rng: random.Random, header_bytes: int) -> tuple[bytes, str]:
    choice = rng.choice(["truncate", "flip_header", "flip_data", "header_len", "append"])
    if choice == "truncate":
        return data[: rng.randrange(len(data))], choice
    if choice == "append":
        return data + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))), choice
    if choice == "header_len":
        return rng.choice([2**63, 2**40, 0, len(data)]).to_bytes(8, "little") + data[8:], choice
    b = bytearray(data)
    lo, hi = (0, header_bytes) if choice == "flip_header" else (header_bytes, len(b))
    for _ in range(rng.randint(1, 6)):
        b[rng.randrange(lo, hi)] = rng.randrange(256)
    return bytes(b), choice


def test_fuzzed_embeddings_give_clear_errors(built):
    out, encoder, pristine = built
    name = "embeddings.npy"
    header_bytes = 10 + int.from_bytes(pristine[name][8:10], "little")  # .npy 1.0: magic, version, length
    rng = random.Random(2)
    for i in range(EMBEDDING_CASES):
        data_dir = _restore(out, pristine)
        damaged, what = _garble(pristine[name], rng, header_bytes)
        (data_dir / name).write_bytes(damaged)
        consistent = i % 2 == 1  # also as a file whose checksum matches: our own parser must hold
        if consistent:
            _set_checksum(data_dir, name)
        outcome = _check_load(out, encoder, f"embeddings case {i}: {what}, checksum updated {consistent}")
        if not consistent:
            assert outcome == "refused"
    _restore(out, pristine)


def test_embeddings_of_another_layout_are_refused_even_with_a_matching_checksum(built):
    """np.save's own files in layouts the index never writes, each with its manifest checksum
    updated: the loader must refuse them, not map float32 rows out of them. Mutation caught: the
    Fortran-order check dropped (the transposed data loaded as "ok")."""
    out, encoder, pristine = built
    name = "embeddings.npy"
    good = np.load(io.BytesIO(pristine[name]))
    layouts = {"Fortran order": np.asfortranarray(good), "float64": good.astype(np.float64),
               "big-endian float32": good.astype(">f4"), "transposed": np.ascontiguousarray(good.T)}
    for what, array in layouts.items():
        data_dir = _restore(out, pristine)
        buf = io.BytesIO()
        np.save(buf, array)
        (data_dir / name).write_bytes(buf.getvalue())
        _set_checksum(data_dir, name)
        assert _check_load(out, encoder, what) == "refused", what
        with pytest.raises(IndexFormatError, match=f"{name} holds a "):
            load_index(out, encoder)
    _restore(out, pristine)


def test_fuzzed_faiss_files_give_clear_errors(built):
    out, encoder, pristine = built
    names = sorted(n for n in pristine if n.endswith(".faiss"))
    rng = random.Random(3)
    for i in range(FAISS_CASES):
        data_dir = _restore(out, pristine)
        name = rng.choice(names)
        damaged, what = _garble(pristine[name], rng, 64)
        (data_dir / name).write_bytes(damaged)
        assert _check_load(out, encoder, f"faiss case {i}: {name} {what}") == "refused"
        # Truncated but with a matching checksum, the file reaches FAISS: its error is wrapped.
        (data_dir / name).write_bytes(pristine[name][: rng.randrange(len(pristine[name]))])
        _set_checksum(data_dir, name)
        assert _check_load(out, encoder, f"faiss case {i}: {name} truncated, checksum updated") == "refused"
    _restore(out, pristine)
    assert _check_load(out, encoder, "restored") == "ok"
    with opened_files() as opened:  # the audit sees the library's reads (so the checks above mean something)
        load_index(out)
    assert {Path(p).name for p in opened} >= {"index.json", MANIFEST, "embeddings.npy"}


def test_pointer_file_damage_gives_clear_errors(built, tmp_path):
    out, encoder, pristine = built
    _restore(out, pristine)
    copy_dir = Path(shutil.copytree(out, tmp_path / "idx"))
    pointer = copy_dir / "index.json"
    good = pointer.read_bytes()
    cases = [b"", b"{", b"[]", b'{"format": "fashion-rag-garment-index", "current": "../../etc"}',
             b'{"format": "fashion-rag-garment-index", "current": "v-20990101T000000Z-00000000"}',
             b'{"format": "other", "current": "v-20990101T000000Z-00000000"}', b"x" * 10_000, good[:-5],
             # wrong JSON types, field by field (the typed checker's cases)
             b'{"format": "fashion-rag-garment-index", "current": ["v-20990101T000000Z-00000000"]}',
             b'{"format": "fashion-rag-garment-index", "current": "v-20990101T000000Z-00000000", '
             b'"previous": 7}', b'{"format": 1, "current": "v-20990101T000000Z-00000000"}',
             b'{"current": "v-20990101T000000Z-00000000"}']
    for raw in cases:
        pointer.write_bytes(raw)
        # A damaged pointer names no catalog to rebuild from: a new folder is the advice.
        hints = ("rebuild the index into a new folder", REBUILD)
        assert _check_load(copy_dir, encoder, f"pointer {raw[:60]!r}", hints) == "refused"


@pytest.mark.parametrize("name", ["embeddings.npy", "vectors-1.faiss", "garments.bin"])
def test_a_file_swapped_for_a_fifo_after_its_check_is_refused_by_its_reader(built, tmp_path, name):
    """Issue 24, item 7: verify_files checks each file first, but the readers open the files
    again (np.memmap, FAISS): each must refuse a FIFO put there since, not block on it."""
    out, encoder, pristine = built
    _restore(out, pristine)
    copy_dir = Path(shutil.copytree(out, tmp_path / "idx"))
    ver = resolve_version(copy_dir)
    manifest = read_version_manifest(ver)
    verify_files(ver, manifest)  # passed: the swap comes after it
    emb = map_embeddings(ver.data_dir / "embeddings.npy", 36, 32, copy_dir, manifest)
    fifo = ver.data_dir / name
    refused = rf"{name} is not a regular file.*index build"
    with fifo_in_place_of(fifo), pytest.raises(IndexFormatError, match=refused):
        if name.endswith(".faiss"):
            load_vector_store(StoredVersion(ver, manifest, emb, np.zeros(0, np.uint8)))
        elif name == "garments.bin":
            map_file(ver, manifest, name, "garment image file")
        else:
            map_embeddings(fifo, 36, 32, copy_dir, manifest)


def test_build_markers_and_lock_records_of_the_wrong_shape_are_not_ours(built, tmp_path):
    """A folder whose marker is malformed (a wrong JSON type, a name not the build's) is left
    alone by a build's cleanup, while a well-formed one of a dead build is deleted; a lock file
    holding a malformed record makes the folder refused, nothing in it touched. Mutations caught:
    records built without the typed check, a marker's temp name not checked against its build
    (folder 5 deleted), and the lock record's build id not checked (a build ran in the folder)."""
    out, _, pristine = built
    _restore(out, pristine)
    copy_dir = Path(shutil.copytree(out, tmp_path / "idx"))
    dead = "0123456789abcdef"
    records = {  # folder name -> its marker
        f".tmp-{dead}-00000001": {"format": FORMAT, "build": dead, "names": [f".tmp-{dead}-00000001"]},
        f".tmp-{dead}-00000002": {"format": FORMAT, "build": dead, "names": [7]},
        f".tmp-{dead}-00000003": {"format": FORMAT, "build": dead, "names": f".tmp-{dead}-00000003"},
        f".tmp-{dead}-00000004": {"format": FORMAT, "build": 12345, "names": [f".tmp-{dead}-00000004"]},
        # a name that is not the marker's own build's
        f".tmp-{dead}-00000005": {"format": FORMAT, "build": "fedcba9876543210",
                                  "names": [f".tmp-{dead}-00000005"]},
    }
    for name, marker in records.items():
        (copy_dir / name).mkdir()
        (copy_dir / name / ".build.json").write_text(json.dumps(marker))
        (copy_dir / name / "data").write_text("a user's file")
    with build_lock(copy_dir) as lock:
        removed, alone = clean_stale(lock)
    assert removed == [f".tmp-{dead}-00000001"], removed
    assert alone == sorted(records)[1:], alone
    assert all((copy_dir / name / "data").exists() for name in sorted(records)[1:])

    lock_file = copy_dir / ".build.lock"
    for bad in ({"format": FORMAT, "build": 12345}, {"format": FORMAT, "build": "not hex"},
                {"format": "other", "build": dead}, {"build": dead}, [FORMAT, dead]):
        lock_file.write_text(json.dumps(bad))
        with pytest.raises(OutDirError, match=r"holds files that are not a garment index \('.build.lock'\)"):
            prepare_out(copy_dir, tmp_path / "catalog")
        not_ours = "is not the lock file of a Fashion-RAG build"
        with pytest.raises(OutDirError, match=not_ours), build_lock(copy_dir):
            pass
        assert lock_file.read_text() == json.dumps(bad)  # the refused record is left as it was


def test_a_pointer_whose_previous_is_damaged_is_refused(built, tmp_path):
    """The pointer's `previous` names the version a build keeps for readers still on it: one that
    is not a version name (a path out of the folder, a temp folder's name) makes the whole pointer
    damaged, as a bad `current` does. Mutation caught: Pointer.valid checking `current` only."""
    out, encoder, pristine = built
    _restore(out, pristine)
    copy_dir = Path(shutil.copytree(out, tmp_path / "idx"))
    pointer = copy_dir / "index.json"
    current = json.loads(pointer.read_text())["current"]
    for previous, outcome in [("v-20250101T000000Z-0123abcd", "ok"), (None, "ok"),
                              ("../../etc", "refused"), ("/tmp", "refused"), ("", "refused"),
                              (".tmp-0123456789abcdef-00000001", "refused"),
                              ("v-20250101T000000Z-0123abcg", "refused"),
                              ("v-20250101T000000Z-0123abcd/..", "refused")]:
        pointer.write_text(json.dumps({"format": FORMAT, "current": current, "previous": previous}))
        hints = ("rebuild the index into a new folder",)
        assert _check_load(copy_dir, encoder, f"previous {previous!r}", hints) == outcome, previous
        if outcome == "refused":  # and a build will not write there either (nothing to clean by)
            with pytest.raises(OutDirError, match=r"not a garment index \('index.json'\)"):
                prepare_out(copy_dir, tmp_path / "catalog")


def test_user_folders_named_like_the_last_builds_temp_folders_are_never_deleted(built, tmp_path):
    """The lock file names the last build; its unfinished folders (.tmp-<build>-…) are deleted by
    the next one, but only those that prove it: a well-formed marker, or nothing but the empty
    marker a kill can leave. A user's folder of that name (files and no marker, a foreign or
    invalid marker) survives the lock's clean-up and clean_stale, which reports it as left alone;
    with no index yet, the build is refused and names it. Mutation caught: _left_by true for any
    folder whose name is the last build's temp name."""
    out, _, pristine = built
    _restore(out, pristine)
    dead = "0123456789abcdef"
    ours = {f".tmp-{dead}-00000001": json.dumps({"format": FORMAT, "build": dead,
                                                  "names": [f".tmp-{dead}-00000001"]}),
            f".tmp-{dead}-00000002": ""}  # killed between creating the marker and writing it
    users = {f".tmp-{dead}-00000003": None,  # no marker
             f".tmp-{dead}-00000004": "{not json",
             f".tmp-{dead}-00000005": json.dumps({"format": "someone else's", "build": dead,
                                                  "names": [f".tmp-{dead}-00000005"]}),
             f".tmp-{dead}-00000006": ""}  # the empty marker, but beside a user's file
    for case in ("index", "no index"):
        folder = Path(shutil.copytree(out, tmp_path / case.replace(" ", "-")))
        if case == "no index":  # a first build that died: only its lock file and folders
            for entry in list(folder.iterdir()):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        (folder / ".build.lock").write_text(json.dumps({"format": FORMAT, "build": dead}))
        for name, marker in {**ours, **users}.items():
            (folder / name).mkdir()
            if marker is not None:
                (folder / name / ".build.json").write_text(marker)
            if name in users:
                (folder / name / "precious.txt").write_text(f"mine: {name}")
        if case == "index":
            with build_lock(folder) as lock:
                assert lock.last == dead
                removed, alone = clean_stale(lock)
            assert removed == [] and alone == sorted(users), (removed, alone)  # the lock removed ours
        else:
            shown = ", ".join(repr(n) for n in sorted(users))
            with pytest.raises(OutDirError, match=f"not a garment index \\({shown}\\)"):
                prepare_out(folder, tmp_path / "catalog")
            with pytest.raises(OutDirError, match=f"not a garment index \\({shown}\\)"), build_lock(folder):
                pass
        for name in users:
            assert (folder / name / "precious.txt").read_text() == f"mine: {name}", (case, name)
        # Refused, the build touched nothing; under an index the lock deleted what the dead one left.
        assert all((folder / name).exists() == (case == "no index") for name in ours), case


def test_a_lock_file_replaced_between_open_and_flock_stops_the_build(built, tmp_path):
    """build_lock holds the file it opened: if another one took its place before the flock (a first
    build that failed removed the folder and a third build made a new one), holding the old file
    locks nothing, so the build stops as busy, changing nothing. The replacement is made at the
    very call of fcntl.flock (a profile hook on it: the real flock runs, on the old file).
    Mutation caught: the samestat check after the flock dropped."""
    import fcntl

    out, _, pristine = built
    _restore(out, pristine)
    folder = Path(shutil.copytree(out, tmp_path / "idx"))
    lock_file = folder / ".build.lock"
    theirs = json.dumps({"format": FORMAT, "build": "fedcba9876543210"})
    replaced: list[int] = []

    def replace_at_flock(frame, event, arg) -> None:
        if event == "c_call" and arg is fcntl.flock and not replaced:
            (folder / "new-lock").write_text(theirs)
            os.replace(folder / "new-lock", lock_file)
            replaced.append(lock_file.stat().st_ino)

    before = {p.name for p in folder.iterdir()}
    sys.setprofile(replace_at_flock)
    try:
        with pytest.raises(IndexBusyError, match=f"Another build is running on {folder}; wait"), \
                build_lock(folder):
            pass
    finally:
        sys.setprofile(None)
    assert replaced, "the hook never saw fcntl.flock: the lock was taken another way"
    assert lock_file.read_text() == theirs and lock_file.stat().st_ino == replaced[0]
    assert {p.name for p in folder.iterdir()} == before
    with build_lock(folder) as lock:  # the new file is a usable lock
        assert lock.last == "fedcba9876543210"

