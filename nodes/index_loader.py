"""FashionRAGGarmentIndexLoader: an index folder + its encoder weights -> FASHION_RAG_INDEX."""

from __future__ import annotations

import logging
import os
import threading

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths
from comfy_api.latest import io

from ..fashion_rag.retrieval.encoder import (
    REAL_WEIGHTS_FILE,
    REAL_WEIGHTS_HINT,
    REAL_WEIGHTS_SOURCE,
    GarmentEncoder,
)
from ..fashion_rag.retrieval.index import GarmentIndex, load_index, read_manifest
from ..fashion_rag.retrieval.limits import shorten
from ..fashion_rag.retrieval.manifest import check_encoder
from ..fashion_rag.retrieval.paths import PathRuleError, check_index_name, inside
from ..fashion_rag.retrieval.storage import POINTER, looks_like_index, resolve_version
from .model_paths import folder_of
from .types import GarmentIndexType

log = logging.getLogger("fashion_rag")

INDEXES_KEY = "fashion_rag_indexes"
WEIGHTS_KEY = "fashion_rag_retrieval"

# (index dir, version, weights path, weights mtime, size) -> loaded index. V3 nodes hold no
# state; this lets every workflow share one loaded encoder instead of stacking copies.
_CACHE: dict[tuple, GarmentIndex] = {}
_LOCK = threading.Lock()


def _roots() -> list[str]:
    return list(folder_paths.get_folder_paths(INDEXES_KEY))


def index_names() -> list[str]:
    """Index folders directly inside the registered indexes folders (hidden ones never)."""
    names = set()
    for root in _roots():
        try:
            entries = os.listdir(root)
        except OSError:
            continue
        for name in entries:
            try:
                if _find_in(root, name) is not None:
                    names.add(name)
            except PathRuleError:
                continue
    return sorted(names)


def _find_in(root: str, name: str) -> str | None:
    """The index folder root/name, if there is one; PathRuleError if it leads out of root."""
    check_index_name(name)
    candidate = os.path.join(root, name)
    if not os.path.lexists(candidate):
        return None
    path = inside(name, root, "index folder")  # a symlink may not lead out of the indexes folder
    return str(path) if path.is_dir() and looks_like_index(path) else None


def index_dir(name: str) -> str | None:
    """The folder of index `name` (PathRuleError for anything but one visible folder name in a root)."""
    check_index_name(name, _roots())
    return next((p for p in (_find_in(root, name) for root in _roots()) if p is not None), None)


def missing_index_message(name: str) -> str:
    searched = ", ".join(_roots())
    found = index_names()
    return (
        f"No garment index named {shorten(name)} in {searched} (an index is a folder holding {POINTER}; "
        f"found: {', '.join(found) or 'none'}). Build one from a folder of garment images with "
        f"`python -m fashion_rag index build --catalog <images folder> --out "
        f"{os.path.join(folder_of(INDEXES_KEY), '<name>')}` and refresh the page."
    )


def index_problem(name: str) -> str | None:
    """Why index `name` cannot be loaded (a bad name, or no such index), else None."""
    try:
        return None if index_dir(name) is not None else missing_index_message(name)
    except PathRuleError as exc:
        return str(exc)


def missing_weights_message(name: str) -> str:
    return (
        f"Encoder weights {name!r} not found in {', '.join(folder_paths.get_folder_paths(WEIGHTS_KEY))}. "
        f"Expected the file the index was built with; for the paper's retrieval encoder that is "
        f"{REAL_WEIGHTS_FILE} (OpenCLIP ViT-L-14 laion2b_s32b_b82k) from {REAL_WEIGHTS_SOURCE}, "
        f"placed in {folder_of(WEIGHTS_KEY)}."
    )


def _load(path: str, weights: str) -> GarmentIndex:
    st_w = os.stat(weights)
    key = (path, resolve_version(path).token, weights, st_w.st_mtime_ns, st_w.st_size)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        manifest = read_manifest(path)
        encoder = GarmentEncoder(weights, manifest["encoder"]["name"])
        check_encoder(manifest, encoder, path)  # before building a 400M-parameter model for nothing
        index = load_index(path, encoder)
        patcher = comfy.model_patcher.ModelPatcher(
            encoder.module, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
        )
        # ComfyUI's memory manager moves the encoder on and off the device like its own models.
        encoder.before_use = lambda: mm.load_model_gpu(patcher)
        for old in [k for k in _CACHE if k[0] == path and k[2] == weights]:
            del _CACHE[old]  # a rebuilt index or replaced weights: drop the stale copy
        _CACHE[key] = index
        return index


class FashionRAGGarmentIndexLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        weights = folder_paths.get_filename_list(WEIGHTS_KEY)
        default_weights = next((w for w in weights if os.path.basename(w) == REAL_WEIGHTS_FILE),
                               weights[0] if weights else None)
        indexes = index_names()
        return io.Schema(
            node_id="FashionRAGGarmentIndexLoader",
            display_name="Garment Index Loader",
            category="fashion_rag",
            # An output node, so its summary reaches the UI also when the run is all cached.
            is_output_node=True,
            description=(
                "Loads a garment catalog index (built with `python -m fashion_rag index build`) and the "
                "OpenCLIP encoder it was built with, for Text → Garment Retrieve. The encoder is managed "
                "by ComfyUI's memory manager like any model."
            ),
            inputs=[
                io.Combo.Input(
                    "index", options=indexes, default="demo" if "demo" in indexes else None,
                    tooltip=f"An index folder directly inside {folder_of(INDEXES_KEY)} (built with "
                            "`python -m fashion_rag index build`).",
                ),
                io.Combo.Input(
                    "encoder_weights", options=weights, default=default_weights,
                    tooltip=(
                        "The OpenCLIP weights the index was built with (models/fashion_rag/retrieval/). "
                        f"The paper's: {REAL_WEIGHTS_FILE} of OpenCLIP ViT-L-14 laion2b_s32b_b82k from "
                        f"{REAL_WEIGHTS_SOURCE}."
                    ),
                ),
            ],
            outputs=[GarmentIndexType.Output(display_name="index",
                                             tooltip="The loaded index with its text encoder.")],
        )

    @classmethod
    def validate_inputs(cls, index: str, encoder_weights: str) -> bool | str:
        problem = index_problem(index)
        if problem:
            return problem
        if folder_paths.get_full_path(WEIGHTS_KEY, encoder_weights) is None:
            return missing_weights_message(encoder_weights)
        return True

    @classmethod
    def fingerprint_inputs(cls, index: str, encoder_weights: str) -> tuple:
        # A rebuilt index (a new version swapped in) or replaced weights file must reload even
        # though the names are the same.
        try:
            path = index_dir(index)
            version = resolve_version(path).token if path else None
        except ValueError:  # a bad name or a damaged index: execute() reports it
            version = None
        weights = folder_paths.get_full_path(WEIGHTS_KEY, encoder_weights)
        return (version, os.path.getmtime(weights) if weights else None)

    @classmethod
    def execute(cls, index: str, encoder_weights: str) -> io.NodeOutput:
        problem = index_problem(index)
        path = index_dir(index) if problem is None else None
        if path is None:
            raise FileNotFoundError(problem or missing_index_message(index))
        weights = folder_paths.get_full_path(WEIGHTS_KEY, encoder_weights)
        if weights is None:
            raise FileNotFoundError(missing_weights_message(encoder_weights))
        loaded = _load(path, weights)
        info = loaded.info()
        summary = {
            "name": index,
            "items": info["items"],
            "per_category": info["per_category"],
            "encoder": info["encoder"],
            "built": info["built"],
            "random_demo": info["random_demo_encoder"],
        }
        if info["random_demo_encoder"]:
            summary["warning"] = (
                "The encoder weights are RANDOM demo weights, not pretrained: image similarity is "
                f"meaningless (fusion ranks by captions only). For real retrieval, {REAL_WEIGHTS_HINT}."
            )
            log.warning("[fashion-rag] index %r: %s", index, summary["warning"])
        log.info("[fashion-rag] loaded index %r: %d garments %s, encoder %s", index, info["items"],
                 info["per_category"], info["encoder"])
        return io.NodeOutput(loaded, ui={"fashion_rag_index": [summary]})


NODES: list[type[io.ComfyNode]] = [FashionRAGGarmentIndexLoader]
