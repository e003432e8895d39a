"""The on-disk index, and the only module that knows its files: the typed manifest (parsed and
checked once), the versions behind one pointer, the build lock and markers, the embeddings (.npy),
the FAISS parts and the garment image shard (docs/method.md, "Stored garment images").

    NAME/index.json            the pointer: {"format", "current": "v-…", "previous": "v-…"}
    NAME/v-<time>-<rand>/      one complete build: .build.json, manifest.json, embeddings.npy,
                               garments.bin, vectors-<i>.faiss
    NAME/.tmp-<build>-<rand>/  a build's work folder (or one a dead build left); never read
    NAME/.build.lock           held by the running build (flock); names the last build that held it

read_version() gives readers one verified version; write_version() renames a build's folder into
a version and swaps the pointer with one os.replace, so readers see the whole old or the whole new
index. Builds keep the current and the previous version (a reader that resolved the pointer just
before a swap still finds its files). The manifest is untrusted input (indexes get shared): every
key, type and length is checked, and every file is read only as a regular file of the size and
sha256 it records, through the one descriptor that was checked (a FIFO in a file's place would
otherwise hang every reader, a server's whole prompt queue, at open()); older formats are rebuilt.
A build renames or deletes only folders a marker (.build.json, hashed like the data) proves a
build's, or folders named after the build the lock file records (a kill just after mkdir, or
mid-delete, leaves them without one); anything else is left alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import operator
import os
import re
import secrets
import shutil
import stat
import typing
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from ..files import (
    UnreadableFileError,
    atomic_write,
    cached_sha256,
    fsync_path,
    hashed_file,
    is_atomic_temp,
    map_npy,
    naming,
    open_regular,
    read_regular,
    sha256_file,
    write_npy,
)
from ..paths import PathRuleError, inside, is_plain_name, is_plain_relative, listing
from ..records import Mistyped, from_json, parse, to_json

if TYPE_CHECKING:
    from ..openclip_encoder import GarmentEncoder

try:
    import fcntl
except ImportError:  # Windows: no flock; two builds of one index at once are the user's to avoid
    fcntl = None

FORMAT = "fashion-rag-garment-index"
FORMAT_VERSION = 4
MANIFEST = "manifest.json"
MARKER = ".build.json"  # the build marker in each version folder: hashed like the data
EMBEDDINGS = "embeddings.npy"
GARMENTS = "garments.bin"  # the fitted garment images (PNG), one after the other
VECTORS = "vectors-{}.faiss"  # file of IVF part i
ITEM_LISTS = ("ids", "paths", "categories", "captions", "sha256")
# A stored garment is a 384x512 PNG (~0.6 MB uncompressed at most): more is not one of ours.
MAX_GARMENT_BYTES = 4 << 20
PART_TYPES = ("flat", "ivf")
MAX_DIM = 65_536
# A manifest lists every garment (~250 bytes each with short captions): 10M garments write
# ~2.5 GB; past this it is not one of ours.
MAX_MANIFEST_BYTES = 8 << 30
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_PROBLEMS = 6  # named in one error; the rest are counted


class IndexFormatError(ValueError):
    """The folder holds no usable index of this format (missing, damaged or foreign)."""


class EncoderMismatchError(ValueError):
    """The index was built with a different encoder (architecture, weights or dimension)."""


def _arg(value: Any, placeholder: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 300 or "\n" in value:
        return placeholder  # (a damaged manifest must not flood the hint)
    return f"'{value}'" if " " in value and not value.startswith("<") else value  # <placeholders> stay bare


def build_command(out: Path | str, encoder: EncoderRecord | dict[str, Any] | None = None) -> str:
    """The one spelling of the command that (re)builds an index, with the encoder of a record (or of
    the raw JSON of one that failed its checks); no catalog: an index names no folder outside itself."""
    name, weights = _source(encoder)
    cmd = f"python -m fashion_rag index build --catalog <images folder> --out {_arg(str(out), '<index>')}"
    if name:
        cmd += f" --encoder {_arg(name, '<architecture>')}"
    return f"{cmd} --weights {_arg(weights and str(weights), '<encoder weights>')}"


def _source(encoder: EncoderRecord | dict[str, Any] | None) -> tuple[Any, Any]:
    """(--encoder, --weights) of an encoder record: a model folder is given alone."""
    enc = dataclasses.asdict(encoder) if isinstance(encoder, EncoderRecord) else encoder
    enc = enc if isinstance(enc, dict) else {}
    if enc.get("config_sha256") and isinstance(enc.get("weights_path"), str):
        return None, str(Path(enc["weights_path"]).parent)
    return enc.get("name"), enc.get("weights_path")


def damaged(index_dir: Path | str, why: Any, manifest: Any = None) -> IndexFormatError:
    """'Index DIR: WHY; rebuild it: ...', the error for every index file that cannot be used."""
    return IndexFormatError(f"Index {index_dir}: {why}; {rebuild_hint(index_dir, manifest)}")


def rebuild_hint(index_dir: Path | str, manifest: Manifest | dict[str, Any] | None = None) -> str:
    """'rebuild it: <build command>' with the encoder the manifest (checked or raw JSON) names."""
    enc = manifest.get("encoder") if isinstance(manifest, dict) else getattr(manifest, "encoder", None)
    return f"rebuild it: {build_command(index_dir, enc)}"


# --- The manifest: typed records, parsed and checked once (parse_manifest) ---

@dataclass(frozen=True)
class EncoderRecord:
    """The encoder that made an index's embeddings (same_embedding_space compares these)."""

    name: str
    weights_sha256: str
    dim: int
    preprocess: str
    weights_file: str | None
    weights_path: str
    random_demo: bool = False
    config_sha256: str | None = None  # (absent in manifests of fixed-architecture encoders)
    tokenizer_sha256: str | None = None


