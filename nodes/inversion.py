"""Garment images -> pseudo-word embeddings (PTEs) -> CONDITIONING through ComfyUI's own CLIP.

FashionRAGGarmentInversion: the reference's prompt with the PTEs in place of its `$` tokens.
FashionRAGSaveGarmentEmbedding: the PTEs as models/embeddings/<name>.safetensors, usable in any
prompt as `embedding:<name>`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any

import comfy.clip_model
import comfy.model_management as mm
import folder_paths
import torch
from comfy_api.latest import io, ui

from ..fashion_rag.categories import CATEGORIES, normalize_category
from ..fashion_rag.inversion.clip_preprocess import preprocess_garments
from ..fashion_rag.inversion.prompt import (
    NEGATIVE_PROMPT,
    PLACEHOLDER,
    PromptTooLongError,
    build_prompt,
    check_prompt_fits,
)
from .compat import check_combos
from .types import AdapterType, GarmentsType

CLIP_VISION_HINT = (
    "Load the CLIP ViT-H/14 vision model (laion/CLIP-ViT-H-14-laion2B-s32B-b79K, e.g. "
    "clip_vision_h.safetensors in models/clip_vision) with a Load CLIP Vision node."
)
CLIP_HINT = "Use the SD2 text encoder (stable-diffusion-2-inpainting's CLIP, 1024-wide) as the clip input."


# --------------------------------------------------------------------------- garments -> PTEs


def garment_batches(garments: Any | None, images: torch.Tensor | None) -> list[torch.Tensor]:
    """The garment pixels in rank order, as IMAGE batches ([k, H, W, 3] float in [0, 1]).

    Retrieved garments come first, then the extra images; they stay separate batches because
    an IMAGE batch must share one size, and their PTEs concatenate in this order.
    """
    batches = []
    if garments is not None:
        if len(garments) == 0:
            raise ValueError("the garments input holds no garment (did retrieval return nothing?)")
        batches.append(garments.images)
    if images is not None:
        batches.append(images)
    if not batches:
        raise ValueError(
            "Fashion-RAG needs garment pictures: connect 'garments' (from Fashion-RAG Retrieve) or "
            "'images' (garment photos, e.g. from Load Image)."
        )
    return batches


def resolve_category(category: str, garments: Any | None) -> str:
    if category != "auto":
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}; use auto or one of {', '.join(CATEGORIES)}")
        return category
    if garments is None or len(garments) == 0:
        raise ValueError(
            "category 'auto' takes the category of the first retrieved garment, but no 'garments' input is "
            f"connected: choose one of {', '.join(CATEGORIES)}."
        )
    first = garments.items[0]
    found = normalize_category(first.category)
    if found is None:
        raise ValueError(
            f"category 'auto': the first garment ({first.id}) has category {first.category!r}, which is "
            f"none of {', '.join(CATEGORIES)}; choose the category by hand."
        )
    return found


def vision_hidden_states(clip_vision: Any, pixels: torch.Tensor) -> torch.Tensor:
    """ComfyUI's CLIP_VISION on our reference-preprocessed pixels -> last_hidden_state.

    `encode_image` would apply ComfyUI's clip_preprocess (different resize, ~2 % PTE shift), so
    the model is called directly; for CLIP models its first output is the encoder's last layer
    *before* post_layernorm (comfy/clip_model.py applies post-LN only to the pooled CLS token).
    """
    model = getattr(clip_vision, "model", None)
    vision = getattr(model, "vision_model", None)
    if (
        not isinstance(vision, comfy.clip_model.CLIPVision)
        or vision.output_layernorm
        or vision.embeddings.class_embedding is None
    ):
        raise ValueError(f"this CLIP_VISION model is not a CLIP ViT (SigLIP/DINOv2?). {CLIP_VISION_HINT}")
    mm.load_model_gpu(clip_vision.patcher)
    with torch.no_grad():
        out = model(pixel_values=pixels.to(clip_vision.load_device))
    return out[0]


def garment_embeddings(clip_vision: Any, adapter: Any, batches: list[torch.Tensor]) -> torch.Tensor:
    """Garment images -> PTEs [k, num_tokens, text_width], float32 on the intermediate device."""
    net = adapter.model
    cfg = net.config
    size = getattr(clip_vision, "image_size", 224)
    pixels = torch.cat([preprocess_garments(b, size=size) for b in batches])
    hidden = vision_hidden_states(clip_vision, pixels)
    if hidden.shape[-1] != cfg.vision_width:
        raise ValueError(
            f"the adapter expects {cfg.vision_width}-wide vision features, this CLIP_VISION gives "
            f"{hidden.shape[-1]}. {CLIP_VISION_HINT}"
        )
    # Fully loaded: the adapter is plain torch, without ComfyUI's per-layer weight casting that
    # partial (lowvram) loading relies on.
    mm.load_models_gpu([adapter], force_full_load=True)
    param = next(net.parameters())
    with torch.no_grad():
        ptes = net(hidden.to(device=param.device, dtype=param.dtype))
    return ptes.float().to(mm.intermediate_device())


# --------------------------------------------------------------------------- PTEs -> CONDITIONING


def _words(clip: Any, text: str) -> dict[str, list[list[tuple]]]:
    return clip.tokenize(text, return_word_ids=True)


def count_tokens(clip: Any, text: str) -> int:
    """Tokens of `text` in this CLIP's tokenizer, without start/end/padding (word id 0)."""
    per_key = [sum(t[2] != 0 for chunk in chunks for t in chunk) for chunks in _words(clip, text).values()]
    return max(per_key, default=0)


