"""Every model file the pack reads: its name as published, its models folder, where it comes
from, its licence and the key layout the loader checks. Loaders, their error messages, the
README table and the demo weights all read this one list."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

FASHION_RAG_LICENCE = "CC BY-NC 4.0, non-commercial; not redistributed by this pack"


@dataclass(frozen=True)
class ModelFile:
    key: str  # ComfyUI's models-folder key (also the key in extra_model_paths.yaml)
    folder: str  # default folder under ComfyUI's models/
    role: str  # what it is, for people
    file: str  # the file's name as published
    source: str  # where to get it
    licence: str
    layout: str  # the keys the loader expects, for error messages
    also: str = ""  # other files that work, for the missing-file message

    @property
    def where_to_get(self) -> str:
        return f"{self.file} from {self.source} (licence: {self.licence})"


UNET = ModelFile(
    key="fashion_rag_unet", folder="fashion_rag/unet", role="Fashion-RAG UNet (27 input channels)",
    file="unet_120000.pth", source="the Hugging Face hub repository furio19/fashion-rag",
    licence=FASHION_RAG_LICENCE,
    layout="a diffusers UNet2DConditionModel state dict with conv_in.weight [320, 27, 3, 3]",
    also="a .safetensors made from it once with `python -m fashion_rag convert-unet` (loads faster)",
)
ADAPTER = ModelFile(
    key="fashion_rag_adapter", folder="fashion_rag/adapter", role="Fashion-RAG inversion adapter",
    file="inversion_adapter_120000.pth", source="the Hugging Face hub repository furio19/fashion-rag",
    licence=FASHION_RAG_LICENCE,
    layout="encoder_layers.0.*, post_layernorm.*, layers.{0,3,6}.* (1280 -> 16 x 1024)",
)
CHECKPOINT = ModelFile(
    key="checkpoints", folder="checkpoints", role="SD2 inpainting checkpoint (text encoder + VAE)",
    file="512-inpainting-ema.safetensors",
    source="the Hugging Face hub repository stabilityai/stable-diffusion-2-inpainting",
    licence="CreativeML Open RAIL++-M",
    layout="a single-file Stable Diffusion 2 checkpoint (cond_stage_model.*, first_stage_model.*)",
)
CLIP_VISION = ModelFile(
    key="clip_vision", folder="clip_vision", role="CLIP ViT-H/14 vision tower",
    file="model.safetensors", source="the Hugging Face hub repository laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    licence="MIT", layout="a transformers CLIPVisionModel state dict (1280 wide, 32 layers)",
    also="the same file under ComfyUI's usual name clip_vision_h.safetensors",
)
RETRIEVAL_ENCODER = ModelFile(
    key="fashion_rag_retrieval", folder="fashion_rag/retrieval",
    role="retrieval encoder (OpenCLIP ViT-L-14, laion2b_s32b_b82k)", file="open_clip_pytorch_model.bin",
    source="the Hugging Face hub repository laion/CLIP-ViT-L-14-laion2B-s32B-b82K", licence="MIT",
    layout="an open_clip CLIP state dict of the index's architecture",
)
MODEL_FILES: tuple[ModelFile, ...] = (UNET, ADAPTER, CHECKPOINT, CLIP_VISION, RETRIEVAL_ENCODER)
# The pack's own folders under models/ (the others are ComfyUI's); indexes are built by users.
INDEXES_KEY, INDEXES_FOLDER = "fashion_rag_indexes", "fashion_rag/indexes"


def missing_file_message(model: ModelFile, name: str | None, searched: Sequence[str]) -> str:
    """The one message for a model file that is not there: what, where searched, where from."""
    what = f"The {model.role} file {name!r} was not found" if name else f"No {model.role} file was found"
    return (
        f"{what} (searched: {', '.join(searched) or 'no folder'}). Put {model.where_to_get}"
        + (f", or {model.also}," if model.also else "")
        + f" into models/{model.folder}/ (or a folder mapped to '{model.key}' in extra_model_paths.yaml), "
        "then refresh the node list (press R) and pick it."
    )


def readme_table() -> str:
    """The README's "Model files" table rows (a test keeps the README equal to this)."""
    rows = ["| what | file (as published) | folder | where it comes from | licence |",
            "|---|---|---|---|---|"]
    for m in MODEL_FILES:
        source = m.source.removeprefix("the Hugging Face hub repository ")
        rows.append(f"| {m.role} | `{m.file}` | `models/{m.folder}/` | Hugging Face `{source}` "
                    f"| {m.licence} |")
    return "\n".join(rows)