@dataclass(frozen=True)
class PartRecord:
    """One FAISS index over a group of categories; an "ivf" one lives in `file`."""

    categories: list[str]
    count: int
    type: str
    factory: str
    file: str | None = None
    nprobe: int | None = None
    nprobe_filtered: int | None = None  # probes under a category filter (ann.VectorIndex)
    tuned_recall_at_10: dict[str, float] | None = None


@dataclass(frozen=True)
class VectorIndexRecord:
    type: str  # "flat", "ivf" or "mixed"
    parts: list[PartRecord]


@dataclass(frozen=True)
class Items:
    """The garments, one entry per list each, in embedding-row order."""

    ids: list[str]
    paths: list[str]  # in the catalog the build read (for people: never opened again)
    categories: list[str]
    captions: list[str]
    sha256: list[str]  # of the catalog image: what an incremental build reuses rows by
    image_offsets: list[int]  # where each stored garment PNG lies in the shard
    image_sizes: list[int]


@dataclass(frozen=True)
class Files:
    embeddings: str
    garments: str
    sha256: dict[str, str]  # every file of the version but the manifest (written by write_version)
    bytes: dict[str, int]


@dataclass(frozen=True)
class Manifest:
    encoder: EncoderRecord
    count: int
    vector_index: VectorIndexRecord
    files: Files
    items: Items
    built: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return to_json(self)


def manifest_problems(m: Manifest) -> list[str]:
    """Every problem of a typed manifest beyond its types, one short sentence each (empty: usable)."""
    problems: list[str] = []
    add = problems.append
    items, files, n = m.items, m.files, len(m.items.ids)
    if not 1 <= m.encoder.dim <= MAX_DIM:
        add(f"encoder.dim {m.encoder.dim} is out of range")
    lengths = {key: len(getattr(items, key)) for key in ITEM_LISTS}
    if len(set(lengths.values())) > 1:
        add(f"item lists have different lengths ({', '.join(f'{k} {v}' for k, v in lengths.items())})")
    if not all(items.ids):
        add("items.ids has an empty id")
    if (dup := next((i for i, c in Counter(items.ids).items() if c > 1), None)) is not None:
        add(f"items.ids lists {dup[:60]!r} twice")
    if (bad := next((p for p in items.paths if not is_plain_relative(p)), None)) is not None:
        add(f"item path {bad[:80]!r} is not a relative path inside the catalog")
    if (bad := next((h for h in items.sha256 if not _HEX64.fullmatch(h)), None)) is not None:
        add(f"items.sha256 holds {bad[:70]!r}, not a sha256")
    if m.count != n:
        add(f"count says {m.count} garments, items.ids lists {n}")
    _part_problems(m.vector_index.parts, n, add)
    faiss_files = [p.file for p in m.vector_index.parts if p.type == "ivf" and p.file is not None]
    data_files = [files.embeddings, files.garments, *faiss_files]
    for name in data_files:
        if not is_plain_name(name):
            add(f"data file name {name[:80]!r} is not a plain file name in the index folder")
    for name in [*data_files, MARKER]:
        if not _HEX64.fullmatch(files.sha256.get(name, "")):
            add(f"files.sha256 has no valid hash for {name[:80]!r}")
    if (bad := next((f for f in files.sha256 if f != MARKER and not is_plain_name(f)), None)) is not None:
        add(f"files.sha256 names {bad[:80]!r}, not a plain file name in the index folder")
    for name in dict.fromkeys(data_files + list(files.sha256)):
        if files.bytes.get(name, -1) < 0:
            add(f"files.bytes has no valid size for {name[:80]!r}")
    shard = files.bytes.get(files.garments, -1)
    if len(items.image_offsets) != n or len(items.image_sizes) != n:
        add("items.image_offsets and items.image_sizes must list one integer per garment")
    elif shard >= 0:  # each stored image inside the shard: its reads are bounded by these
        placed = enumerate(zip(items.image_offsets, items.image_sizes, strict=True))
        bad = next((i for i, (offset, size) in placed
                    if offset < 0 or not 0 < size <= MAX_GARMENT_BYTES or offset + size > shard), None)
        if bad is not None:
            add(f"the stored image of item {bad} does not lie inside {GARMENTS}")
    return problems


