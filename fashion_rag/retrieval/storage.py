"""An index folder on disk: versions behind one pointer file, replaced without a gap.

    NAME/
      index.json             the pointer: {"format", "current": "v-…", "previous": "v-…"}
      v-<time>-<rand>/       one complete build: .build.json, manifest.json, embeddings.safetensors,
                             vectors-<i>.faiss
      .tmp-<build>-<rand>/   a build's work folder (in progress, or left by one that died); never read
      .build.lock            held by the running build (flock); names the last build that held it
      .index.json.<rand>.tmp a pointer being written (or one whose writer died); never read

A build writes a whole new version folder, renames it into place, then swaps the pointer with
one os.replace: a reader (a running ComfyUI, another process) resolves the pointer once per
load and sees the complete old index or the complete new one, never a gap. Each build keeps
the current and the previous version (a reader that resolved the pointer just before a swap
still finds its files) and deletes older versions and what dead builds left; readers retry
when two builds finish within one load.

Ownership: a build renames or deletes only folders it can prove a build made, never a folder
for its name alone. Each work and version folder holds a marker (.build.json, listed and hashed
in the version's manifest like every other file) written right after the folder is made: the
id of the build and the names the folder may have. A folder is a build's when its marker names
it. The two moments a kill can leave a build's folder without its marker (just after its
mkdir, and while it is being deleted) fall on folders named after the build the lock file
records, which the next build knows and cleans. Anything else is left alone, and makes a
folder with no index yet look foreign: the build is refused. A build never touches anything
beside its folder.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import UnreadableFileError, atomic_write, fsync_path, is_atomic_temp, read_regular, sha256_file
from .manifest import FORMAT, MANIFEST, MARKER, IndexFormatError, rebuild_hint
from .paths import PathRuleError, inside

POINTER = "index.json"
LOCK = ".build.lock"
_VERSION = re.compile(r"v-\d{8}T\d{6}Z-[0-9a-f]{8}")
_TMP_PREFIX = ".tmp-"
_BUILD_ID = re.compile(r"[0-9a-f]{16}")
_MAX_POINTER_BYTES = 4096
_MAX_MARKER_BYTES = 4096
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class OutDirError(ValueError):
    """A build's output folder that could hold someone's data (or the catalog itself)."""


class IndexBusyError(ValueError):
    """Another build of the same index is running."""


@dataclass(frozen=True)
class IndexVersion:
    """The version of an index a reader loads: resolved once, then used for every file."""

    index_dir: Path  # the index folder (NAME/), resolved
    data_dir: Path  # the version folder: manifest.json and the data files
    version: str  # the version folder's name
    token: str  # changes whenever another version is swapped in (fingerprints, caches)


@dataclass(frozen=True)
class BuildLock:
    """A build holding the lock of its index folder (build_lock)."""

    out: Path
    build: str  # this build's id: in the names and markers of the folders it makes
    last: str | None  # the build the lock file named before: its unfinished folders are known


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """Give an OSError raised without a file name (a failed write: a full disk, EIO) that of `path`."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


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
            or not (previous is None or (isinstance(previous, str) and _VERSION.fullmatch(previous)))):
        raise IndexFormatError(f"{path} is not the pointer file of a Fashion-RAG garment index (damaged or "
                               f"foreign); {rebuild}")
    return pointer


def resolve_version(index_dir: str | os.PathLike[str]) -> IndexVersion:
    """The version a reader should load now: the one the pointer names."""
    index_dir = Path(index_dir).expanduser().resolve()
    pointer = read_pointer(index_dir)
    if pointer is None:
        raise IndexFormatError(_not_an_index_message(index_dir))
    current = pointer["current"]
    return IndexVersion(index_dir, inside(current, index_dir, "index version folder"), current, current)


def _not_an_index_message(index_dir: Path) -> str:
    if not (index_dir / MANIFEST).exists():
        return no_index_message(index_dir)
    if _VERSION.fullmatch(index_dir.name) or (index_dir / MARKER).exists():
        return (f"{index_dir} is one stored version of the index {index_dir.parent}, not an index: load "
                f"{index_dir.parent} (stored versions are replaced by the next build).")
    # A manifest without a pointer: a layout before the versioned one (never released), or not ours.
    return (f"{index_dir} is not a Fashion-RAG garment index of this format ({MANIFEST} without {POINTER}), "
            f"and a build will not write over it; {rebuild_hint('<new folder>')} (then delete {index_dir})")


