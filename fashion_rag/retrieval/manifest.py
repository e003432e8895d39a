"""An index's manifest.json: what it records, and the checks it must pass before anything is used.

Format version 4 lives in a version folder behind the index's pointer file (storage.py) and
records the sha256 and the byte size of every other file in that folder: the data files (the
embeddings .npy, the FAISS parts, the garment image shard) and the build's marker. Each is read
only as a regular file of that size, so a FIFO, a device or a huge sparse file in its place is
refused before a byte is read. An index holds its garment images (docs/method.md, "Stored
garment images"): it names no catalog folder and nothing outside its folder is ever read, so a
copied index works anywhere. Other versions are refused with the command that rebuilds the
index (3 read garments from a catalog folder its manifest named; 2 had no sizes and markers).

A manifest is input like any other (indexes get copied and shared): every key, type and
length is checked at load, paths must be plain relative paths, and each problem is named in
the error together with the command that rebuilds the index.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

from .paths import is_plain_name, is_plain_relative

FORMAT = "fashion-rag-garment-index"
FORMAT_VERSION = 4
MANIFEST = "manifest.json"
MARKER = ".build.json"  # the build marker in each version folder (storage.py): hashed like the data
EMBEDDINGS = "embeddings.npy"
GARMENTS = "garments.bin"  # the fitted garment images (PNG), one after the other
ITEM_LISTS = ("ids", "paths", "categories", "captions", "sha256")
IMAGE_LISTS = ("image_offsets", "image_sizes")  # where each item's PNG lies in GARMENTS
# A stored garment is a 384x512 PNG (~0.6 MB uncompressed at most): more is not one of ours.
MAX_GARMENT_BYTES = 4 << 20
PART_TYPES = ("flat", "ivf")
MAX_DIM = 65_536
# A manifest lists every garment (id, path, category, caption, sha256: ~250 bytes each with
# short captions), so 10M garments write ~2.5 GB; past this it is not one of ours.
MAX_MANIFEST_BYTES = 8 << 30
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_PROBLEMS = 6  # named in one error; the rest are counted


class IndexFormatError(ValueError):
    """The folder holds no usable index of this format (missing, damaged or foreign)."""


class EncoderMismatchError(ValueError):
    """The index was built with a different encoder (architecture, weights or dimension)."""


class Encoder(Protocol):
    """What an index records of its encoder (encoder.GarmentEncoder)."""

    name: str
    weights_path: Path

    @property
    def weights_hash(self) -> str: ...
    @property
    def dim(self) -> int: ...
    @property
    def preprocess_id(self) -> str: ...
    @property
    def is_random_demo(self) -> bool: ...


def _arg(value: Any, placeholder: str) -> str:
    text = str(value) if isinstance(value, str) and value else ""
    if not text or len(text) > 300 or "\n" in text:  # a damaged manifest must not flood the hint
        return placeholder
    return f"'{text}'" if " " in text else text


def rebuild_hint(index_dir: Path | str, manifest: Any = None) -> str:
    """'rebuild it: python -m fashion_rag index build ...' with what the manifest says it was built from."""
    m = manifest if isinstance(manifest, dict) else {}
    enc = m.get("encoder") if isinstance(m.get("encoder"), dict) else {}
    # (No catalog from the manifest: an index names no folder outside itself.)
    out = _arg(str(index_dir), "<index folder>")
    cmd = f"python -m fashion_rag index build --catalog <images folder> --out {out}"
    if enc.get("name"):
        cmd += f" --encoder {_arg(enc.get('name'), '<architecture>')}"
    cmd += f" --weights {_arg(enc.get('weights_path'), '<encoder weights>')}"
    return f"rebuild it: {cmd}"


def manifest_problems(m: dict[str, Any]) -> list[str]:
    """Every problem of a parsed manifest, one short sentence each (empty: usable)."""
    problems: list[str] = []

    def field(obj: Any, key: str, kinds: tuple[type, ...], where: str, optional: bool = False) -> Any:
        if key not in obj:
            if not optional:
                problems.append(f"{where}{key} is missing")
            return None
        value = obj[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            problems.append(f"{where}{key} is {type(value).__name__}, not {names}")
            return None
        return value

    enc = field(m, "encoder", (dict,), "")
    if enc is not None:
        for key in ("name", "weights_sha256", "preprocess", "weights_path"):
            field(enc, key, (str,), "encoder.")
        field(enc, "weights_file", (str, type(None)), "encoder.")
        field(enc, "random_demo", (bool,), "encoder.", optional=True)
        dim = field(enc, "dim", (int,), "encoder.")
        if dim is not None and not 1 <= dim <= MAX_DIM:
            problems.append(f"encoder.dim {dim} is out of range")
    # Format 4 stores the garments: a manifest naming a catalog folder is not one a build wrote
    # (the value is never looked at, so the message is the same wherever it points).
    if "catalog_root" in m or "catalog_root_relative" in m:
        problems.append("it names a catalog folder (catalog_root), which an index holding its own "
                        "garment images never does")
    field(m, "built", (str,), "", optional=True)

    n = _item_problems(m, field, problems)
    data_files = _part_problems(m, field, problems, n)
    files = field(m, "files", (dict,), "")
    if files is not None:
        shard = None
        for key in ("garments", "embeddings"):
            name = field(files, key, (str,), "files.")
            if name is not None:
                data_files.insert(0, name)
                shard = name if key == "garments" else shard
        for name in data_files:
            if not is_plain_name(name):
                problems.append(f"data file name {name[:80]!r} is not a plain file name in the index folder")
        hashes = field(files, "sha256", (dict,), "files.")
        for name in [*data_files, MARKER] if hashes is not None else ():
            if not (isinstance(hashes.get(name), str) and _HEX64.fullmatch(hashes[name])):
                problems.append(f"files.sha256 has no valid hash for {name[:80]!r}")
        listed = list(hashes or ())  # every file the load hashes, opened by these names
        bad = next((name for name in listed if name != MARKER and not is_plain_name(name)), None)
        if bad is not None:
            problems.append(f"files.sha256 names {bad[:80]!r}, not a plain file name in the index folder")
        sizes = field(files, "bytes", (dict,), "files.")
        for name in dict.fromkeys(data_files + listed) if sizes is not None else ():
            if type(sizes.get(name)) is not int or sizes[name] < 0:
                problems.append(f"files.bytes has no valid size for {name[:80]!r}")
        if shard is not None and n is not None and sizes is not None and type(sizes.get(shard)) is int:
            _image_problems(m["items"], sizes[shard], problems)
    return problems


def _image_problems(items: dict[str, Any], shard_bytes: int, problems: list[str]) -> None:
    """Each item's stored image must lie inside the garment shard (reads are bounded by these)."""
    lists = [items.get(key) for key in IMAGE_LISTS]
    if not all(isinstance(v, list) and len(v) == len(items["ids"]) for v in lists):
        problems.append(f"items.{' and items.'.join(IMAGE_LISTS)} must list one integer per garment")
        return
    for i, (offset, size) in enumerate(zip(*lists, strict=True)):
        if (type(offset) is not int or type(size) is not int or offset < 0
                or not 0 < size <= MAX_GARMENT_BYTES or offset + size > shard_bytes):
            problems.append(f"the stored image of item {i} does not lie inside {GARMENTS}")
            return


