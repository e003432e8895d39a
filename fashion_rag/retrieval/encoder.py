"""The retrieval encoder: an OpenCLIP model giving L2-normalised text and image embeddings.

The paper uses OpenCLIP ViT-L-14 trained on LAION-2B (`laion2b_s32b_b82k`). Weights are
always read from a local file (`pretrained=<path>`): nothing is downloaded, ever. Any
architecture open_clip knows works; the index records the architecture name and a sha256 of
the weights file so that an index is never queried with an encoder it was not built with.

The model is built lazily: the name, dimension and weights hash are known without building
it, so checking whether an index is up to date costs no model load.
"""

from __future__ import annotations

import atexit
import copy
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .hashing import cached_sha256

DEFAULT_ARCH = "ViT-L-14"
DEFAULT_PRETRAINED_TAG = "laion2b_s32b_b82k"
REAL_WEIGHTS_FILE = "open_clip_pytorch_model.bin"
REAL_WEIGHTS_SOURCE = "the Hugging Face hub repo laion/CLIP-ViT-L-14-laion2B-s32B-b82K"
REAL_WEIGHTS_HINT = (
    f"OpenCLIP {DEFAULT_ARCH} {DEFAULT_PRETRAINED_TAG}: put {REAL_WEIGHTS_FILE} from "
    f"{REAL_WEIGHTS_SOURCE} into models/fashion_rag/retrieval/ and build the index with it"
)

TINY_ARCH = "fashion-rag-tiny"
# A real open_clip CLIP (ViT image tower + transformer text tower, the real BPE tokenizer),
# just very small: for tests and the demo, where only random weights exist.
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
_OWN_CONFIGS: dict[str, dict[str, Any]] = {TINY_ARCH: TINY_CONFIG}
# open_clip's defaults (open_clip.constants), repeated so that describing an encoder does not
# import open_clip (seconds) when nothing needs the model.
OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)
RANDOM_DEMO_MARK = "random-demo"  # safetensors metadata value of files written by write_tiny_encoder_weights

ProgressFn = Callable[[int, int], None]

_register_lock = threading.Lock()
_registered = False


def register_configs() -> None:
    """Make our own architectures known to open_clip by name (once per process), writing no files.

    open_clip's public add_model_config() reads JSON files from a folder, and a folder with a
    predictable name in the shared temp dir can be planted by another user. So the configs go
    straight into open_clip's registry dict (its rescans keep existing entries), or, should a
    future open_clip lack that dict, into a private mkdtemp folder (0700, random name) removed
    at exit.
    """
    global _registered
    from open_clip import factory

    with _register_lock:
        if _registered and all(name in factory.list_models() for name in _OWN_CONFIGS):
            return
        registry = getattr(factory, "_MODEL_CONFIGS", None)
        if isinstance(registry, dict):
            registry.update({name: copy.deepcopy(cfg) for name, cfg in _OWN_CONFIGS.items()})
        else:
            folder = Path(tempfile.mkdtemp(prefix="fashion-rag-open-clip-"))
            atexit.register(shutil.rmtree, folder, True)
            for name, cfg in _OWN_CONFIGS.items():
                (folder / f"{name}.json").write_text(json.dumps(cfg), encoding="utf-8")
            factory.add_model_config(folder)
        _registered = True


def weights_sha256(path: str | Path) -> str:
    """sha256 of a weights file, cached per file version since files can be 1.7 GB."""
    return cached_sha256(path)


def is_random_demo_weights(path: str | Path) -> bool:
    """True for files written by write_tiny_encoder_weights (marked in their safetensors header)."""
    if not str(path).endswith(".safetensors"):
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("fashion_rag") == RANDOM_DEMO_MARK
    except Exception:  # not a readable safetensors file: certainly not ours
        return False


def model_config(arch: str) -> dict[str, Any]:
    if arch in _OWN_CONFIGS:
        return _OWN_CONFIGS[arch]
    import open_clip

    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(
            f"Unknown OpenCLIP architecture {arch!r}. Use one of open_clip.list_models() "
            f"(the paper's is {DEFAULT_ARCH}) or {TINY_ARCH!r} for tests."
        )
    return cfg


