"""Random-weight stand-ins for every model file the example workflow needs.

No pretrained weights can be downloaded where this project is built and tested, so the demo
and the end-to-end tests run on files of the *real formats* filled with seeded random values.
The results are meaningless images; the point is that every loader, node and socket runs for
real. Users replace these files with the real weights (README: model table).
"""

from __future__ import annotations

from pathlib import Path


def install_demo_models(models_dir: Path) -> dict[str, Path]:
    """Write (once; reruns reuse them) the demo catalog index and demo weights under models_dir."""
    from .demo_catalog import install_demo_index

    written: dict[str, Path] = {}
    written["index"] = install_demo_index(Path(models_dir))
    return written