def _item_problems(m: dict[str, Any], field: Any, problems: list[str]) -> int | None:
    items = field(m, "items", (dict,), "")
    if items is None:
        return None
    lists = {key: field(items, key, (list,), "items.") for key in ITEM_LISTS}
    lengths = {key: len(v) for key, v in lists.items() if v is not None}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{k} {v}" for k, v in lengths.items())
        problems.append(f"item lists have different lengths ({listed})")
    for key, values in lists.items():
        bad = next((i for i, v in enumerate(values or ()) if not isinstance(v, str)), None)
        if bad is not None:
            problems.append(f"items.{key}[{bad}] is not a string")
            lists[key] = None
    ids, paths, hashes = lists["ids"], lists["paths"], lists["sha256"]
    if ids is not None:
        if any(not i for i in ids):
            problems.append("items.ids has an empty id")
        dup = next((i for i, c in Counter(ids).items() if c > 1), None)
        if dup is not None:
            problems.append(f"items.ids lists {dup[:60]!r} twice")
    bad = next((p for p in paths or () if not is_plain_relative(p)), None)
    if bad is not None:
        problems.append(f"item path {bad[:80]!r} is not a relative path inside the catalog")
    bad = next((h for h in hashes or () if not _HEX64.fullmatch(h)), None)
    if bad is not None:
        problems.append(f"items.sha256 holds {bad[:70]!r}, not a sha256")
    count = field(m, "count", (int,), "")
    n = lengths.get("ids")
    if count is not None and n is not None and count != n:
        problems.append(f"count says {count} garments, items.ids lists {n}")
    return n if len(set(lengths.values())) == 1 and len(lengths) == len(ITEM_LISTS) else None