def _part_problems(parts: list[PartRecord], n: int, add: Callable[[str], None]) -> None:
    """add() each problem of vector_index.parts."""
    if not parts:
        add("vector_index.parts is empty")
    seen: set[str] = set()
    for i, rec in enumerate(parts):
        where = f"vector_index.parts[{i}]."
        if seen & set(rec.categories):
            add(f"{where}categories repeats a category of another part")
        seen |= set(rec.categories)
        if rec.type not in PART_TYPES:
            add(f"{where}type {rec.type[:20]!r} is not one of {', '.join(PART_TYPES)}")
        if rec.type != "ivf":
            continue
        for key in ("file", "nprobe"):
            if getattr(rec, key) is None:
                add(f"{where}{key} is missing")
        for key in ("nprobe", "nprobe_filtered"):
            value = getattr(rec, key)
            if value is not None and value < 1:  # 0 too: never read as "absent"
                add(f"{where}{key} {value} is below 1")
    counted = sum(rec.count for rec in parts)
    if parts and counted != n:
        add(f"vector_index.parts count {counted} garments, the items {n}")


def parse_manifest(raw: bytes, path: Path, index_dir: Path) -> Manifest:
    """The manifest in `raw` (read from `path`), checked; IndexFormatError naming its problems."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # ValueError: UTF-8, JSON and int limits
        raise IndexFormatError(f"{path} is not a readable index manifest ({str(exc)[:120]}); "
                               f"{rebuild_hint(index_dir)}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise IndexFormatError(f"{path} is not a Fashion-RAG garment index manifest; "
                               f"{rebuild_hint(index_dir)}")
    found = data.get("format_version")
    if found != FORMAT_VERSION or type(found) is not int:
        raise IndexFormatError(
            f"{path} has index format version {str(found)[:20]}, where this version of Fashion-RAG expects "
            f"{FORMAT_VERSION}; {rebuild_hint(index_dir, data)}")
    problems: list[str] = []
    # Format 4 stores the garments: a manifest naming a catalog folder is not one a build wrote
    # (the value is never looked at, so the message is the same wherever it points).
    if "catalog_root" in data or "catalog_root_relative" in data:
        problems.append("it names a catalog folder (catalog_root), which an index holding its own "
                        "garment images never does")
    with contextlib.suppress(Mistyped):
        manifest = from_json(Manifest, data, "", problems)
        problems += manifest_problems(manifest)
    if problems:
        more = f" (and {len(problems) - _MAX_PROBLEMS} more)" if len(problems) > _MAX_PROBLEMS else ""
        raise IndexFormatError(f"Index {index_dir} is damaged: {'; '.join(problems[:_MAX_PROBLEMS])}{more}; "
                               f"{rebuild_hint(index_dir, data)}")
    return manifest


def encoder_record(encoder: GarmentEncoder) -> EncoderRecord:
    path = Path(encoder.weights_path)
    return EncoderRecord(name=encoder.name, weights_sha256=encoder.weights_hash, dim=int(encoder.dim),
                         preprocess=encoder.preprocess_id, weights_file=path.name, weights_path=str(path),
                         random_demo=bool(encoder.is_random_demo), config_sha256=encoder.config_hash,
                         tokenizer_sha256=encoder.tokenizer_hash)


# What image embeddings depend on (the tokenizer changes only text queries: check_encoder compares it too).
_SPACE = operator.attrgetter("name", "weights_sha256", "dim", "preprocess", "config_sha256")


def same_embedding_space(a: EncoderRecord, b: EncoderRecord) -> bool:
    """Whether encoders `a` and `b` give the same image embeddings."""
    return _SPACE(a) == _SPACE(b)


def describe_encoder(rec: EncoderRecord) -> str:
    folder = f"model folder, config sha256 {rec.config_sha256[:12]}, " if rec.config_sha256 else ""
    return f"{rec.name} ({folder}weights {rec.weights_file}, sha256 {rec.weights_sha256[:12]}, {rec.dim}-d)"


def check_encoder(manifest: Manifest, encoder: GarmentEncoder, index_dir: Path | str = "") -> None:
    """Refuse an encoder that does not produce the index's embedding space, naming both."""
    built, given = manifest.encoder, encoder_record(encoder)
    if same_embedding_space(built, given) and built.tokenizer_sha256 == given.tokenizer_sha256:
        return
    raise EncoderMismatchError(
        f"The index {index_dir} was built with encoder {describe_encoder(built)}, but the "
        f"encoder given is {describe_encoder(given)}. Text and image embeddings of different "
        f"encoders are not comparable: load the weights the index was built with "
        f"({_source(built)[1]}), or rebuild the index with these weights ({build_command(index_dir, given)})."
    )