def placeholder_token_id(clip: Any, key: str) -> int:
    """The id this tokenizer gives the placeholder (259 for CLIP's BPE)."""
    words = [t for chunk in _words(clip, PLACEHOLDER)[key] for t in chunk if t[2] != 0]
    if len(words) != 1 or not isinstance(words[0][0], int):
        raise ValueError(f"this CLIP's tokenizer does not make '{PLACEHOLDER}' one token. {CLIP_HINT}")
    return words[0][0]


def _text_width(clip: Any, key: str) -> int | None:
    """Width of the token embeddings of the text encoder behind tokenizer key `key`."""
    model = clip.cond_stage_model
    encoder = getattr(model, f"clip_{key}", None)
    if encoder is None and getattr(model, "clip_name", None) == key:
        encoder = getattr(model, getattr(model, "clip", ""), None)
    try:
        return int(encoder.transformer.get_input_embeddings().weight.shape[-1])
    except AttributeError:
        return None


def placeholder_positions(ids: list, placeholder_id: int, count: int) -> list[int]:
    """Positions of the run of `count` placeholders (the first run: extra text comes after)."""
    try:
        start = ids.index(placeholder_id)
    except ValueError:
        start = -1
    if start < 0 or ids[start : start + count] != [placeholder_id] * count:
        found = sum(1 for i in ids if i == placeholder_id)
        raise RuntimeError(f"expected {count} consecutive placeholder tokens in the prompt, found {found}")
    return list(range(start, start + count))


def inject_embeddings(clip: Any, prompt: str, ptes: torch.Tensor) -> dict[str, list[list[tuple]]]:
    """Tokenize `prompt` and put one PTE row (a 1-D vector) at each placeholder position.

    ComfyUI's sd1_clip.process_tokens inserts any non-integer token entry as an embedding at
    its position; one 1-D vector per position keeps the 77 positions (a 2-D tensor would
    lengthen the sequence).
    """
    rows = ptes.reshape(-1, ptes.shape[-1])
    tokens = _words(clip, prompt)
    for key, chunks in tokens.items():
        if len(chunks) != 1:
            raise PromptTooLongError(
                f"the prompt takes {len(chunks)} CLIP chunks; it must fit one (77 tokens)"
            )
        width = _text_width(clip, key)
        if width is not None and width != rows.shape[-1]:
            raise ValueError(
                f"the adapter makes {rows.shape[-1]}-wide embeddings, but this CLIP's text encoder ('{key}') "
                f"is {width}-wide. {CLIP_HINT}"
            )
        chunk = chunks[0]
        ph = placeholder_token_id(clip, key)
        positions = placeholder_positions([t[0] for t in chunk], ph, rows.shape[0])
        for pos, row in zip(positions, rows, strict=True):
            chunk[pos] = (row, *chunk[pos][1:])
    return tokens


