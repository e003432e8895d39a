"""What a ComfyUI folder says about itself, read from its files (never imported: the library
does not import ComfyUI)."""

from __future__ import annotations

import re
from pathlib import Path

_VERSION = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)


def read_comfyui_version(folder: Path) -> str | None:
    """`__version__` of the folder's comfyui_version.py, e.g. "0.3.75"; None where that file is
    missing, unreadable or names none."""
    try:
        text = (folder / "comfyui_version.py").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    found = _VERSION.search(text)
    return found.group(1) if found else None