# --- The pointer and its versions ---

POINTER = "index.json"
LOCK = ".build.lock"
_VERSION = re.compile(r"v-\d{8}T\d{6}Z-[0-9a-f]{8}")
_TMP_PREFIX = ".tmp-"
_BUILD_ID = re.compile(r"[0-9a-f]{16}")
_MAX_RECORD_BYTES = 4096  # a pointer, marker or lock record


class OutDirError(ValueError):
    """A build's output folder that could hold someone's data (or the catalog itself)."""


class IndexBusyError(ValueError):
    """Another build of the same index is running."""


@dataclass(frozen=True)
class IndexVersion:
    """The version of an index a reader loads: resolved once, then used for every file."""

    index_dir: Path  # the index folder (NAME/), resolved
    data_dir: Path  # the version folder: manifest.json and the data files
    version: str  # its name: another one whenever a build swaps in a version (fingerprints, caches)


@dataclass(frozen=True)
class BuildLock:
    """A build holding the lock of its index folder (build_lock)."""

    out: Path
    build: str  # this build's id: in the names and markers of the folders it makes
    last: str | None  # the build the lock file named before: its unfinished folders are known


# The small records beside the manifest, parsed by the same typed checker; `valid` says what
# else (beyond format == FORMAT) makes one ours.

@dataclass(frozen=True)
class Pointer:
    """index.json: the version readers load, and the one before it (a reader may still be on it)."""

    format: str
    current: str
    previous: str | None = None

    def valid(self) -> bool:
        return all(_VERSION.fullmatch(v) for v in (self.current, self.previous) if v is not None)


@dataclass(frozen=True)
class LockRecord:
    """What the lock file holds: the last build that held it (its unfinished folders are known)."""

    format: str
    build: str

    def valid(self) -> bool:
        return bool(_BUILD_ID.fullmatch(self.build))


@dataclass(frozen=True)
class Marker(LockRecord):
    """.build.json in every folder a build makes: the build, and the names the folder may have."""

    names: list[str]  # its temp name, then the version name it will be published under (if any)

    def valid(self) -> bool:
        return (super().valid() and 1 <= len(self.names) <= 2
                and self.names[0].startswith(f"{_TMP_PREFIX}{self.build}-")
                and all(_VERSION.fullmatch(v) for v in self.names[1:]))


_R = typing.TypeVar("_R", Pointer, Marker, LockRecord)


def _parse_record(cls: type[_R], raw: bytes) -> _R | None:
    """The record in `raw`, or None when it is not a well-formed one of ours."""
    record = parse(cls, raw)
    return record if record is not None and record.format == FORMAT and record.valid() else None


def _read_file(folder: Path, name: str, max_bytes: int, what: str, index_dir: Path, hint: str) -> bytes:
    """File `name` of `folder`, read only as a regular file inside it; IndexFormatError ending in
    `hint` if it cannot be (FileNotFoundError and NotADirectoryError pass: callers tell absent)."""
    try:
        return read_regular(inside(name, folder, what), max_bytes, what)
    except (UnreadableFileError, PathRuleError) as exc:
        raise IndexFormatError(f"Index {index_dir}: {exc}; {hint}") from exc
    except (FileNotFoundError, NotADirectoryError):
        raise
    except OSError as exc:
        raise IndexFormatError(f"Cannot read {folder / name} ({exc}); {hint}") from exc


def read_pointer(index_dir: Path) -> Pointer | None:
    """The pointer of an index folder (None when there is none); IndexFormatError when not ours."""
    # A build refuses a folder whose pointer is not its own: the fix is a new folder.
    rebuild = f"rebuild the index into a new folder: {build_command('<new index folder>')}"
    try:
        raw = _read_file(index_dir, POINTER, _MAX_RECORD_BYTES, "index pointer file", index_dir, rebuild)
    except (FileNotFoundError, NotADirectoryError):
        return None
    pointer = _parse_record(Pointer, raw)
    if pointer is None:
        raise IndexFormatError(f"{index_dir / POINTER} is not the pointer file of a Fashion-RAG garment "
                               f"index (damaged or foreign); {rebuild}")
    return pointer