def encode_garments(
    clip: Any, ptes: torch.Tensor, category: str, extra_text: str = ""
) -> tuple[list, list]:
    """(positive, negative) CONDITIONING: the reference prompt with the PTEs, and the empty prompt."""
    k, num_tokens = ptes.shape[0], ptes.shape[1]
    check_prompt_fits(
        category, k, extra_text, count_tokens=lambda t: count_tokens(clip, t), tokens_per_garment=num_tokens
    )
    prompt = build_prompt(category, k, extra_text, tokens_per_garment=num_tokens)
    positive = clip.encode_from_tokens_scheduled(inject_embeddings(clip, prompt, ptes))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(NEGATIVE_PROMPT))
    return positive, negative


# --------------------------------------------------------------------------- nodes

_GARMENTS_TIP = "Retrieved garments (from Fashion-RAG Retrieve), used in rank order."
_IMAGES_TIP = (
    "Garment photos (in-shop, plain background), used instead of or after 'garments'. Ideally "
    "384x512 like the reference's garments."
)
_CLIP_VISION_TIP = "CLIP ViT-H/14 vision model (laion2B-s32B-b79K), e.g. clip_vision_h.safetensors."
_ADAPTER_TIP = "The inversion adapter, from Fashion-RAG Inversion Adapter Loader."


class GarmentInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FashionRAGGarmentInversion",
            display_name="Fashion-RAG Garment Inversion",
            category="fashion_rag",
            description=(
                "Turns each garment image into 16 pseudo-words (CLIP ViT-H features through the inversion "
                "adapter) and encodes the reference prompt 'a photo of a model wearing <category> made of "
                "<pseudo-words>' with the SD2 text encoder. Negative: the empty prompt, as the reference."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="The SD2 text encoder (stable-diffusion-2-inpainting's CLIP)."),
                io.ClipVision.Input("clip_vision", tooltip=_CLIP_VISION_TIP),
                AdapterType.Input("adapter", tooltip=_ADAPTER_TIP),
                GarmentsType.Input("garments", optional=True, tooltip=_GARMENTS_TIP),
                io.Image.Input("images", optional=True, tooltip=_IMAGES_TIP),
                io.Combo.Input(
                    "category",
                    options=["auto", *CATEGORIES],
                    default="auto",
                    tooltip="Garment category, which picks the prompt's noun. auto: the first retrieved "
                    "garment's category.",
                ),
                io.String.Input(
                    "extra_text",
                    optional=True,
                    default="",
                    multiline=False,
                    tooltip="Optional words appended after the pseudo-words (empty = the reference prompt). "
                    "Everything must fit one 77-token CLIP prompt.",
                ),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive"),
                io.Conditioning.Output(display_name="negative"),
            ],
        )

    @classmethod
    def validate_inputs(cls, category: str | None = None) -> bool | str:
        # The same check and message on every ComfyUI version (see compat.py); resolve_category
        # checks a linked value when the node runs.
        return check_combos(cls, category=category)

    @classmethod
    def execute(
        cls,
        clip: Any,
        clip_vision: Any,
        adapter: Any,
        category: str = "auto",
        garments: Any | None = None,
        images: torch.Tensor | None = None,
        extra_text: str = "",
    ) -> io.NodeOutput:
        batches = garment_batches(garments, images)
        cat = resolve_category(category, garments)
        k = sum(b.shape[0] for b in batches)
        # Fail before running the vision tower when the garments cannot fit the prompt.
        check_prompt_fits(
            cat, k, extra_text or "", count_tokens=lambda t: count_tokens(clip, t),
            tokens_per_garment=adapter.model.config.num_tokens,
        )
        ptes = garment_embeddings(clip_vision, adapter, batches)
        positive, negative = encode_garments(clip, ptes, cat, extra_text or "")
        return io.NodeOutput(positive, negative)


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def _embedding_name(name: str) -> str:
    name = name.strip()
    if name.lower().endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    if not _NAME_RE.match(name):
        raise ValueError(
            f"embedding name {name!r}: use letters, digits, '_', '-' and '.' only (no spaces or folders), "
            "since the prompt syntax embedding:<name> ends at the first space"
        )
    return name