def looks_like_index(folder: Path) -> bool:
    """Cheap test for listings: a pointer file, or a manifest (loading it then says how to rebuild)."""
    return (folder / POINTER).is_file() or (folder / MANIFEST).is_file()


# --------------------------------------------------------------------------------------------
# Which folders a build made
# --------------------------------------------------------------------------------------------

def _marker(folder: Path) -> dict[str, Any] | None:
    """The folder's build marker if it is a well-formed one (whatever names it lists)."""
    path = folder / MARKER
    try:
        if path.is_symlink():
            return None
        marker = json.loads(read_regular(path, _MAX_MARKER_BYTES, "build marker"))
    except (OSError, ValueError, RecursionError):  # (UnreadableFileError, UnicodeDecodeError: ValueErrors)
        return None
    if not (isinstance(marker, dict) and marker.get("format") == FORMAT
            and isinstance(marker.get("build"), str) and _BUILD_ID.fullmatch(marker["build"])
            and isinstance(marker.get("names"), list) and 1 <= len(marker["names"]) <= 2):
        return None
    tmp, *version = marker["names"]
    if not (isinstance(tmp, str) and tmp.startswith(f"{_TMP_PREFIX}{marker['build']}-")
            and all(isinstance(v, str) and _VERSION.fullmatch(v) for v in version)):
        return None
    return marker


def _owned(folder: Path) -> dict[str, Any] | None:
    """The marker of a folder a build made: well-formed, and naming the folder as it is called now."""
    marker = _marker(folder)
    return marker if marker is not None and folder.name in marker["names"] else None


def _unfinished(folder: Path) -> bool:
    """Empty but for an empty marker: a folder made by a build killed before it wrote the marker."""
    try:
        names = os.listdir(folder)
        if names != [MARKER]:
            return names == []
        st = os.stat(folder / MARKER, follow_symlinks=False)
        return stat.S_ISREG(st.st_mode) and st.st_size == 0
    except OSError:
        return False


def _left_by(build: str | None, folder: Path) -> bool:
    """A folder the build `build` (the lock file's last one) made or was deleting when it died."""
    return (build is not None and folder.name.startswith(f"{_TMP_PREFIX}{build}-")
            and (_marker(folder) is not None or _unfinished(folder)))


def _is_builds(entry: os.DirEntry, last: str | None) -> bool:
    if not entry.is_dir(follow_symlinks=False):
        return False
    return _owned(Path(entry.path)) is not None or _left_by(last, Path(entry.path))


