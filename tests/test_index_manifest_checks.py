"""Second mutation pass over the on-disk index format (ondisk.py): the manifest's checks at their
boundaries, the pointer and marker records, and what a build keeps. Each test names the planted
mistake it catches; expected values are literals worked out by hand (sizes, counts, names) or by
json / hashlib directly, never the pack's own constants.

Planted and left uncaught as equivalent: map_file's size check made `< size` (open_regular,
bounded by that size, already refuses a larger file); read_faiss reading `n` bytes unbounded by
the size it took from fstat (only a file growing after its checked open could differ, and FAISS
asks for the bytes its structure names)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from fashion_rag.openclip_encoder import GarmentEncoder
from fashion_rag.retrieval.build import build_index
from fashion_rag.retrieval.catalog import scan_catalog
from fashion_rag.retrieval.ondisk import (
    IndexFormatError,
    OutDirError,
    build_command,
    build_lock,
    clean_stale,
    parse_manifest,
    prepare_out,
    read_manifest,
    read_version,
    resolve_version,
    temp_folder,
    write_version,
)
from tools.demo.encoder import TINY_ARCH


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_weights, demo_source):
    """An ivf index of the 36 demo garments, its folder and its manifest as JSON."""
    out = tmp_path_factory.mktemp("manifest_checks") / "idx"
    build_index(scan_catalog(demo_source), out, GarmentEncoder(tiny_weights, TINY_ARCH), index_type="ivf")
    data_dir = resolve_version(out).data_dir
    return out, json.loads((data_dir / "manifest.json").read_text())


@pytest.fixture
def copy_dir(built, tmp_path) -> Path:
    """A copy of the built index to change (the module's index itself stays as built)."""
    return Path(shutil.copytree(built[0], tmp_path / "idx"))


def _parse(built, edit):
    """The built manifest edited by `edit`, parsed: None if accepted, else the refusal's text."""
    out, good = built
    m = copy.deepcopy(good)
    edit(m)
    try:
        parse_manifest(json.dumps(m).encode(), out / "manifest.json", out)
    except IndexFormatError as exc:
        return str(exc)
    return None


def test_the_built_manifest_itself_is_accepted(built):
    """(Each refusal below is its edit's.)"""
    assert _parse(built, lambda m: None) is None


@pytest.mark.parametrize("dim, refused", [(0, True), (1, False), (65_536, False), (65_537, True)])
def test_encoder_dim_bounds(built, dim, refused):
    """encoder.dim must be 1 to 65,536 (the manifest is parsed alone: the embeddings file is not
    read). Mutation caught: `0 <= dim` for `1 <= dim` in manifest_problems (a 0-d index's manifest
    accepted, its refusal left to whichever reader came next)."""
    message = _parse(built, lambda m: m["encoder"].update(dim=dim))
    if refused:
        assert message is not None and f"encoder.dim {dim} is out of range" in message, message
    else:
        assert message is None, message


def test_an_empty_garment_id_is_refused(built):
    """Item 5's id made "" (a garment no pin or exclude can name). Mutation caught: the empty-id
    check dropped (`if False:` for `if not all(items.ids):`): the manifest was accepted."""
    message = _parse(built, lambda m: m["items"]["ids"].__setitem__(5, ""))
    assert message is not None and "items.ids has an empty id" in message, message


def test_an_id_listed_exactly_twice_is_refused(built):
    """Item 1's id made item 0's (listed twice, not three times). Mutation caught: duplicates
    counted from three (`c > 2` for `c > 1`)."""
    first = built[1]["items"]["ids"][0]
    message = _parse(built, lambda m: m["items"]["ids"].__setitem__(1, first))
    assert message is not None and f"items.ids lists {first!r} twice" in message, message


def test_item_lists_of_two_lengths_are_refused(built):
    """captions one short (two lengths among the five lists: 36 and 35). Mutation caught: refused
    only from three distinct lengths (`> 2` for `> 1`)."""
    message = _parse(built, lambda m: m["items"]["captions"].pop())
    assert message is not None and "item lists have different lengths" in message and "captions 35" in message


def test_a_missing_hash_or_size_of_the_marker_or_a_data_file_is_refused(built):
    """The build marker's sha256 dropped; the embeddings file's size dropped (absent, not -1).
    Mutations caught: the marker left out of the hashes required (`for name in data_files:`), so an
    index whose marker is never verified was accepted; an absent size read as 0
    (`files.bytes.get(name, 0)`)."""
    message = _parse(built, lambda m: m["files"]["sha256"].pop(".build.json"))
    assert message is not None and "files.sha256 has no valid hash for '.build.json'" in message, message
    message = _parse(built, lambda m: m["files"]["bytes"].pop("embeddings.npy"))
    assert message is not None and "files.bytes has no valid size for 'embeddings.npy'" in message, message


def test_a_hash_listed_for_a_file_outside_the_version_folder_is_refused(built):
    """files.sha256 (and files.bytes) list '../x' too, with a well-formed hash and size: only its
    name is wrong. Mutation caught: the plain-name check of files.sha256's names dropped."""
    def edit(m):
        m["files"]["sha256"]["../x"] = "0" * 64
        m["files"]["bytes"]["../x"] = 1

    message = _parse(built, edit)
    assert message is not None and "files.sha256 names '../x', not a plain file name" in message, message


def _one_image(offset: int, size: int, shard: int):
    def edit(m):
        m["items"]["image_offsets"][0] = offset
        m["items"]["image_sizes"][0] = size
        m["files"]["bytes"]["garments.bin"] = shard
    return edit


@pytest.mark.parametrize("offset, size, shard, refused", [
    (0, 0, 10_000_000, True),  # an empty stored image
    (0, 1, 10_000_000, False),
    (0, 4_194_304, 10_000_000, False),  # 4 MiB: the largest stored image
    (0, 4_194_305, 10_000_000, True),
])
def test_a_stored_image_must_lie_inside_the_shard_and_be_1_byte_to_4_mib(built, offset, size, shard,
                                                                        refused):
    """Item 0's stored image (the shard's size set in files.bytes: the manifest is parsed alone).
    Mutations caught: a size of 0 allowed (`0 <= size`), the 4 MiB bound made 4 GiB
    (`MAX_GARMENT_BYTES = 4 << 30`)."""
    message = _parse(built, _one_image(offset, size, shard))
    if refused:
        assert message is not None and "the stored image of item 0 does not lie" in message, message
    else:
        assert message is None, message


@pytest.mark.parametrize("past, refused", [(0, False), (1, True)])
def test_a_stored_image_may_end_exactly_at_the_shards_end_not_one_byte_past(built, past, refused):
    """Item 0's stored image moved to end `past` bytes after the shard's last byte (its size
    as built; the shard's size as the manifest records it). Mutation caught: an image one byte past
    the shard's end allowed (`offset + size > shard + 1`)."""
    shard = built[1]["files"]["bytes"]["garments.bin"]
    size = built[1]["items"]["image_sizes"][0]
    message = _parse(built, _one_image(shard - size + past, size, shard))
    if refused:
        assert message is not None and "item 0 does not lie inside garments.bin" in message, message
    else:
        assert message is None, message


def test_vector_parts_counting_fewer_garments_than_the_items_are_refused(built):
    """Part 0 counts one garment fewer (35 in all beside 36 items). Mutation caught: only more
    garments than items refused (`counted > n` for `counted != n`)."""
    message = _parse(built, lambda m: m["vector_index"]["parts"][0].update(
        count=m["vector_index"]["parts"][0]["count"] - 1))
    assert message is not None and "vector_index.parts count 35 garments, the items 36" in message, message


def test_a_format_version_written_as_a_float_is_refused(built):
    """format_version 4.0 (equal to 4 in Python, not the integer the format writes). Mutation
    caught: the `type(found) is not int` check dropped (4.0 accepted)."""
    message = _parse(built, lambda m: m.update(format_version=4.0))
    assert message is not None and "has index format version 4.0, where" in message, message


def test_more_than_six_problems_name_six_and_count_the_rest(built):
    """Eight independent problems: six named, "(and 2 more)". Mutation caught: the count of the
    rest made the count of all (`(and {len(problems)} more)`: "(and 8 more)")."""
    def edit(m):
        m["encoder"]["dim"] = 0  # 1
        m["items"]["ids"][3] = ""  # 2
        m["items"]["sha256"][0] = "x"  # 3
        m["items"]["paths"][0] = "/abs.png"  # 4
        m["count"] = 99  # 5
        m["vector_index"]["parts"][0]["nprobe"] = 0  # 6
        m["items"]["image_offsets"][0] = -1  # 7
        m["files"]["bytes"].pop("embeddings.npy")  # 8

    message = _parse(built, edit)
    assert message is not None and "(and 2 more);" in message, message


def test_a_marker_listing_three_names_is_not_a_builds(copy_dir):
    """A dead build's folder whose marker lists three names (its temp name and two version names:
    a build writes one or two) is left alone by a build's cleanup, its user file kept; the same
    folder with two names is deleted. Mutation caught: Marker.valid allowing three names
    (`<= 3` for `<= 2`): the three-name folder was deleted."""
    dead = "0123456789abcdef"
    versions = ["v-20250101T000000Z-0000aaaa", "v-20250101T000000Z-0000bbbb"]
    for folder, names in ((f".tmp-{dead}-00000002", versions[:1]), (f".tmp-{dead}-00000003", versions)):
        (copy_dir / folder).mkdir()
        (copy_dir / folder / ".build.json").write_text(json.dumps(
            {"format": "fashion-rag-garment-index", "build": dead, "names": [folder, *names]}))
        (copy_dir / folder / "data").write_text("a user's file")
    with build_lock(copy_dir) as lock:
        removed, alone = clean_stale(lock)
    assert (removed, alone) == ([f".tmp-{dead}-00000002"], [f".tmp-{dead}-00000003"])
    assert (copy_dir / f".tmp-{dead}-00000003" / "data").read_text() == "a user's file"


def test_write_version_refuses_a_folder_made_without_a_version_name(copy_dir):
    """A temp_folder(version=False) handed to write_version: ValueError naming the folder, the
    pointer unchanged. Mutation caught: the two-names check dropped from write_version
    (`marker.names[1]` then raised IndexError)."""
    pointer = (copy_dir / "index.json").read_bytes()
    with build_lock(copy_dir) as lock, temp_folder(lock) as tmp:
        with pytest.raises(ValueError, match="is not a version folder of this build"):
            write_version(lock, tmp, read_manifest(copy_dir))
    assert (copy_dir / "index.json").read_bytes() == pointer


def _publish(copy_dir: Path) -> str:
    """A new version of `copy_dir` holding its current version's data files (as a build writes
    them), published by write_version; returns its name."""
    current = resolve_version(copy_dir).data_dir
    with build_lock(copy_dir) as lock, temp_folder(lock, version=True) as tmp:
        for f in current.iterdir():
            if f.name not in ("manifest.json", ".build.json"):
                shutil.copyfile(f, tmp / f.name)
        return write_version(lock, tmp, read_manifest(copy_dir))


def test_a_published_version_is_readable_by_other_users_under_umask_022(copy_dir):
    """Under umask 022 the published version folder is 0755 (x wherever r) and its files 0644,
    so a ComfyUI running as another user reads the index (these tests may run as root, where
    modes are not enforced: only the bits tell). Mutation caught: the folder's bits shifted by
    one (`>> 1`: 0666, no x, a folder other users cannot enter)."""
    old = os.umask(0o022)
    try:
        version = _publish(copy_dir)
    finally:
        os.umask(old)
    assert stat.S_IMODE((copy_dir / version).stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in (copy_dir / version).iterdir()} == {0o644}


def test_a_version_that_keeps_vanishing_fails_as_incomplete_after_three_tries(copy_dir):
    """Every try finds its version gone (a FileNotFoundError) and a newer one in the pointer: three
    tries, then IndexFormatError "is incomplete" naming the missing file (never an internal
    error). Mutation caught: `attempt < _LOAD_ATTEMPTS` for `attempt + 1 < ...` in _retrying (the
    third try went on, and the loop ended in AssertionError("unreachable"))."""
    from fashion_rag.retrieval.ondisk import _retrying

    tries: list[str] = []

    def load(ver):
        tries.append(ver.version)
        _publish(copy_dir)  # a build finishes meanwhile: the pointer names a newer version
        raise FileNotFoundError(2, "No such file", str(ver.data_dir / "manifest.json"))

    with pytest.raises(IndexFormatError, match=r"is incomplete \(.*manifest\.json is missing\)"):
        _retrying(copy_dir, load)
    assert len(tries) == 3 and len(set(tries)) == 3


def test_only_an_empty_marker_makes_an_unmarked_folder_the_last_builds(copy_dir):
    """The lock file names a dead build; two folders are named after it: one holding only an empty
    .build.json (killed while writing it: deleted when the next build takes the lock), one holding
    only a .build.json of other bytes (not a marker a build writes: kept). Mutation caught: the
    empty-size condition dropped from _left_by (any lone .build.json file made the folder the
    dead build's, and it was deleted)."""
    dead = "0123456789abcdef"
    (copy_dir / ".build.lock").write_text(json.dumps({"format": "fashion-rag-garment-index", "build": dead}))
    for folder, content in ((f".tmp-{dead}-0000000e", b""), (f".tmp-{dead}-0000000f", b"{not a marker")):
        (copy_dir / folder).mkdir()
        (copy_dir / folder / ".build.json").write_bytes(content)
    with build_lock(copy_dir):
        pass
    assert not (copy_dir / f".tmp-{dead}-0000000e").exists()
    assert (copy_dir / f".tmp-{dead}-0000000f" / ".build.json").read_bytes() == b"{not a marker"


def test_a_copied_out_version_folder_is_named_as_one(built, tmp_path):
    """A version folder copied elsewhere under another name (manifest and marker, no pointer):
    loading it says it is one stored version of an index. Mutation caught: the marker test
    dropped from resolve_version (only a v-... name told; the message said "not a Fashion-RAG
    garment index of this format")."""
    out, _ = built
    loose = Path(shutil.copytree(resolve_version(out).data_dir, tmp_path / "my-copy"))
    with pytest.raises(IndexFormatError, match="is one stored version of the index"):
        resolve_version(loose)


def test_a_killed_first_builds_pointer_temp_file_is_a_builds_but_a_folder_so_named_is_not(tmp_path):
    """An --out folder holding only the temp file a killed first build's pointer write left
    (".index.json.<8 chars>.tmp", mkstemp's pattern): a build may write there. The same name as a
    folder is not something a build leaves: refused, named. Mutations caught: the pointer temp
    file not recognised in _foreign_entries (the folder refused); its is_file test dropped (the
    folder taken for a build's)."""
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    out = tmp_path / "idx"
    out.mkdir()
    (out / ".index.json.ab12cd34.tmp").write_text("{")
    assert prepare_out(out, catalog) == out.resolve()
    (out / ".index.json.ab12cd34.tmp").unlink()
    (out / ".index.json.ab12cd34.tmp").mkdir()
    with pytest.raises(OutDirError, match=r"not a garment index \('.index.json.ab12cd34.tmp'\)"):
        prepare_out(out, catalog)


@pytest.mark.parametrize("key", ["catalog_root", "catalog_root_relative"])
def test_a_manifest_naming_a_catalog_folder_by_either_key_is_refused(built, key):
    """Format 3's catalog_root or catalog_root_relative (the relative one alone too) in an
    otherwise good manifest. Mutation caught: only catalog_root looked for (a manifest naming
    its catalog by catalog_root_relative accepted)."""
    message = _parse(built, lambda m: m.update({key: "../catalog"}))
    assert message is not None and "it names a catalog folder (catalog_root)" in message, message


@pytest.mark.parametrize("pad, refused", [(0, False), (1, True)])
def test_a_pointer_file_is_read_up_to_4096_bytes(pad, refused, copy_dir):
    """index.json padded with spaces (valid JSON still) to exactly 4096 bytes loads; to 4097 it
    is refused unparsed. Mutation caught: the records' bound made 40960 bytes."""
    text = (copy_dir / "index.json").read_text().rstrip("\n")
    (copy_dir / "index.json").write_text(text + " " * (4096 - len(text) + pad))
    assert (copy_dir / "index.json").stat().st_size == 4096 + pad
    if refused:
        with pytest.raises(IndexFormatError, match="4097 bytes, more than the 4096 allowed"):
            resolve_version(copy_dir)
    else:
        assert resolve_version(copy_dir).version == json.loads(text)["current"]


def test_the_rebuild_command_quotes_a_folder_with_a_space():
    """An index folder with a space is quoted, so the command can be pasted as it is; the
    placeholders stay bare. Mutation caught: quoting keyed on a tab instead of a space."""
    assert build_command("/data/my index") == ("python -m fashion_rag index build --catalog <images folder> "
                                               "--out '/data/my index' --weights <encoder weights>")


@pytest.mark.parametrize("length, kept", [(300, True), (301, False)])
def test_the_rebuild_command_shows_a_path_of_up_to_300_characters(length, kept):
    """A path of 300 characters is shown; of 301 (a damaged manifest's value must not flood the
    hint) the placeholder stands in. Mutation caught: the 300-character bound dropped from _arg."""
    path = "/" + "a" * (length - 1)
    shown = path if kept else "<index>"
    assert build_command(path).endswith(f"--out {shown} --weights <encoder weights>")


def test_a_catalog_inside_an_index_folder_is_refused(demo_source, copy_dir):
    """A catalog copied into a built index's folder (where the index's own check would let
    anything else stay): --out refused, naming the catalog inside it. Mutation caught: only the
    catalog being the output folder itself refused (`catalog == out` for
    `catalog.is_relative_to(out)`)."""
    catalog = Path(shutil.copytree(demo_source, copy_dir / "shop" / "catalog"))
    with pytest.raises(OutDirError, match=r"The catalog .*catalog is inside the output folder \(--out\)"):
        prepare_out(copy_dir, catalog)


def test_a_damaged_folder_encoder_record_still_gets_a_rebuild_command(built):
    """A model-folder record (config_sha256 set) whose weights_path is null: refused for its type,
    and the hint falls back to the record's name with a placeholder for the weights. Mutation
    caught: the str test dropped from _source (Path(None) raised TypeError while the refusal
    was being worded)."""
    def edit(m):
        m["encoder"].update(config_sha256="a" * 64, weights_path=None)

    message = _parse(built, edit)
    assert message is not None and "encoder.weights_path is NoneType, not str" in message, message
    assert message.endswith("--encoder fashion-rag-tiny --weights <encoder weights>"), message


def test_a_long_duplicate_id_is_named_by_its_first_60_characters(built):
    """Items 0 and 1 both get a 61-character id: the refusal names its first 60 characters.
    Mutation caught: the id cut at 6 characters (`dup[:6]`)."""
    def edit(m):
        m["items"]["ids"][0] = m["items"]["ids"][1] = "g" * 61

    message = _parse(built, edit)
    assert message is not None and f"items.ids lists {'g' * 60!r} twice" in message, message


def test_a_manifest_of_another_format_is_refused(built):
    """format "other-index" in an otherwise good manifest. Mutation caught: the format's value not
    compared (`"format" not in data`): another tool's manifest of the same shape was accepted."""
    message = _parse(built, lambda m: m.update(format="other-index"))
    assert message is not None and "is not a Fashion-RAG garment index manifest" in message, message


def test_a_pointer_naming_a_file_instead_of_a_folder_is_an_incomplete_index(copy_dir):
    """The version the pointer names is a file (a folder expected): IndexFormatError "is incomplete",
    not a bare NotADirectoryError. Mutation caught: _retrying catching FileNotFoundError alone."""
    name = "v-20250101T000000Z-0000cccc"
    (copy_dir / name).write_text("not a folder")
    (copy_dir / "index.json").write_text(json.dumps({"format": "fashion-rag-garment-index", "current": name}))
    with pytest.raises(IndexFormatError, match="is incomplete"):
        read_manifest(copy_dir)


def test_the_callers_check_runs_before_any_data_file_is_hashed(copy_dir):
    """embeddings.npy damaged (last byte flipped) and a check that refuses the manifest (as the
    encoder check does): the check's refusal comes first, the checksum is never reached. Mutation
    caught: verify_files moved before check() in read_version (a mismatched encoder was reported
    as a damaged file, after hashing every file)."""
    emb = resolve_version(copy_dir).data_dir / "embeddings.npy"
    raw = bytearray(emb.read_bytes())
    raw[-1] ^= 0xFF
    emb.write_bytes(bytes(raw))

    class Refused(Exception):
        pass

    def check(manifest):
        raise Refused

    with pytest.raises(Refused):
        read_version(copy_dir, check, lambda stored: None)
    with pytest.raises(IndexFormatError, match="embeddings.npy does not match the checksum"):
        read_version(copy_dir, lambda manifest: None, lambda stored: None)


def test_a_builds_work_folder_is_private_until_published(copy_dir):
    """Under umask 022 a build's temp folder is 0700 (a half-written version is no one else's to
    read). Mutation caught: temp_folder made 0755."""
    old = os.umask(0o022)
    try:
        with build_lock(copy_dir) as lock, temp_folder(lock) as tmp:
            assert stat.S_IMODE(tmp.stat().st_mode) == 0o700
    finally:
        os.umask(old)


def test_a_builds_cleanup_deletes_a_killed_pointer_writes_temp_file(copy_dir):
    """".index.json.ab12cd34.tmp" (the temp file of a pointer write a kill interrupted) beside a
    built index: a build's cleanup deletes it and names it. Mutation caught: clean_stale's pointer
    temp branch dropped (`elif False:`): the file stayed."""
    (copy_dir / ".index.json.ab12cd34.tmp").write_text("{")
    with build_lock(copy_dir) as lock:
        removed, alone = clean_stale(lock)
    assert (removed, alone) == ([".index.json.ab12cd34.tmp"], [])
    assert not (copy_dir / ".index.json.ab12cd34.tmp").exists()


def test_a_fifo_in_place_of_the_lock_file_is_refused_unread(copy_dir):
    """.build.lock replaced by a FIFO holding a well-formed lock record (kept open here, so a read
    would not block): build_lock refuses it as not a build's, before reading it. Mutation caught:
    build_lock's regular-file check dropped (the FIFO was read as the lock record, then written)."""
    (copy_dir / ".build.lock").unlink()
    os.mkfifo(copy_dir / ".build.lock")
    fd = os.open(copy_dir / ".build.lock", os.O_RDWR | os.O_NONBLOCK)
    try:
        record = {"format": "fashion-rag-garment-index", "build": "0123456789abcdef"}
        os.write(fd, json.dumps(record).encode())
        with pytest.raises(OutDirError, match=r"not a garment index \('.build.lock'\)"), build_lock(copy_dir):
            pass
    finally:
        os.close(fd)