def _part_problems(m: dict[str, Any], field: Any, problems: list[str], n: int | None) -> list[str]:
    """Problems of vector_index; returns the .faiss file names it references."""
    files: list[str] = []
    vi = field(m, "vector_index", (dict,), "")
    parts = field(vi, "parts", (list,), "vector_index.") if vi is not None else None
    if vi is not None and parts is not None and not parts:
        problems.append("vector_index.parts is empty")
    counted, seen = 0, set()
    for i, rec in enumerate(parts or ()):
        where = f"vector_index.parts[{i}]."
        if not isinstance(rec, dict):
            problems.append(f"{where[:-1]} is not an object")
            continue
        cats = field(rec, "categories", (list,), where)
        if cats is not None and not all(isinstance(c, str) for c in cats):
            problems.append(f"{where}categories holds a non-string")
        elif cats is not None:
            if seen & set(cats):
                problems.append(f"{where}categories repeats a category of another part")
            seen |= set(cats)
        count = field(rec, "count", (int,), where)
        counted += count or 0
        kind = field(rec, "type", (str,), where)
        field(rec, "factory", (str,), where)
        if kind is not None and kind not in PART_TYPES:
            problems.append(f"{where}type {kind[:20]!r} is not one of {', '.join(PART_TYPES)}")
        if kind == "ivf":
            name = field(rec, "file", (str,), where)
            if name is not None:
                files.append(name)
            nprobe = field(rec, "nprobe", (int,), where)
            if nprobe is not None and nprobe < 1:
                problems.append(f"{where}nprobe {nprobe} is below 1")
            filtered = field(rec, "nprobe_filtered", (int, type(None)), where, optional=True)
            if filtered is not None and filtered < 1:
                problems.append(f"{where}nprobe_filtered {filtered} is below 1")
            field(rec, "tuned_recall_at_10", (dict, type(None)), where, optional=True)
    if parts and n is not None and counted != n:
        problems.append(f"vector_index.parts count {counted} garments, the items {n}")
    return files


def parse_manifest(raw: bytes, path: Path, index_dir: Path) -> dict[str, Any]:
    """The manifest in `raw` (read from `path`), checked; IndexFormatError naming every problem."""
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSON and int limits
        raise IndexFormatError(f"{path} is not a readable index manifest ({str(exc)[:120]}); "
                               f"{rebuild_hint(index_dir)}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{path} is not a Fashion-RAG garment index manifest; "
                               f"{rebuild_hint(index_dir)}")
    found = manifest.get("format_version")
    if found != FORMAT_VERSION:
        raise IndexFormatError(
            f"{path} has index format version {str(found)[:20]}, where this version of Fashion-RAG expects "
            f"{FORMAT_VERSION}; {rebuild_hint(index_dir, manifest)}")
    problems = manifest_problems(manifest)
    if problems:
        more = f" (and {len(problems) - _MAX_PROBLEMS} more)" if len(problems) > _MAX_PROBLEMS else ""
        raise IndexFormatError(f"Index {index_dir} is damaged: {'; '.join(problems[:_MAX_PROBLEMS])}{more}; "
                               f"{rebuild_hint(index_dir, manifest)}")
    return manifest


def encoder_record(encoder: Encoder) -> dict[str, Any]:
    return {
        "name": encoder.name,
        "weights_sha256": encoder.weights_hash,
        "dim": int(encoder.dim),
        "preprocess": encoder.preprocess_id,
        "weights_file": Path(encoder.weights_path).name,
        "weights_path": str(encoder.weights_path),
        "random_demo": bool(encoder.is_random_demo),
    }


def same_embedding_space(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("name", "weights_sha256", "dim", "preprocess")
    return all(a.get(key) == b.get(key) for key in keys)


def describe_encoder(rec: dict[str, Any]) -> str:
    return (f"{rec.get('name')} (weights {rec.get('weights_file')}, sha256 "
            f"{str(rec.get('weights_sha256'))[:12]}, {rec.get('dim')}-d)")


def check_encoder(manifest: dict[str, Any], encoder: Encoder, index_dir: Path | str = "") -> None:
    """Refuse an encoder that does not produce the index's embedding space, naming both."""
    built = manifest["encoder"]
    # Name and dimension first: they need no hashing and no model.
    given = {"name": encoder.name, "dim": int(encoder.dim), "weights_file": Path(encoder.weights_path).name}
    mismatch = built["name"] != given["name"] or int(built["dim"]) != given["dim"]
    if not mismatch:
        given["weights_sha256"] = encoder.weights_hash
        given["preprocess"] = encoder.preprocess_id
        mismatch = not same_embedding_space(built, given)
    if mismatch:
        given.setdefault("weights_sha256", encoder.weights_hash)
        raise EncoderMismatchError(
            f"The index {index_dir} was built with encoder {describe_encoder(built)}, but the "
            f"encoder given is {describe_encoder(given)}. Text and image embeddings of different "
            f"encoders are not comparable: load the weights the index was built with "
            f"({built.get('weights_path')}), or rebuild the index with these weights "
            f"(python -m fashion_rag index build --catalog <catalog> --out {index_dir} "
            f"--encoder {encoder.name} --weights {encoder.weights_path})."
        )