class GarmentEncoder:
    """An OpenCLIP model from a local weights file; embeddings are float32, L2-normalised.

    `before_use`, when set, is called before every encode: the ComfyUI layer uses it to let
    ComfyUI's memory manager put the model on its device. The encoder follows the module's
    device, so it works wherever that puts it.
    """

    def __init__(
        self,
        weights: str | Path,
        arch: str = DEFAULT_ARCH,
        pretrained_tag: str | None = None,
    ) -> None:
        self.weights_path = Path(weights).expanduser().resolve()
        if not self.weights_path.is_file():
            raise FileNotFoundError(
                f"Encoder weights file {self.weights_path} not found. For the paper's encoder, "
                f"{REAL_WEIGHTS_HINT}."
            )
        self.name = arch
        # The pretrained tag is used only for its preprocessing (mean/std): LAION-2B ViT-L-14
        # was trained with (0.5, 0.5, 0.5) normalisation, not OpenAI's, and a file path alone
        # would silently give open_clip's OpenAI defaults.
        if pretrained_tag is None and arch == DEFAULT_ARCH:
            pretrained_tag = DEFAULT_PRETRAINED_TAG
        self.pretrained_tag = pretrained_tag
        self.before_use: Callable[[], None] | None = None
        self._model: torch.nn.Module | None = None
        self._preprocess: Callable[[Image.Image], torch.Tensor] | None = None
        self._tokenizer: Callable[..., torch.Tensor] | None = None
        self._lock = threading.Lock()

    # -- cheap facts (no model build) -------------------------------------------------------
    @property
    def weights_hash(self) -> str:
        return weights_sha256(self.weights_path)

    @property
    def dim(self) -> int:
        return int(model_config(self.name)["embed_dim"])

    @property
    def is_random_demo(self) -> bool:
        return is_random_demo_weights(self.weights_path)

    @property
    def preprocess_id(self) -> str:
        """What the image embeddings depend on besides the weights; stored in index manifests."""
        size = model_config(self.name)["vision_cfg"].get("image_size", 224)
        mean, std, interp, mode = self._preprocess_cfg()
        return f"garment384x512-whitepad|{size}|{mode}|{interp}|{list(mean)}|{list(std)}"

    def _preprocess_cfg(self) -> tuple[tuple[float, ...], tuple[float, ...], str, str]:
        cfg: dict[str, Any] = {}
        if self.pretrained_tag:
            import open_clip

            cfg = open_clip.get_pretrained_cfg(self.name, self.pretrained_tag) or {}
        return (
            tuple(cfg.get("mean", OPENAI_DATASET_MEAN)),
            tuple(cfg.get("std", OPENAI_DATASET_STD)),
            cfg.get("interpolation", "bicubic"),
            cfg.get("resize_mode", "shortest"),
        )

    def describe(self) -> str:
        kind = "RANDOM demo weights, not pretrained" if self.is_random_demo else "weights"
        return f"{self.name} ({kind} {self.weights_path.name}, sha256 {self.weights_hash[:12]}, {self.dim}-d)"

    # -- the model ------------------------------------------------------------------------------
    @property
    def module(self) -> torch.nn.Module:
        """The open_clip model (built and loaded on first access, on the CPU, in eval mode)."""
        with self._lock:
            if self._model is None:
                self._load()
            assert self._model is not None
            return self._model

    def _load(self) -> None:
        import open_clip

        if self.name in _OWN_CONFIGS:
            register_configs()
        mean, std, interp, mode = self._preprocess_cfg()
        quick_gelu = False
        if self.pretrained_tag:
            tag_cfg = open_clip.get_pretrained_cfg(self.name, self.pretrained_tag) or {}
            quick_gelu = bool(tag_cfg.get("quick_gelu"))
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.name,
                pretrained=str(self.weights_path),  # a local file: open_clip never downloads for a path
                force_quick_gelu=quick_gelu,
                image_mean=mean,
                image_std=std,
                image_interpolation=interp,
                image_resize_mode=mode,
                weights_only=True,  # never unpickle code
            )
        except Exception as exc:  # torch, safetensors, open_clip: any failure here is a bad weights file
            raise ValueError(
                f"Cannot load {self.weights_path} as OpenCLIP {self.name} weights ({str(exc)[:200]}). Check "
                f"that the file is complete and matches the architecture; {REAL_WEIGHTS_HINT}."
            ) from exc
        model.eval().requires_grad_(False)
        self._model, self._preprocess = model, preprocess
        self._tokenizer = open_clip.get_tokenizer(self.name)

    def _device(self) -> torch.device:
        return next(self.module.parameters()).device

    def _dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @torch.inference_mode()
    def encode_images(
        self, images: Sequence[Image.Image], batch_size: int = 16, progress: ProgressFn | None = None
    ) -> np.ndarray:
        """PIL images -> [N, dim] float32, unit L2 norm (the garment's 384x512 form is expected)."""
        if self.before_use:
            self.before_use()
        model = self.module
        assert self._preprocess is not None
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        device, dtype = self._device(), self._dtype()
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self._preprocess(img) for img in images[start : start + batch_size]])
            feats = model.encode_image(batch.to(device=device, dtype=dtype))
            out[start : start + len(batch)] = _normalise(feats)
            if progress:
                progress(min(start + batch_size, len(images)), len(images))
        return out

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Texts -> [N, dim] float32, unit L2 norm (truncated to the model's context length)."""
        if self.before_use:
            self.before_use()
        model = self.module
        assert self._tokenizer is not None
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        device = self._device()
        for start in range(0, len(texts), batch_size):
            tokens = self._tokenizer(list(texts[start : start + batch_size])).to(device)
            out[start : start + len(tokens)] = _normalise(model.encode_text(tokens))
        return out


def _normalise(feats: torch.Tensor) -> np.ndarray:
    # Normalise in float32 on the CPU even if the model ran in half precision, so scores are
    # comparable with the stored embeddings to float32 accuracy.
    x = feats.detach().float().cpu().numpy()
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def write_tiny_encoder_weights(path: str | Path, seed: int = 0) -> Path:
    """Write seeded random weights of the tiny architecture (same seed, same bytes).

    The file is marked as random demo weights in its safetensors metadata, so loaders can
    tell users plainly that retrieval with it is meaningless.
    """
    import open_clip
    from safetensors.torch import save_file

    register_configs()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # seed locally; leave the caller's RNG alone
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY_ARCH, pretrained=None)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # One metadata key only: safetensors writes several in hash order, which breaks "same seed,
    # same bytes" (and so the weights hash an index records).
    save_file(state, str(tmp), metadata={"fashion_rag": RANDOM_DEMO_MARK})
    os.chmod(tmp, 0o644)  # safetensors creates files private to the user; weights are not secret
    os.replace(tmp, path)  # readers never see a half-written file
    return path