def resolve_version(index_dir: str | os.PathLike[str]) -> IndexVersion:
    """The version a reader should load now: the one the pointer names."""
    index_dir = Path(index_dir).expanduser().resolve()
    pointer = read_pointer(index_dir)
    if pointer is not None:
        return IndexVersion(index_dir, inside(pointer.current, index_dir, "index version folder"),
                            pointer.current)
    if not (index_dir / MANIFEST).exists():
        why = f"No garment index at {index_dir} ({POINTER} missing). Build one: `{build_command(index_dir)}`."
    elif _VERSION.fullmatch(index_dir.name) or (index_dir / MARKER).exists():
        why = (f"{index_dir} is one stored version of the index {index_dir.parent}, not an index: load "
               f"{index_dir.parent} (stored versions are replaced by the next build).")
    else:  # a manifest without a pointer: a layout before the versioned one (never released), or not ours
        why = (f"{index_dir} is not a Fashion-RAG garment index of this format ({MANIFEST} without "
               f"{POINTER}), and a build will not write over it; {rebuild_hint('<new folder>')} (then "
               f"delete {index_dir})")
    raise IndexFormatError(why)


def looks_like_index(folder: Path) -> bool:
    """Cheap test for listings: a pointer file, or a manifest (loading it then says how to rebuild)."""
    return (folder / POINTER).is_file() or (folder / MANIFEST).is_file()


# --- Which folders a build made ---

def _marker(folder: Path) -> Marker | None:
    """The folder's build marker if it is a well-formed one (whatever names it lists)."""
    path = folder / MARKER
    try:
        if path.is_symlink():
            return None
        return _parse_record(Marker, read_regular(path, _MAX_RECORD_BYTES, "build marker"))
    except (OSError, ValueError):  # (UnreadableFileError is a ValueError)
        return None


def _left_by(build: str | None, folder: Path) -> bool:
    """A folder the lock file's last build made or was deleting when it died: named after it, with
    a well-formed marker, or empty but for an empty one (killed before writing it)."""
    if build is None or not folder.name.startswith(f"{_TMP_PREFIX}{build}-"):
        return False
    if _marker(folder) is not None:
        return True
    try:
        with os.scandir(folder) as entries:
            return all(e.name == MARKER and e.is_file(follow_symlinks=False)
                       and e.stat(follow_symlinks=False).st_size == 0 for e in entries)
    except OSError:
        return False


def _built(entry: os.DirEntry, last: str | None) -> bool:
    """A folder a build made: its marker names it as it is called now, or the last build left it."""
    if not entry.is_dir(follow_symlinks=False):
        return False
    marker = _marker(Path(entry.path))
    return (marker is not None and entry.name in marker.names) or _left_by(last, Path(entry.path))


def _is_pointer_temp(entry: os.DirEntry) -> bool:
    return is_atomic_temp(entry.name, POINTER) and entry.is_file(follow_symlinks=False)


# --- Writing ---

def prepare_out(out_dir: str | os.PathLike[str], catalog_root: Path) -> Path:
    """The resolved output folder of a build, refused (nothing touched) unless it is absent, empty
    or an index of this format, and neither the catalog nor inside it: a build replaces what is
    in its folder (build_lock checks again under the lock)."""
    out = Path(out_dir).expanduser().resolve()
    catalog = Path(catalog_root).resolve()
    if out.is_relative_to(catalog):
        where = "is the catalog folder" if out == catalog else f"is inside the catalog folder {catalog}"
        raise OutDirError(f"The output folder (--out) {out} {where}: an index must not be written among "
                          "your images. Choose a folder outside it, e.g. "
                          "ComfyUI/models/fashion_rag/indexes/<name>.")
    if catalog.is_relative_to(out):
        raise OutDirError(f"The catalog {catalog} is inside the output folder (--out) {out}: choose a new "
                          f"folder for the index, e.g. ComfyUI/models/fashion_rag/indexes/<name>.")
    if not os.path.lexists(out):
        return out
    if not out.is_dir():
        raise OutDirError(f"The output folder (--out) {out} is a file, not a folder: choose a folder.")
    last = None
    if os.path.lexists(out / LOCK):
        try:  # a folder, FIFO or symlink there, or a file no build wrote, is not ours
            if (out / LOCK).is_symlink():
                _refuse([LOCK], out)
            last = _lock_owner(out, read_regular(out / LOCK, _MAX_RECORD_BYTES, "lock file"))
        except (OSError, ValueError):
            _refuse([LOCK], out)
    _refuse(_foreign_entries(out, last), out)
    return out


def _refuse(foreign: list[str], out: Path) -> None:
    """OutDirError naming what in `out` is not a build's, if anything."""
    if not foreign:
        return
    older = (f" ({MANIFEST} there without {POINTER}: an index of an older layout, which this version "
             "neither reads nor replaces)" if MANIFEST in foreign else "")
    raise OutDirError(
        f"The output folder (--out) {out} holds files that are not a garment index ({listing(foreign)})"
        f"{older}: refusing to write there, so nothing in it is replaced or deleted. Give --out a new or "
        f"empty folder, or an index folder built before.")