def _is_pointer_temp(entry: os.DirEntry) -> bool:
    return is_atomic_temp(entry.name, POINTER) and entry.is_file(follow_symlinks=False)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def prepare_out(out_dir: str | os.PathLike[str], catalog_root: Path) -> Path:
    """The resolved output folder of a build, refused (nothing touched) unless it is safe to write there.

    It must be absent, empty, or an index of this format, and neither the catalog nor inside
    it: a build replaces what is in its folder. build_lock checks the folder again once it
    holds the lock.
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
    if not out.exists() and not out.is_symlink():
        return out
    if not out.is_dir():
        raise OutDirError(f"The output folder (--out) {out} is a file, not a folder: choose a folder.")
    last = None
    if os.path.lexists(out / LOCK):
        try:
            if (out / LOCK).is_symlink():
                raise _foreign([LOCK], out)
            last = _lock_owner(out, read_regular(out / LOCK, _MAX_POINTER_BYTES, "lock file"))
        except (OSError, ValueError):  # a folder, FIFO or symlink there, or a file no build wrote
            raise _foreign([LOCK], out) from None
    _refuse(_foreign_entries(out, last), out)
    return out


def _refuse(foreign: list[str], out: Path) -> None:
    if foreign:
        raise _foreign(foreign, out)


def _foreign(foreign: list[str], out: Path) -> OutDirError:
    shown = ", ".join(repr(name[:60]) for name in foreign[:5]) + (", …" if len(foreign) > 5 else "")
    older = (f" ({MANIFEST} there without {POINTER}: an index of an older layout, which this version "
             "neither reads nor replaces)" if MANIFEST in foreign else "")
    return OutDirError(
        f"The output folder (--out) {out} holds files that are not a garment index ({shown}){older}: "
        f"refusing to write there, so nothing in it is replaced or deleted. Give --out a new or empty "
        f"folder, or an index folder built before.")


def _foreign_entries(out: Path, last: str | None) -> list[str]:
    """What in `out` is neither an index of this format nor something a build of it made."""
    if (out / POINTER).exists() or (out / POINTER).is_symlink():
        try:
            read_pointer(out)
            return []  # an index: whatever else is in it stays, untouched
        except IndexFormatError:
            return [POINTER]
    # No index yet (none built, or a first build that died): only what builds leave.
    with os.scandir(out) as entries:
        return sorted(e.name for e in entries
                      if not (e.name == LOCK or _is_pointer_temp(e) or _is_builds(e, last)))


def _lock_owner(out: Path, raw: bytes) -> str | None:
    """The build a lock file names (None: empty, as builds before the markers left it)."""
    if not raw:
        return None
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        record = None
    if (isinstance(record, dict) and record.get("format") == FORMAT and isinstance(record.get("build"), str)
            and _BUILD_ID.fullmatch(record["build"])):
        return record["build"]
    raise OutDirError(f"{out / LOCK} is not the lock file of a Fashion-RAG build: refusing to write in "
                      f"{out}.")


@contextlib.contextmanager
def build_lock(out: Path) -> Iterator[BuildLock]:
    """Hold the build lock of the index folder `out` (made by the caller), released by the OS even
    when the build is killed.

    A build that does not get the lock (IndexBusyError) has changed nothing. Under the lock:
    `out` is checked again (OutDirError), the unfinished folders of the build the lock file
    names are deleted, and this build is recorded there in their place.
    """
    path = out / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o666)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            _refuse([LOCK], out)
        _lock(fd, out)
        try:
            now = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            now = None
        st = os.fstat(fd)
        if now is None or (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
            # A failed first build removed the folder (and its lock file) while this one opened it.
            raise _busy(out)
        os.lseek(fd, 0, os.SEEK_SET)
        lock = BuildLock(out, secrets.token_hex(8), _lock_owner(out, os.read(fd, _MAX_POINTER_BYTES + 1)))
        _refuse(_foreign_entries(out, lock.last), out)
        # The last build's unfinished folders are known only by the id about to be overwritten.
        with os.scandir(out) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and _left_by(lock.last, Path(entry.path)):
                    _remove(lock, Path(entry.path), rename=False)  # (named after the recorded build)
        # Records are all as long, and written at once: a kill leaves the old one or the new one.
        record = memoryview(json.dumps({"format": FORMAT, "build": lock.build}).encode())
        with naming(path):
            os.lseek(fd, 0, os.SEEK_SET)
            _write_all(fd, record)
            os.ftruncate(fd, len(record))
            os.fsync(fd)
        yield lock
    finally:
        os.close(fd)  # closing releases the lock


def _busy(out: Path) -> IndexBusyError:
    return IndexBusyError(f"Another build is running on {out}; wait for it to finish and run this build "
                          "again.")


def _lock(fd: int, out: Path) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: no flock; two builds of one index at once are the user's to avoid
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(out) from None


def _make_folder(lock: BuildLock, version: bool) -> Path:
    """A new folder of this build in its index folder, with its marker."""
    name = f"{_TMP_PREFIX}{lock.build}-{secrets.token_hex(4)}"
    names = [name]
    if version:  # named now, so the marker (hashed into the manifest) never changes
        names.append(f"v-{_dt.datetime.now(_dt.timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}")
    folder = lock.out / name
    os.mkdir(folder, 0o700)
    data = memoryview(json.dumps({"format": FORMAT, "build": lock.build, "names": names}).encode())
    try:
        with naming(folder / MARKER):
            fd = os.open(folder / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o666)
            try:
                _write_all(fd, data)  # (one write: a kill leaves no marker, an empty one, or all of it)
            finally:
                os.close(fd)
    except BaseException:
        _remove(lock, folder)  # (a full disk: nothing of it is left)
        raise
    return folder


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


@contextlib.contextmanager
def temp_folder(lock: BuildLock, version: bool = False) -> Iterator[Path]:
    """A private folder in the index folder for this build's work; `version`: one publish() can make
    the new version.

    Removed on leaving, unless publish() renamed it into a version; one that a killed build
    left is removed by a later build (clean_stale), and never read.
    """
    folder = _make_folder(lock, version)
    try:
        yield folder
    finally:
        if folder.is_dir():  # (gone once published)
            _remove(lock, folder)


def _remove(lock: BuildLock, folder: Path, rename: bool = True) -> bool:
    """Delete a build's folder; False if it could not be deleted (a later build tries again).

    It is renamed to a name of this build first (the lock file records this build) and its
    marker goes last, so a kill at any moment leaves a folder a later build knows as a build's.
    """
    try:
        if rename and not folder.name.startswith(f"{_TMP_PREFIX}{lock.build}-"):
            doomed = lock.out / f"{_TMP_PREFIX}{lock.build}-{secrets.token_hex(4)}"
            os.rename(folder, doomed)
        else:
            doomed = folder
        with os.scandir(doomed) as entries:
            for entry in entries:
                if entry.name == MARKER:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
        (doomed / MARKER).unlink(missing_ok=True)
        os.rmdir(doomed)
        return True
    except OSError:  # e.g. a file a reader maps on Windows
        return False


def publish(lock: BuildLock, tmp: Path, manifest: dict[str, Any], hashes: dict[str, str] | None = None
            ) -> str:
    """Make the files in `tmp` (a temp_folder(lock, version=True)) a new version with this manifest,
    and swap it in.

    The manifest gets the sha256 of every file under files.sha256, the marker's too (`hashes`:
    those the caller computed while writing, so a 30 GB embeddings file is not read back).
    Returns the version name. Call under build_lock.
    """
    marker = _owned(tmp)
    if marker is None or marker["build"] != lock.build or len(marker["names"]) != 2:
        raise ValueError(f"{tmp} is not a version folder of this build")  # a caller's mistake
    version = marker["names"][1]
    known = dict(hashes or {})
    manifest["files"]["sha256"] = {p.name: known.get(p.name) or sha256_file(p) for p in sorted(tmp.iterdir())}
    # Readers open each file only as a regular file of this size (format version 3).
    manifest["files"]["bytes"] = {name: (tmp / name).stat().st_size for name in manifest["files"]["sha256"]}
    with naming(tmp / MANIFEST):
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
    _match_umask(tmp)
    for path in tmp.iterdir():
        fsync_path(path)
    fsync_path(tmp)
    os.rename(tmp, lock.out / version)
    try:
        fsync_path(lock.out)
        pointer = read_pointer(lock.out)
        _write_pointer(lock.out, {"format": FORMAT, "current": version,
                                  "previous": pointer["current"] if pointer else None})
    except BaseException:
        _remove(lock, lock.out / version)  # never named by the pointer: no reader is on it
        raise
    return version


def _write_pointer(out: Path, pointer: dict[str, Any]) -> None:
    text = json.dumps(pointer) + "\n"
    # The swap: readers see the old pointer or the new one.
    with naming(out / POINTER):
        atomic_write(out / POINTER, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), durable=True)


def clean_stale(lock: BuildLock) -> tuple[list[str], list[str]]:
    """Delete what dead builds left and versions older than the previous one.

    Returns the names deleted, and those left alone: folders named like a build's that no
    marker proves a build's (a user's, or versions of an index built before the markers).
    Call under build_lock. Without a pointer no reader can be on any version, so orphaned
    versions (a build that died between its rename and its pointer swap) go too.
    """
    try:
        pointer = read_pointer(lock.out)
    except IndexFormatError:
        return [], []  # not ours to judge: leave everything as it is
    keep = {pointer["current"], pointer.get("previous")} if pointer else set()
    removed, alone = [], []
    with os.scandir(lock.out) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        name, folder = entry.name, Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            if name.startswith(f"{_TMP_PREFIX}{lock.build}-") or name in keep:
                continue  # this build's own, in use; or a version readers may be on
            if _owned(folder) is not None or _left_by(lock.last, folder):
                if _remove(lock, folder):
                    removed.append(name)
            elif name.startswith(_TMP_PREFIX) or _VERSION.fullmatch(name):
                alone.append(name)
        elif _is_pointer_temp(entry):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(name)
    return removed, alone


def _match_umask(folder: Path) -> None:
    """Give the private (0700) folder and its files the modes a plain write would.

    Python's own write of the manifest followed the umask; copy that so a ComfyUI running as
    another user can read the index.
    """
    file_mode = (folder / MANIFEST).stat().st_mode & 0o666
    for path in folder.iterdir():
        os.chmod(path, file_mode)
    os.chmod(folder, file_mode | ((file_mode & 0o444) >> 2))  # x wherever r


def discard_unpublished(lock: BuildLock) -> None:
    """Remove the folder a failed first build created, if it holds only what that build left.

    Call under build_lock: a build that opened the lock file meanwhile sees it replaced and
    stops (build_lock).
    """
    with contextlib.suppress(OSError, IndexFormatError):
        if read_pointer(lock.out) is None:
            clean_stale(lock)
            if os.listdir(lock.out) == [LOCK]:
                (lock.out / LOCK).unlink()
                lock.out.rmdir()
