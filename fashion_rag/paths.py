"""The one path rule, for every path from a user, a workflow, metadata or a manifest: resolved
(symlinks included), it must lie inside its root (the catalog folder for garment images, the
index folder for the index's files, an indexes folder for index names, which are one visible
folder name); anything else is refused naming the item and the root, never opened.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

QUOTE_CHARS = 60  # how much of a value an error message repeats


def shorten(value: object, limit: int = QUOTE_CHARS) -> str:
    """repr() of a value, cut to `limit` characters with its full length said, for messages."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text):,} characters)"


def listing(values: list[str], shown: int = 5) -> str:
    """The first few values, quoted and shortened, with how many there are in all when more."""
    more = f", … ({len(values)} in all)" if len(values) > shown else ""
    return ", ".join(shorten(v, 60) for v in values[:shown]) + more


MAX_NAME_CHARS = 255  # longest file name most file systems allow


class PathRuleError(ValueError):
    """A path or name that breaks the path rule (outside its root, or not a plain name)."""


def inside(path: str | os.PathLike[str], root: str | os.PathLike[str], what: str) -> Path:
    """`path` (relative to `root`, or absolute) resolved; PathRuleError unless it lies inside root.

    `what` names the item for the message ("image of garment 'x'", "embeddings file").
    """
    text = os.fspath(path)
    base = Path(root).resolve()
    if "\x00" in text:  # the OS would refuse it anyway, with a less helpful message
        raise PathRuleError(f"The {what} {shorten(text)} is not a valid path.")
    full = (base / text).resolve()  # an absolute `text` replaces base, as it should
    if not full.is_relative_to(base):
        raise PathRuleError(
            f"The {what} {shorten(text)} resolves to {shorten(str(full))}, which is outside "
            f"{base}: refused (only files inside {base} are read)."
        )
    return full


def is_plain_relative(text: str) -> bool:
    """True for a relative path with no '..' part, no drive or root on any OS, no NUL.

    A cheap check on a manifest's paths before anything is opened; `inside` still decides
    (symlinks) when a file is actually read.
    """
    if not text or "\x00" in text:
        return False
    posix, windows = PurePosixPath(text), PureWindowsPath(text)
    if posix.is_absolute() or windows.anchor:
        return False
    return ".." not in posix.parts and ".." not in windows.parts


def is_plain_name(text: str) -> bool:
    """One visible file or folder name: no separator, not '.'/'..', no leading '.', no drive."""
    return (
        bool(text)
        and len(text) <= MAX_NAME_CHARS
        and text == text.strip()
        and not text.startswith(".")
        and not any(c in text for c in "/\\:\x00")
        and all(c.isprintable() for c in text)
    )


def check_index_name(name: object, roots: list[str] | None = None) -> str:
    """The name if it is one visible folder name (see is_plain_name); else PathRuleError."""
    if isinstance(name, str) and is_plain_name(name):
        return name
    where = f" directly inside {', '.join(roots)}" if roots else ""
    raise PathRuleError(
        f"Index name {shorten(name)} is not allowed: an index is chosen by its folder name alone "
        f"(one folder{where}; no '/', '\\', '..', drive or leading '.')."
    )
