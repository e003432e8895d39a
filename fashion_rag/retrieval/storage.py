"""An index folder on disk: versions behind one pointer file, replaced without a gap.

    NAME/
      index.json        the pointer: {"format", "current": "v-…", "previous": "v-…"}
      v-<time>-<rand>/  one complete build: manifest.json, embeddings.safetensors, vectors-<i>.faiss
      .tmp-<rand>/      a build in progress (or one that died); never read
      .build.lock       held by the running build (flock), so two builds never clean each other up
      .index.json.*.tmp a pointer being written (or one whose writer died); never read

A build writes a whole new version folder, renames it into place, then swaps the pointer with
one os.replace: a reader (a running ComfyUI, another process) resolves the pointer once per
load and sees the complete old index or the complete new one, never a gap. Each build keeps
the current and the previous version (a reader that resolved the pointer just before a swap
still finds its files) and deletes older versions and dead temp folders; readers retry when
two builds finish within one load. Only entries with these names are ever deleted.

Legacy: an index folder of the previous layout (manifest.json directly in NAME/) is still
read, and the next build upgrades it in place. Builds also clean the previous layout's
leftovers beside it (`.NAME.tmp-*`, `.NAME.old-*`), after putting back an index that a crash
of that layout had left set aside.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import UnreadableFileError, atomic_write, fsync_path, is_atomic_temp, read_regular, sha256_file
from ..logs import log
from .manifest import FORMAT, MANIFEST, MAX_MANIFEST_BYTES, IndexFormatError
from .paths import PathRuleError, inside

POINTER = "index.json"
LOCK = ".build.lock"
LEGACY = "legacy"  # the version name of a previous-layout index (files directly in NAME/)
_VERSION = re.compile(r"v-\d{8}T\d{6}Z-[0-9a-f]{8}")
_TMP_PREFIX = ".tmp-"
_OLD_POINTER_TMP = re.compile(rf"\.{re.escape(POINTER)}\.tmp-[0-9a-f]{{8}}")  # builds before 2026-11-30
_LEGACY_FILES = re.compile(r"manifest\.json|embeddings\.safetensors|vectors-\d+\.faiss")
_MAX_POINTER_BYTES = 4096


class OutDirError(ValueError):
    """A build's output folder that could hold someone's data (or the catalog itself)."""


class IndexBusyError(ValueError):
    """Another build of the same index is running."""


@dataclass(frozen=True)
class IndexVersion:
    """The version of an index a reader loads: resolved once, then used for every file."""

    index_dir: Path  # the index folder (NAME/), resolved
    data_dir: Path  # the folder holding manifest.json and the data files
    version: str  # the version folder's name, or LEGACY
    token: str  # changes whenever another version is swapped in (fingerprints, caches)

    @property
    def legacy(self) -> bool:
        return self.version == LEGACY


def no_index_message(index_dir: Path) -> str:
    return (f"No garment index at {index_dir} ({POINTER} missing). Build one with `python -m fashion_rag "
            f"index build --catalog <images folder> --out {index_dir}`.")


def read_pointer(index_dir: Path) -> dict[str, Any] | None:
    """The pointer of an index folder (None when there is none); IndexFormatError when not ours.

    Read only as a regular file inside the folder, a few kB at most: a FIFO in its place
    would otherwise hang every reader (a server's whole prompt queue) at open().
    """
    path = index_dir / POINTER
    # A build refuses a folder whose pointer is not its own: the fix is a new folder.
    rebuild = ("rebuild the index into a new folder: python -m fashion_rag index build --catalog "
               "<images folder> --out <new index folder> --weights <encoder weights>")
    try:
        raw = read_regular(inside(POINTER, index_dir, "index pointer file"), _MAX_POINTER_BYTES,
                           "index pointer file")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (UnreadableFileError, PathRuleError) as exc:
        raise IndexFormatError(f"Index {index_dir}: {exc}; {rebuild}") from exc
    except OSError as exc:
        raise IndexFormatError(f"Cannot read {path} ({exc}); {rebuild}") from exc
    try:
        pointer = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        pointer = None
    previous = pointer.get("previous") if isinstance(pointer, dict) else None
    if (not isinstance(pointer, dict) or pointer.get("format") != FORMAT
            or not isinstance(pointer.get("current"), str) or not _VERSION.fullmatch(pointer["current"])
            or not (previous is None or previous == LEGACY
                    or (isinstance(previous, str) and _VERSION.fullmatch(previous)))):
        raise IndexFormatError(f"{path} is not the pointer file of a Fashion-RAG garment index (damaged or "
                               f"foreign); {rebuild}")
    return pointer


def resolve_version(index_dir: str | os.PathLike[str]) -> IndexVersion:
    """The version a reader should load now (the pointer's, or the legacy files)."""
    index_dir = Path(index_dir).expanduser().resolve()
    pointer = read_pointer(index_dir)
    if pointer is not None:
        current = pointer["current"]
        return IndexVersion(index_dir, inside(current, index_dir, "index version folder"), current, current)
    try:
        st = (index_dir / MANIFEST).stat()
    except OSError:
        raise IndexFormatError(no_index_message(index_dir)) from None
    return IndexVersion(index_dir, index_dir, LEGACY, f"{LEGACY}-{st.st_mtime_ns}-{st.st_size}")


def looks_like_index(folder: Path) -> bool:
    """Cheap test for listings: a pointer file, or a previous-layout manifest."""
    return (folder / POINTER).is_file() or (folder / MANIFEST).is_file()


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def prepare_out(out_dir: str | os.PathLike[str], catalog_root: Path) -> Path:
    """The resolved output folder of a build, refused unless it is safe to write there.

    It must be absent, empty, or an index of this format (either layout), and neither the
    catalog nor inside it: a build replaces what is in its folder.
    """
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
    _restore_legacy_backup(out)
    if not out.exists() and not out.is_symlink():
        return out
    if not out.is_dir():
        raise OutDirError(f"The output folder (--out) {out} is a file, not a folder: choose a folder.")
    foreign = _foreign_entries(out)
    if foreign:
        shown = ", ".join(repr(name[:60]) for name in foreign[:5]) + (", …" if len(foreign) > 5 else "")
        raise OutDirError(
            f"The output folder (--out) {out} holds files that are not a garment index ({shown}): refusing "
            f"to write there, so nothing in it is replaced or deleted. Give --out a new or empty folder, "
            f"or an index folder built before.")
    return out


def _foreign_entries(out: Path) -> list[str]:
    names = sorted(os.listdir(out))
    if POINTER in names:
        try:
            read_pointer(out)
            return []
        except IndexFormatError:
            return [POINTER]
    if MANIFEST in names:
        try:
            raw = read_regular(inside(MANIFEST, out, "index manifest"), MAX_MANIFEST_BYTES, "index manifest")
            is_ours = json.loads(raw).get("format") == FORMAT
        except (OSError, ValueError, AttributeError, RecursionError):  # ValueError: also not a regular file
            is_ours = False
        return [] if is_ours else [MANIFEST]
    # What only a build of ours leaves: a first build that died before its pointer existed.
    return [n for n in names if not (n == LOCK or n.startswith(_TMP_PREFIX) or _is_pointer_temp(n)
                                     or _VERSION.fullmatch(n))]


@contextlib.contextmanager
def build_lock(out: Path) -> Iterator[None]:
    """Hold the index's build lock (released by the OS even when the build is killed)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; two builds of one index at once are the user's to avoid
        yield
        return
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexBusyError(f"Another build of {out} is running; wait for it to finish and run this "
                                 "build again.") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def temp_folder(out: Path) -> Iterator[Path]:
    """A private folder in `out` for a build's work (a new version's files, encoder output).

    Removed on leaving, unless publish() renamed it into a version; one that a killed build
    left is removed by the next build (clean_stale), and never read.
    """
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=out))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already once published


def publish(out: Path, tmp: Path, manifest: dict[str, Any], hashes: dict[str, str] | None = None) -> str:
    """Make the files in `tmp` (a temp_folder) a new version with this manifest, and swap it in.

    The manifest gets the sha256 of every file under files.sha256 (`hashes`: those the caller
    computed while writing, so a 30 GB embeddings file is not read back). Returns the version
    name. Call under build_lock.
    """
    known = dict(hashes or {})
    manifest["files"]["sha256"] = {p.name: known.get(p.name) or sha256_file(p) for p in sorted(tmp.iterdir())}
    # Readers open each file only as a regular file of this size (format version 3).
    manifest["files"]["bytes"] = {name: (tmp / name).stat().st_size for name in manifest["files"]["sha256"]}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
    _match_umask(tmp)
    for path in tmp.iterdir():
        fsync_path(path)
    fsync_path(tmp)
    version = f"v-{_dt.datetime.now(_dt.timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"
    os.rename(tmp, out / version)
    fsync_path(out)
    pointer = read_pointer(out)
    previous = pointer["current"] if pointer else (LEGACY if (out / MANIFEST).is_file() else None)
    _write_pointer(out, {"format": FORMAT, "current": version, "previous": previous})
    return version


def _write_pointer(out: Path, pointer: dict[str, Any]) -> None:
    text = json.dumps(pointer) + "\n"
    # The swap: readers see the old pointer or the new one.
    atomic_write(out / POINTER, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), durable=True)


def _is_pointer_temp(name: str) -> bool:
    return is_atomic_temp(name, POINTER) or _OLD_POINTER_TMP.fullmatch(name) is not None


def clean_stale(out: Path) -> list[str]:
    """Delete dead temp folders and versions older than the previous one; return their names.

    Call under build_lock. Without a pointer no reader can be on any version, so orphaned
    versions (a build that died between its rename and its pointer swap) go too.
    """
    try:
        pointer = read_pointer(out)
    except IndexFormatError:
        return []  # not ours to judge: leave everything as it is
    keep = {pointer["current"], pointer.get("previous")} if pointer else set()
    removed = []
    for entry in os.scandir(out):
        name, is_dir = entry.name, entry.is_dir(follow_symlinks=False)
        if ((is_dir and name.startswith(_TMP_PREFIX))
                or (is_dir and _VERSION.fullmatch(name) and name not in keep)):
            shutil.rmtree(entry.path, ignore_errors=True)  # a folder a reader maps stays on Windows
        elif entry.is_file(follow_symlinks=False) and (
                _is_pointer_temp(name)
                or (pointer and LEGACY not in keep and _LEGACY_FILES.fullmatch(name))):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        else:
            continue
        removed.append(name)
    return removed + _clean_legacy_leftovers(out)


def _legacy_leftovers(out: Path) -> list[Path]:
    """The previous layout's `.NAME.tmp-*` / `.NAME.old-*` folders beside NAME (only index files inside)."""
    if not out.parent.is_dir():
        return []
    found = []
    for path in out.parent.glob(f".{_glob_escape(out.name)}.*-*"):
        rest = path.name[len(out.name) + 2:]
        if (rest.startswith(("tmp-", "old-")) and path.is_dir() and not path.is_symlink()
                and all(_LEGACY_FILES.fullmatch(p.name) and p.is_file() for p in path.iterdir())):
            found.append(path)
    return found


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _restore_legacy_backup(out: Path) -> None:
    """Put back an index that the previous layout's swap had set aside when a crash hit it."""
    if out.exists() or out.is_symlink():
        return
    backups = [p for p in _legacy_leftovers(out) if p.name.startswith(f".{out.name}.old-")
               and (p / MANIFEST).is_file()]
    if backups:
        newest = max(backups, key=lambda p: p.stat().st_mtime)
        os.rename(newest, out)
        log.warning("restored index %s from %s (a build of the previous version was interrupted)", out,
                    newest.name)


def _clean_legacy_leftovers(out: Path) -> list[str]:
    removed = []
    for path in _legacy_leftovers(out):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(f"../{path.name}")
    return removed


def _match_umask(folder: Path) -> None:
    """Give mkdtemp's private (0700) folder and its files the modes a plain write would.

    Python's own write of the manifest followed the umask; copy that so a ComfyUI running as
    another user can read the index.
    """
    file_mode = (folder / MANIFEST).stat().st_mode & 0o666
    for path in folder.iterdir():
        os.chmod(path, file_mode)
    os.chmod(folder, file_mode | ((file_mode & 0o444) >> 2))  # x wherever r


def discard_unpublished(out: Path) -> None:
    """Remove a folder a failed first build created, if it holds only what that build left."""
    with contextlib.suppress(OSError):
        if read_pointer(out) is None and not (out / MANIFEST).exists():
            clean_stale(out)
            (out / LOCK).unlink(missing_ok=True)
            out.rmdir()  # fails, harmlessly, if anything else is in it