def save_embedding(
    ptes: torch.Tensor,
    folder: str,
    name: str,
    overwrite: bool = False,
    metadata: dict[str, str] | None = None,
) -> tuple[str, bool]:
    """Write [16k, width] PTEs as <folder>/<name>.safetensors, atomically. -> (path, written).

    The tensor is stored under 'clip_h', the key ComfyUI's SD2 tokenizer asks load_embed for
    (any single tensor would also be taken). An existing file is kept when it already holds the
    same embedding (a re-queued workflow) and is an error otherwise, unless overwrite is set.
    """
    from safetensors.torch import load_file, save_file

    rows = ptes.reshape(-1, ptes.shape[-1]).float().contiguous().cpu().clone()
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}.safetensors")
    if os.path.exists(path) and not overwrite:
        try:
            old = next(iter(load_file(path).values()))
            same = old.shape == rows.shape and torch.equal(old, rows)
        except Exception:
            same = False
        if same:
            return path, False
        raise FileExistsError(
            f"{path} already exists and holds a different embedding: choose another name or turn on "
            "'overwrite'."
        )
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        save_file({"clip_h": rows}, tmp, metadata=metadata or {})
        os.replace(tmp, path)  # atomic: a reader never sees a half-written file
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path, True


class SaveGarmentEmbedding(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FashionRAGSaveGarmentEmbedding",
            display_name="Fashion-RAG Save Garment Embedding",
            category="fashion_rag",
            description=(
                "Saves the garments' pseudo-words (16 per garment, in rank order) as a textual-inversion "
                "embedding in models/embeddings, usable in any SD2 prompt as embedding:<name>."
            ),
            inputs=[
                io.ClipVision.Input("clip_vision", tooltip=_CLIP_VISION_TIP),
                AdapterType.Input("adapter", tooltip=_ADAPTER_TIP),
                GarmentsType.Input("garments", optional=True, tooltip=_GARMENTS_TIP),
                io.Image.Input("images", optional=True, tooltip=_IMAGES_TIP),
                io.String.Input(
                    "name",
                    default="fashion_rag_garment",
                    tooltip="File name (without .safetensors) in models/embeddings; use it in a prompt as "
                    "embedding:<name>.",
                ),
                io.Boolean.Input(
                    "overwrite", default=False, tooltip="Replace an existing embedding file of the same name."
                ),
            ],
            outputs=[
                io.String.Output(display_name="prompt_text", tooltip="'embedding:<name>', for a prompt."),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, name: str | None = None, **kwargs: Any) -> bool | str:
        if name is None:  # linked from another node: checked when it runs
            return True
        try:
            _embedding_name(name)
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(
        cls,
        clip_vision: Any,
        adapter: Any,
        name: str,
        overwrite: bool = False,
        garments: Any | None = None,
        images: torch.Tensor | None = None,
    ) -> io.NodeOutput:
        name = _embedding_name(name)
        ptes = garment_embeddings(clip_vision, adapter, garment_batches(garments, images))
        meta = {
            "fashion_rag": json.dumps({
                "garments": [g.id for g in garments.items] if garments is not None else [],
                "extra_images": 0 if images is None else int(images.shape[0]),
                "tokens_per_garment": int(ptes.shape[1]),
            }),
        }
        folder = folder_paths.get_folder_paths("embeddings")[0]
        path, written = save_embedding(ptes, folder, name, overwrite=overwrite, metadata=meta)
        status = "saved" if written else "unchanged"
        text = f"embedding:{name}"
        n = ptes.shape[0] * ptes.shape[1]
        return io.NodeOutput(text, ui=ui.PreviewText(f"{status}: {path} ({n} tokens) -> {text}"))


NODES = [GarmentInversion, SaveGarmentEmbedding]