def _foreign_entries(out: Path, last: str | None) -> list[str]:
    """What in `out` is neither an index of this format nor something a build of it made."""
    if os.path.lexists(out / POINTER):
        try:
            read_pointer(out)
            return []  # an index: whatever else is in it stays, untouched
        except IndexFormatError:
            return [POINTER]
    # No index yet (none built, or a first build that died): only what builds leave.
    return sorted(e.name for e in os.scandir(out)
                  if not (e.name == LOCK or _is_pointer_temp(e) or _built(e, last)))


def _lock_owner(out: Path, raw: bytes) -> str | None:
    """The build a lock file names (None: empty, as builds before the markers left it)."""
    if not raw:
        return None
    record = _parse_record(LockRecord, raw)
    if record is None:
        raise OutDirError(f"{out / LOCK} is not the lock file of a Fashion-RAG build: refusing to write in "
                          f"{out}.")
    return record.build


@contextlib.contextmanager
def build_lock(out: Path) -> Iterator[BuildLock]:
    """Hold the build lock of `out` (made by the caller; the OS releases it when the build dies), or
    IndexBusyError with nothing changed; under it `out` is checked again (OutDirError), the last
    build's unfinished folders are deleted and this build is recorded in its place."""
    path = out / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)  # (os.open: no inherit)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            _refuse([LOCK], out)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # A failed first build removes the folder, and its lock file, while this one opens it.
            if not os.path.samestat(os.stat(path, follow_symlinks=False), os.fstat(fd)):
                raise FileNotFoundError(path)  # (the file we hold is no longer the one there)
        except (BlockingIOError, FileNotFoundError):
            raise IndexBusyError(f"Another build is running on {out}; wait for it to finish and run this "
                                 "build again.") from None
        lock = BuildLock(out, secrets.token_hex(8), _lock_owner(out, os.read(fd, _MAX_RECORD_BYTES + 1)))
        _refuse(_foreign_entries(out, lock.last), out)
        # The last build's unfinished folders are known only by the id about to be overwritten.
        with os.scandir(out) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and _left_by(lock.last, Path(entry.path)):
                    _remove(lock, Path(entry.path), rename=False)  # (named after the recorded build)
        # Records are all as long, and written at once: a kill leaves the old one or the new one.
        with naming(path), open(fd, "wb", closefd=False) as f:
            f.seek(0)
            f.write(json.dumps(to_json(LockRecord(FORMAT, lock.build))).encode())
            f.truncate()
            os.fsync(fd)
        yield lock
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def temp_folder(lock: BuildLock, version: bool = False) -> Iterator[Path]:
    """A private folder of this build in its index folder, with its marker; `version`: one
    write_version() can make the new version. Removed on leaving unless it was made one."""
    names = [f"{_TMP_PREFIX}{lock.build}-{secrets.token_hex(4)}"]
    if version:  # named now, so the marker (hashed into the manifest) never changes
        names.append(f"v-{_dt.datetime.now(_dt.timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}")
    folder = lock.out / names[0]
    os.mkdir(folder, 0o700)
    try:
        with naming(folder / MARKER):
            fd = os.open(folder / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with open(fd, "wb") as f:  # one write: a kill leaves no marker, an empty one, or all of it
                f.write(json.dumps(to_json(Marker(FORMAT, lock.build, names))).encode())
        yield folder
    finally:
        if folder.is_dir():  # (gone once published)
            _remove(lock, folder)


def _remove(lock: BuildLock, folder: Path, rename: bool = True) -> bool:
    """Delete a build's folder, first renamed after this build (the lock file's) and its marker last,
    so a kill leaves a folder a later build knows; False if it could not be (a later one tries again)."""
    try:
        doomed = folder
        if rename and not folder.name.startswith(f"{_TMP_PREFIX}{lock.build}-"):
            doomed = lock.out / f"{_TMP_PREFIX}{lock.build}-{secrets.token_hex(4)}"
            os.rename(folder, doomed)
        with os.scandir(doomed) as entries:
            for entry in entries:
                if entry.name == MARKER:
                    continue  # the marker goes last, and only as a file: a folder of that name stays
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
        (doomed / MARKER).unlink(missing_ok=True)
        os.rmdir(doomed)
        return True
    except OSError:  # e.g. a file a reader maps on Windows
        return False


def write_version(lock: BuildLock, tmp: Path, manifest: Manifest, hashes: dict[str, str] | None = None
                  ) -> str:
    """Make the files in `tmp` (a temp_folder(lock, version=True)) a new version, the manifest given
    the sha256 and size of each (`hashes`: those computed while writing, so a 30 GB file is not
    read back), and swap it in; returns its name. Call under build_lock."""
    marker = _marker(tmp)
    if marker is None or marker.build != lock.build or marker.names[0] != tmp.name or len(marker.names) != 2:
        raise ValueError(f"{tmp} is not a version folder of this build")  # a caller's mistake
    version, hashes = marker.names[1], hashes or {}
    sha = {p.name: hashes.get(p.name) or sha256_file(p) for p in sorted(tmp.iterdir())}
    sizes = {name: (tmp / name).stat().st_size for name in sha}
    files = dataclasses.replace(manifest.files, sha256=sha, bytes=sizes)
    with naming(tmp / MANIFEST):
        (tmp / MANIFEST).write_text(json.dumps(dataclasses.replace(manifest, files=files).to_json(), indent=1,
                                               ensure_ascii=False), encoding="utf-8")
    # The private (0700) folder and its files get the modes the umask gave the manifest, so that
    # a ComfyUI running as another user can read the index.
    file_mode = (tmp / MANIFEST).stat().st_mode & 0o666
    for path in tmp.iterdir():
        os.chmod(path, file_mode)
        fsync_path(path)
    os.chmod(tmp, file_mode | ((file_mode & 0o444) >> 2))  # x wherever r
    fsync_path(tmp)
    os.rename(tmp, lock.out / version)
    try:
        fsync_path(lock.out)
        previous = read_pointer(lock.out)
        text = json.dumps(to_json(Pointer(FORMAT, version, previous.current if previous else None))) + "\n"
        with naming(lock.out / POINTER):  # the swap: readers see the old pointer or the new one
            atomic_write(lock.out / POINTER, lambda t: Path(t).write_text(text, encoding="utf-8"),
                         durable=True)
    except BaseException:
        _remove(lock, lock.out / version)  # never named by the pointer: no reader is on it
        raise
    return version


def clean_stale(lock: BuildLock) -> tuple[list[str], list[str]]:
    """Delete what dead builds left and versions older than the previous one (without a pointer,
    all: no reader can be on one); returns the names deleted, and those left alone (named like a
    build's, but no marker proves it: a user's, or made before the markers). Call under build_lock."""
    try:
        pointer = read_pointer(lock.out)
    except IndexFormatError:
        return [], []  # not ours to judge: leave everything as it is
    keep = {pointer.current, pointer.previous} if pointer else set()
    removed, alone = [], []
    for entry in sorted(os.scandir(lock.out), key=operator.attrgetter("name")):
        if entry.is_dir(follow_symlinks=False):
            if entry.name.startswith(f"{_TMP_PREFIX}{lock.build}-") or entry.name in keep:
                continue  # this build's own, in use; or a version readers may be on
            if _built(entry, lock.last):
                if _remove(lock, Path(entry.path)):
                    removed.append(entry.name)
            elif entry.name.startswith(_TMP_PREFIX) or _VERSION.fullmatch(entry.name):
                alone.append(entry.name)
        elif _is_pointer_temp(entry):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(entry.name)
    return removed, alone


def discard_unpublished(lock: BuildLock) -> None:
    """Remove the folder a failed first build created, if it holds only what that build left (a
    build that opened its lock file meanwhile sees it replaced, and stops). Call under build_lock."""
    with contextlib.suppress(OSError, IndexFormatError):
        if read_pointer(lock.out) is None:
            clean_stale(lock)
            if os.listdir(lock.out) == [LOCK]:
                (lock.out / LOCK).unlink()
                lock.out.rmdir()


# --- Reading a version ---

_LOAD_ATTEMPTS = 3


@dataclass(frozen=True)
class StoredVersion:
    """One version of an index as read_version() gives it: checked, verified, mapped."""

    ver: IndexVersion
    manifest: Manifest
    embeddings: np.ndarray  # [n, dim] float32, memory-mapped
    garments: np.ndarray  # the garment image shard, uint8, memory-mapped


def read_version(index_dir: str | os.PathLike[str], check: Callable[[Manifest], None],
                 then: Callable[[StoredVersion], Any]) -> Any:
    """then(the index's current version): its manifest checked (and by `check`, e.g. the encoder,
    before any file is hashed), every data file verified, embeddings and garment shard mapped;
    `then` (e.g. reading the FAISS parts) runs within the same retry."""
    def load(ver: IndexVersion) -> Any:
        manifest = read_version_manifest(ver)
        check(manifest)
        verify_files(ver, manifest)
        emb = map_embeddings(ver.data_dir / manifest.files.embeddings, len(manifest.items.ids),
                             manifest.encoder.dim, ver.index_dir, manifest)
        return then(StoredVersion(ver, manifest, emb, map_file(ver, manifest, manifest.files.garments,
                                                               "garment image file")))

    return _retrying(index_dir, load)


def read_manifest(index_dir: str | os.PathLike[str]) -> Manifest:
    """The checked manifest of an index's current version."""
    return _retrying(index_dir, read_version_manifest)


def _retrying(index_dir: str | os.PathLike[str], load: Callable[[IndexVersion], Any]) -> Any:
    for attempt in range(_LOAD_ATTEMPTS):
        ver = resolve_version(index_dir)
        try:
            return load(ver)
        except (FileNotFoundError, NotADirectoryError) as exc:
            # Builds keep the current and the previous version: this one can only vanish when
            # two builds finished during this load, and then the pointer names a newer one.
            if attempt + 1 < _LOAD_ATTEMPTS and resolve_version(index_dir).version != ver.version:
                continue
            raise IndexFormatError(f"Index {ver.index_dir} is incomplete ({exc.filename or exc} is missing); "
                                   f"{rebuild_hint(ver.index_dir)}") from exc
    raise AssertionError("unreachable")


def read_version_manifest(ver: IndexVersion) -> Manifest:
    """The checked manifest of one version (FileNotFoundError passes through: see _retrying)."""
    raw = _read_file(ver.data_dir, MANIFEST, MAX_MANIFEST_BYTES, "index manifest", ver.index_dir,
                     rebuild_hint(ver.index_dir))
    return parse_manifest(raw, ver.data_dir / MANIFEST, ver.index_dir)


def verify_files(ver: IndexVersion, manifest: Manifest) -> None:
    """Every file of the version is a regular file of the size and sha256 its manifest records,
    before FAISS parses it (read no further than that size: a huge sparse file is not hashed)."""
    for name, expected in manifest.files.sha256.items():
        try:
            path = inside(name, ver.data_dir, "index data file")
            digest = cached_sha256(path, manifest.files.bytes.get(name), "index data file")
        except (UnreadableFileError, PathRuleError) as exc:
            raise damaged(ver.index_dir, exc, manifest) from exc
        if digest != expected:
            raise damaged(ver.index_dir, f"{name} does not match the checksum in its manifest (damaged or "
                          "replaced)", manifest)


def _open_data(data_dir: Path, name: str, index_dir: Path, manifest: Manifest | None, what: str) -> BinaryIO:
    """File `name` of a version opened as a regular file inside it, of at most its manifest's size."""
    max_bytes = manifest.files.bytes.get(name) if manifest else None
    try:
        return open_regular(inside(name, data_dir, what), max_bytes, what)
    except (UnreadableFileError, PathRuleError) as exc:
        raise damaged(index_dir, exc, manifest) from exc


def map_file(ver: IndexVersion, manifest: Manifest, name: str, what: str) -> np.ndarray:
    """A data file of the version (verified) as read-only uint8, of exactly its manifest's size."""
    size = manifest.files.bytes.get(name)
    with _open_data(ver.data_dir, name, ver.index_dir, manifest, what) as f:
        if os.fstat(f.fileno()).st_size != size:
            raise damaged(ver.index_dir, f"{name} is not the size its manifest records (damaged or replaced)",
                          manifest)
        return np.memmap(f, dtype=np.uint8, mode="r", shape=(size,)) if size else np.zeros(0, np.uint8)


def map_embeddings(path: Path, n: int, dim: int, index_dir: Path | None = None,
                   manifest: Manifest | None = None) -> np.ndarray:
    """The [n, dim] float32 embeddings of a .npy file mapped read-only (3 GB for 1M garments cost
    page cache, not process memory), its header parsed by numpy (no pickle) and checked."""
    with _open_data(path.parent, path.name, index_dir or path.parent, manifest, "embeddings file") as f:
        try:
            return map_npy(f, n, dim)
        except ValueError as exc:
            raise damaged(index_dir or path.parent, f"{path.name} {exc}", manifest) from exc


def write_embeddings_file(path: Path, n: int, dim: int, blocks: Iterable[np.ndarray]) -> str:
    """The [n, dim] float32 embeddings from row blocks as a .npy file; returns its sha256."""
    return write_npy(path, n, dim, blocks)


def write_faiss(index: Any, path: Path) -> None:
    """faiss.write_index through a Python file (FAISS's own file writer fails only on close, with
    a warning and a truncated file)."""
    import faiss

    with hashed_file(path) as out:
        faiss.write_index(index, faiss.PyCallbackIOWriter(out.write))


def read_faiss(data_dir: Path, name: str, index_dir: Path, manifest: Manifest) -> Any:
    """The FAISS index in file `name` of the version folder, read through the checked descriptor
    (faiss.read_index(path) would open the path itself) up to the size the manifest records."""
    import faiss

    f = _open_data(data_dir, name, index_dir, manifest, "vector index file")
    size = os.fstat(f.fileno()).st_size  # (a file that grows while read is cut off here)

    def read(n: int) -> bytes:
        return f.read(min(n, size - f.tell()))

    try:
        with f:  # (a newer build deleting the file meanwhile does not matter: the descriptor holds it)
            return faiss.read_index(faiss.PyCallbackIOReader(read, 1 << 20))
    except (RuntimeError, MemoryError) as exc:  # FAISS's C++ errors: a damaged file, not a caller's bug
        reason = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
        raise damaged(index_dir, f"{name} is not a readable FAISS index ({reason})", manifest) from exc
