"""FashionRAGGarmentIndexLoader: an index folder + its encoder weights -> FASHION_RAG_INDEX."""

from __future__ import annotations

import os
from typing import Any

import comfy.model_management as mm
import folder_paths
from comfy_api.latest import io

from ..fashion_rag.logs import log
from ..fashion_rag.model_files import INDEXES_KEY, RETRIEVAL_ENCODER
from ..fashion_rag.openclip_encoder import REAL_WEIGHTS_HINT, GarmentEncoder
from ..fashion_rag.paths import PathRuleError, check_index_name, inside, shorten
from ..fashion_rag.retrieval.index import GarmentIndex, encoder_for, load_index
from ..fashion_rag.retrieval.ondisk import (
    POINTER,
    EncoderRecord,
    build_command,
    check_encoder,
    looks_like_index,
    read_manifest,
    resolve_version,
)
from .compat import new_model_patcher
from .model_cache import ModelCache
from .model_folders import check_file, file_list, folder_of, full_path, missing_message
from .types import GarmentIndexType

# One encoder per weights file however many indexes use it, and the loaded indexes (their
# metadata and memory-mapped embeddings) per folder and version.
_ENCODERS: ModelCache[GarmentEncoder] = ModelCache(max_entries=2)
_INDEXES: ModelCache[GarmentIndex] = ModelCache(max_entries=8)


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
    found = index_names()
    return (
        f"No garment index named {shorten(name)} in {', '.join(_roots())} (an index is a folder holding "
        f"{POINTER}; found: {', '.join(found) or 'none'}). Build one from a folder of garment images with "
        f"`{build_command(os.path.join(folder_of(INDEXES_KEY), '<name>'))}` and refresh the page."
    )


def index_problem(name: str) -> str | None:
    """Why index `name` cannot be loaded (a bad name, or no such index), else None."""
    try:
        return None if index_dir(name) is not None else missing_index_message(name)
    except PathRuleError as exc:
        return str(exc)


def _encoder(weights: str, record: EncoderRecord) -> GarmentEncoder:
    def load() -> GarmentEncoder:
        # Text tower now; the image tower only if a node encodes images (the score node, an
        # image query), so text retrieval never holds it (ViT-L/14's: 1.13 GiB in fp32).
        encoder = encoder_for(record, weights, image_tower=False)
        patchers: dict[str, Any] = {}

        def before_use(tower: str) -> None:
            # ComfyUI's memory manager moves each tower on and off the device like its own models.
            if tower not in patchers:
                patchers[tower] = new_model_patcher(encoder.tower(tower), mm.get_torch_device(),
                                                    mm.unet_offload_device())
            mm.load_model_gpu(patchers[tower])

        encoder.before_use = before_use
        encoder.tower("text")  # loaded here: the loader node's time, not the first query's
        return encoder

    return _ENCODERS.get(weights, load, options=(record.name, bool(record.config_sha256)))


def load_garment_index(path: str, weights: str) -> GarmentIndex:
    version = resolve_version(path).version

    def load() -> GarmentIndex:
        manifest = read_manifest(path)
        record = manifest.encoder
        check_encoder(manifest, encoder_for(record, weights), path)  # before building the model
        return load_index(path, _encoder(weights, record))

    return _INDEXES.get(path, load, options=os.path.realpath(weights), token=version)


class FashionRAGGarmentIndexLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        weights = file_list(RETRIEVAL_ENCODER)
        default_weights = next((w for w in weights if os.path.basename(w) == RETRIEVAL_ENCODER.file),
                               weights[0] if weights else None)
        indexes = index_names()
        return io.Schema(
            node_id="FashionRAGGarmentIndexLoader",
            display_name="Fashion-RAG Garment Index Loader",
            category="fashion_rag/loaders",
            # An output node, so its summary reaches the UI also when the run is all cached.
            is_output_node=True,
            description=(
                "Loads a garment catalog index (built with `python -m fashion_rag index build`) and the "
                "OpenCLIP encoder it was built with, for 'Fashion-RAG Text → Garment Retrieve'. Only the "
                "encoder's text tower is loaded (a text query needs nothing else; ViT-L-14's image tower is "
                "1.1 GiB in fp32); the score node loads the image tower when it needs it. Both are managed "
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
                    tooltip="The OpenCLIP weights the index was built with "
                            f"(models/{RETRIEVAL_ENCODER.folder}/; for an index built from a model folder, "
                            "that folder's open_clip_model.safetensors). The paper's: "
                            f"{RETRIEVAL_ENCODER.where_to_get}.",
                ),
            ],
            outputs=[GarmentIndexType.Output(display_name="index",
                                             tooltip="The loaded index with its text encoder.")],
        )

    @classmethod
    def validate_inputs(cls, index: str | None = None, encoder_weights: str | None = None) -> bool | str:
        # Declared here, these messages answer on every ComfyUI version (compat.py); None: linked,
        # checked when it runs.
        problem = index_problem(index) if index is not None else None
        if problem:
            return problem
        return check_file(RETRIEVAL_ENCODER, encoder_weights)

    @classmethod
    def fingerprint_inputs(cls, index: str, encoder_weights: str) -> tuple:
        # A rebuilt index (a new version swapped in) or replaced weights file must reload even
        # though the names are the same.
        try:
            path = index_dir(index)
            version = resolve_version(path).version if path else None
        except ValueError:  # a bad name or a damaged index: execute() reports it
            version = None
        weights = full_path(RETRIEVAL_ENCODER, encoder_weights)
        return (version, os.path.getmtime(weights) if weights else None)

    @classmethod
    def execute(cls, index: str, encoder_weights: str) -> io.NodeOutput:
        problem = index_problem(index)
        path = index_dir(index) if problem is None else None
        if path is None:
            raise FileNotFoundError(problem or missing_index_message(index))
        weights = full_path(RETRIEVAL_ENCODER, encoder_weights)
        if weights is None:
            raise FileNotFoundError(missing_message(RETRIEVAL_ENCODER, encoder_weights))
        loaded = load_garment_index(path, weights)
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
                f"meaningless, so retrieve with mode 'caption'. For real retrieval, {REAL_WEIGHTS_HINT}."
            )
            log.warning("index %r: %s", index, summary["warning"])
        log.info("loaded index %r: %d garments %s, encoder %s", index, info["items"],
                 info["per_category"], info["encoder"])
        return io.NodeOutput(loaded, ui={"fashion_rag_index": [summary]})


NODES: list[type[io.ComfyNode]] = [FashionRAGGarmentIndexLoader]
