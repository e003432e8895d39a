"""ComfyUI adapter layer: one module per node family, each exporting NODES."""

from __future__ import annotations

import importlib
import importlib.util

# The ComfyUI API namespace: every node module imports `comfy_api.latest`, not a versioned one.
# Both supported ComfyUIs (0.3.75, 0.33.0) ship latest, v0_0_2 and v0_0_1, but v0_0_2 (STABLE =
# False) re-exports latest's own io/ui/ComfyExtension objects, and v0_0_1 (STABLE = True) is "a
# template for future version adapters" exporting none of them: a version name would pin nothing
# today. `latest` is what all of ComfyUI's own nodes (comfy_extras) import, so it is the API its
# executor and validation keep working with, and the suite runs on each supported ComfyUI (README,
# "ComfyUI versions") to catch changes. Move all modules at once when a numbered version that
# exports io/ui is marked STABLE; tests/test_pack.py checks that they all import one namespace.
from comfy_api.latest import ComfyExtension, io

from ..fashion_rag.logs import log
from . import model_folders

model_folders.register()

# Node families in menu order, with the extra packages (the pack's requirements.txt) each one
# needs at run time. A family whose package is missing is left out with one clear log line, so
# the rest of the pack still loads instead of the whole pack failing to import.
_FAMILIES: dict[str, tuple[str, ...]] = {
    "index_loader": ("open_clip", "faiss", "bm25s", "Stemmer"),
    "retrieve": ("open_clip", "faiss", "bm25s", "Stemmer"),
    "checkpoint_loader": (),
    "clip_vision_loader": (),
    "adapter_loader": (),
    "unet_loader": (),
    "garment_inversion": (),
    "save_garment_embedding": (),
    "pose": (),
    "mask": (),
    "inpaint_conditioning": (),
    "inpaint": (),
    "reference_sampler": (),
    "score": (),
}
_PIP_NAMES = {"open_clip": "open_clip_torch", "faiss": "faiss-cpu", "bm25s": "bm25s", "Stemmer": "PyStemmer"}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def _load_families() -> list:
    modules = []
    for name, needs in _FAMILIES.items():
        missing = [_PIP_NAMES.get(m, m) for m in needs if not _installed(m)]
        if missing:
            log.warning(
                "the %s nodes are disabled: Python package %s missing. Install the "
                "pack's requirements (pip install -r requirements.txt in its folder, or through "
                "ComfyUI-Manager) and restart ComfyUI.", name, " and ".join(repr(m) for m in missing),
            )
            continue
        modules.append(importlib.import_module(f".{name}", __name__))
    return modules


_MODULES = _load_families()


class FashionRAGExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [node for module in _MODULES for node in module.NODES]


async def comfy_entrypoint() -> FashionRAGExtension:
    return FashionRAGExtension()
