"""The OpenCLIP encoder: L2-normalised text and image embeddings, for retrieval (the index) and
for the evaluation's CLIP scores.

The paper uses OpenCLIP ViT-L-14 trained on LAION-2B (`laion2b_s32b_b82k`). Weights are
always read from a local file (`pretrained=<path>`): nothing is downloaded, ever. Any
architecture open_clip knows works; the index records the architecture name and a sha256 of
the weights file so that an index is never queried with an encoder it was not built with.
An OpenCLIP model folder as published (open_clip_config.json, the weights, the tokenizer
files: Marqo-FashionSigLIP, laion/CLIP-*) works too, through open_clip's `local-dir:` factory;
the index then also records the sha256 of its config and of its tokenizer files.

The model is built lazily: the name, dimension and weights hash are known without building
it, so checking whether an index is up to date costs no model load.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .files import MAX_JSON_BYTES, cached_sha256, read_regular
from .logs import ProgressFn, log
from .model_files import RETRIEVAL_ENCODER
from .reference import CLIP_MEAN, CLIP_STD
from .weights import WeightFileError, load_in_parts, materialize, parameters_on_meta, read_state_dict

DEFAULT_ARCH = "ViT-L-14"
DEFAULT_PRETRAINED_TAG = "laion2b_s32b_b82k"
REAL_WEIGHTS_HINT = (
    f"for the paper's encoder (OpenCLIP {DEFAULT_ARCH} {DEFAULT_PRETRAINED_TAG}), put "
    f"{RETRIEVAL_ENCODER.where_to_get} into models/{RETRIEVAL_ENCODER.folder}/ and build the index "
    "with it"
)

# A safetensors weights file may carry its own open_clip architecture in its metadata, under
# this key: {"open_clip": {"name": <arch>, "config": <open_clip model config>}}, plus
# "random_demo": true for files of random weights (so every tool can say so). Architectures
# open_clip does not ship (small or fine-tuned ones) then need no config file anywhere.
METADATA_KEY = "fashion_rag"

_register_lock = threading.Lock()

FOLDER_CONFIG = "open_clip_config.json"
# What a folder's Hugging Face tokenizer may be read from (open_clip's HFTokenizer reads the
# folder with transformers): each changes what a text query encodes to.
TOKENIZER_FILES = ("added_tokens.json", "merges.txt", "sentencepiece.bpe.model", "special_tokens_map.json",
                   "spiece.model", "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json",
                   "vocab.txt")


def read_folder_config(folder: Path) -> tuple[dict[str, Any], str]:
    """A model folder's open_clip_config.json ({"model_cfg": ..., "preprocess_cfg": ...}) and its sha256."""
    if not (folder / FOLDER_CONFIG).exists():
        raise FileNotFoundError(f"{folder} is a folder without {FOLDER_CONFIG}, so not an OpenCLIP model "
                                "folder: pass a weights file, or a model folder as published (config, "
                                "weights, tokenizer)")
    raw = read_regular(folder / FOLDER_CONFIG, MAX_JSON_BYTES, "OpenCLIP model config")
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{folder / FOLDER_CONFIG} is not JSON ({str(exc)[:100]}): use the file as "
                         "published with the model") from exc
    cfg = config.get("model_cfg") if isinstance(config, dict) else None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("embed_dim"), int) or not isinstance(
            cfg.get("vision_cfg"), dict):
        raise ValueError(f"{folder / FOLDER_CONFIG} holds no OpenCLIP model_cfg with embed_dim and "
                         "vision_cfg: use the file as published with the model")
    return config, hashlib.sha256(raw).hexdigest()


def tokenizer_sha256(folder: Path) -> str:
    """sha256 over the names and contents of the folder's tokenizer files."""
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        if (folder / name).exists():
            digest = cached_sha256(folder / name, MAX_JSON_BYTES << 2, "tokenizer file")
            h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()


def weights_metadata(path: str | Path) -> dict[str, Any]:
    """The pack's entry in a safetensors file's metadata ({} for any other file)."""
    if not str(path).endswith(".safetensors"):
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            value = (f.metadata() or {}).get(METADATA_KEY, "")
        data = json.loads(value) if value else {}
    except Exception:  # not a readable safetensors file, or not our entry: nothing to read
        return {}
    return data if isinstance(data, dict) else {}


def _carried_config(arch: str, weights: str | Path) -> dict[str, Any] | None:
    carried = weights_metadata(weights).get("open_clip")
    if isinstance(carried, dict) and carried.get("name") == arch and isinstance(carried.get("config"), dict):
        return carried["config"]
    return None


def register_config(arch: str, config: dict[str, Any]) -> None:
    """Make an architecture known to open_clip by name, writing no files.

    open_clip's public add_model_config() reads JSON files from a folder, and a folder with a
    predictable name in the shared temp dir can be planted by another user; its registry dict
    takes the config directly (its rescans keep existing entries).
    """
    from open_clip import factory

    with _register_lock:  # (open_clip is pinned in .ci/requirements.txt: the registry is there)
        factory._MODEL_CONFIGS[arch] = copy.deepcopy(config)


def model_config(arch: str, weights: str | Path | None = None) -> dict[str, Any]:
    """open_clip's config of `arch`, or the one the weights file carries (see METADATA_KEY)."""
    carried = _carried_config(arch, weights) if weights is not None else None
    if carried is not None:
        return carried
    import open_clip

    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(
            f"Unknown OpenCLIP architecture {arch!r}: open_clip does not ship it and the weights file does "
            f"not carry it. Use one of open_clip.list_models() (the paper's is {DEFAULT_ARCH})."
        )
    return cfg



class GarmentEncoder:
    """An OpenCLIP model from a local weights file (of architecture `arch`) or model folder
    (its own architecture, named after the folder); embeddings are float32, L2-normalised.

    `image_tower=False` loads the text tower only, and the image tower on the first image
    encode, as a module of its own: text queries (all the retrieve node does) never hold the
    image tower (ViT-L/14's: 304 M parameters, 1.13 GiB in fp32, of 428 M). `before_use`, when
    set, is called with the tower ("text" or "image") before every encode: the ComfyUI layer
    uses it to let ComfyUI's memory manager put that tower on its device. The encoder follows
    the towers' devices, so it works wherever that puts them.
    """

    def __init__(
        self,
        weights: str | Path,
        arch: str | None = DEFAULT_ARCH,
        pretrained_tag: str | None = None,
        image_tower: bool = True,
    ) -> None:
        path = Path(weights).expanduser().resolve()
        self.model_dir = path if path.is_dir() else None
        self.folder_config: dict[str, Any] | None = None
        self.config_hash: str | None = None
        self.name = arch or DEFAULT_ARCH
        if self.model_dir is not None:
            from open_clip.factory import _find_checkpoint_in_dir  # the file open_clip's local-dir: loads

            self.folder_config, self.config_hash = read_folder_config(path)
            found = _find_checkpoint_in_dir(path)
            if found is None:
                raise FileNotFoundError(f"Model folder {path} holds no weights file (open_clip_model."
                                        "safetensors or open_clip_pytorch_model.bin): copy the whole folder "
                                        "as published")
            path, self.name, pretrained_tag = Path(found), self.model_dir.name, None
        self.weights_path = path
        if not self.weights_path.is_file():
            raise FileNotFoundError(
                f"Encoder weights file {self.weights_path} not found; {REAL_WEIGHTS_HINT}."
            )
        # The pretrained tag is used only for its preprocessing (mean/std): LAION-2B ViT-L-14
        # was trained with (0.5, 0.5, 0.5) normalisation, not OpenAI's, and a file path alone
        # would silently give open_clip's OpenAI defaults.
        if pretrained_tag is None and self.name == DEFAULT_ARCH and self.model_dir is None:
            pretrained_tag = DEFAULT_PRETRAINED_TAG
        self.pretrained_tag = pretrained_tag
        self.image_tower = image_tower
        self.before_use: Callable[[str], None] | None = None
        self._model: torch.nn.Module | None = None
        self._visual: torch.nn.Module | None = None  # the image tower, loaded apart (image_tower=False)
        self._transform: Callable[[Image.Image], torch.Tensor] | None = None
        self._tokenizer: Callable[..., torch.Tensor] | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # An encoder travels to other processes (the Ray build's workers) unloaded: each builds
        # its model from the weights file there; a loaded model or a lock does not pickle.
        state = dict(self.__dict__)
        state.update(_model=None, _visual=None, _transform=None, _tokenizer=None, _lock=None,
                     before_use=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- cheap facts (no model build) -------------------------------------------------------
    @property
    def weights_hash(self) -> str:
        return cached_sha256(self.weights_path)  # cached per file version: files can be 1.7 GB

    @property
    def tokenizer_hash(self) -> str | None:
        return tokenizer_sha256(self.model_dir) if self.model_dir is not None else None

    @property
    def open_clip_name(self) -> str:
        """The name open_clip's factory builds this model by ("local-dir:<folder>" for a folder)."""
        return f"local-dir:{self.model_dir}" if self.model_dir is not None else self.name

    def model_cfg(self) -> dict[str, Any]:
        if self.folder_config is not None:
            return self.folder_config["model_cfg"]
        return model_config(self.name, self.weights_path)

    @property
    def dim(self) -> int:
        return int(self.model_cfg()["embed_dim"])

    @property
    def is_random_demo(self) -> bool:
        """Weights marked as random (the demo's): tools say their results mean nothing."""
        return bool(weights_metadata(self.weights_path).get("random_demo"))

    @property
    def preprocess_id(self) -> str:
        """What the image embeddings depend on besides the weights; stored in index manifests."""
        size = self.model_cfg()["vision_cfg"].get("image_size", 224)
        mean, std, interp, mode = self._preprocess_cfg()
        return f"garment384x512-whitepad|{size}|{mode}|{interp}|{list(mean)}|{list(std)}"

    def _preprocess_cfg(self) -> tuple[tuple[float, ...], tuple[float, ...], str, str]:
        cfg: dict[str, Any] = {}
        if self.folder_config is not None:
            cfg = self.folder_config.get("preprocess_cfg") or {}
        elif self.pretrained_tag:
            import open_clip

            cfg = open_clip.get_pretrained_cfg(self.name, self.pretrained_tag) or {}
        return (
            # open_clip's defaults (OpenAI's, reference.py): describing an encoder needs no open_clip import
            tuple(cfg.get("mean", CLIP_MEAN)),
            tuple(cfg.get("std", CLIP_STD)),
            cfg.get("interpolation", "bicubic"),
            cfg.get("resize_mode", "shortest"),
        )

    def image_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The eval transform open_clip builds with this model, built without the model.

        So that workers which only preprocess (the Ray build's CPU stage) load no weights;
        tests/test_encoder_config.py holds it equal to open_clip's own for the paper's encoder.
        """
        if self._transform is None:
            from open_clip.transform import PreprocessCfg, image_transform_v2

            size = self.model_cfg()["vision_cfg"].get("image_size", 224)
            mean, std, interp, mode = self._preprocess_cfg()
            cfg = PreprocessCfg(size=size, mean=mean, std=std, interpolation=interp, resize_mode=mode)
            self._transform = image_transform_v2(cfg, is_train=False)
        return self._transform

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> [N, 3, S, S] float32 model input (CPU work: no model needed)."""
        transform = self.image_transform()
        return torch.stack([transform(img) for img in images])

    def describe(self) -> str:
        kind = "RANDOM demo weights, not pretrained" if self.is_random_demo else "weights"
        kind = f"model folder {self.model_dir}, {kind}" if self.model_dir is not None else kind
        return f"{self.name} ({kind} {self.weights_path.name}, sha256 {self.weights_hash[:12]}, {self.dim}-d)"

    # -- the model ------------------------------------------------------------------------------
    @property
    def module(self) -> torch.nn.Module:
        """The open_clip model (built and loaded on first access, on the CPU, in eval mode);
        without its image tower (`visual` is None) when image_tower=False."""
        with self._lock:
            if self._model is None:
                self._model = self._build("all" if self.image_tower else "text")
            return self._model

    def tower(self, kind: str) -> torch.nn.Module:
        """The module that encodes "text" (the open_clip model) or "image" (its image tower)."""
        if kind == "text":
            return self.module
        if kind != "image":
            raise ValueError(f"no {kind!r} tower: 'text' or 'image'")
        if self.image_tower:
            return self.module.visual
        with self._lock:
            if self._visual is None:
                self._visual = self._build("image")
            return self._visual

    def _build(self, part: str) -> torch.nn.Module:
        """The whole model ("all"), the model without its image tower ("text": `visual` is None)
        or the image tower alone ("image"), loaded from the weights file, in eval mode.

        The model is made with its parameters on the meta device and only the part's weights
        are read, from the memory-mapped file, block by block (load_in_parts): a text-first
        load holds the text tower once, not the whole model beside the whole file. A file whose
        keys open_clip must convert first (another layout, an older format) goes through
        open_clip's own load of the whole model, and the part is taken from it.
        """
        import open_clip

        try:
            module = self._read_part(part)
        except Exception as exc:  # reading in parts only saves memory: open_clip's own load decides
            log.warning("%s: could not read the %s weights in parts (%s); open_clip loads the whole model",
                        self.weights_path, part, str(exc)[:200])
            module = None
        if module is None:
            log.info("%s: its keys are not the %s part's as open_clip builds it; open_clip loads the "
                     "whole model", self.weights_path, part)
            try:
                model = self._create(str(self.weights_path))  # a local file: never downloads
            except Exception as exc:  # torch, safetensors, open_clip: any failure here is a bad weights file
                raise ValueError(
                    f"Cannot load {self.weights_path} as OpenCLIP {self.name} weights ({str(exc)[:200]}). "
                    f"Check that the file is complete and matches the architecture; {REAL_WEIGHTS_HINT}."
                ) from exc
            module = _part_of(model, part)
        if self._tokenizer is None:
            self._tokenizer = open_clip.get_tokenizer(self.open_clip_name)
        return module.eval().requires_grad_(False)

    def _read_part(self, part: str) -> torch.nn.Module | None:
        """The part made on the meta device and filled from the file; None when the file's keys
        are not exactly the part's (a layout open_clip converts, or not a plain state dict)."""
        module = _part_of(self._create(None), part)
        prefix = "visual." if part == "image" else ""
        return module if self._fill(module, prefix, skip="visual." if part == "text" else None) else None

    def _create(self, weights: str | None) -> torch.nn.Module:
        """open_clip's model of this architecture with the tag's settings: loaded from `weights`,
        or, without, its parameters on the meta device (nothing allocated, nothing initialised)."""
        import open_clip

        if self.model_dir is not None:  # the folder's own config, preprocessing and weights file
            if weights is not None:
                return open_clip.create_model(self.open_clip_name, weights_only=True)
            with parameters_on_meta():
                return open_clip.create_model(self.open_clip_name, load_weights=False, pretrained_text=False,
                                              device=None)
        carried = _carried_config(self.name, self.weights_path)
        if carried is not None:
            register_config(self.name, carried)
        mean, std, interp, mode = self._preprocess_cfg()
        quick_gelu = False
        if self.pretrained_tag:
            tag_cfg = open_clip.get_pretrained_cfg(self.name, self.pretrained_tag) or {}
            quick_gelu = bool(tag_cfg.get("quick_gelu"))
        kwargs: dict[str, Any] = dict(
            force_quick_gelu=quick_gelu,
            force_preprocess_cfg={"mean": mean, "std": std, "interpolation": interp, "resize_mode": mode},
        )
        if weights is not None:
            return open_clip.create_model(self.name, pretrained=weights, weights_only=True, **kwargs)
        with parameters_on_meta():
            return open_clip.create_model(self.name, device=None, **kwargs)  # device None: not moved

    def _fill(self, module: torch.nn.Module, prefix: str, skip: str | None) -> bool:
        """Load the file's `prefix` keys (less those starting with `skip`) into `module`, whose
        parameters are on the meta device; False, with nothing loaded, when they are not
        exactly the module's keys and shapes (a layout open_clip converts)."""
        try:
            sd = read_state_dict(self.weights_path, f"OpenCLIP {self.name} weights")
        except WeightFileError:  # not a plain state dict (open_clip also reads big_vision .npz)
            return False
        part = {k[len(prefix):]: v for k, v in sd.items()
                if k.startswith(prefix) and not (skip and k.startswith(skip))}
        del sd  # the other keys' tensors are never touched: their pages are never read
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        if {k: tuple(v.shape) for k, v in part.items()} != expected:
            return False
        materialize(module)
        load_in_parts(module, part, source=self.weights_path)
        return True

    def _use(self, kind: str) -> torch.nn.Module:
        module = self.tower(kind)
        if self.before_use:
            self.before_use(kind)
        return module

    @torch.inference_mode()
    def encode_images(
        self, images: Sequence[Image.Image], batch_size: int = 16, progress: ProgressFn | None = None
    ) -> np.ndarray:
        """PIL images -> [N, dim] float32, unit L2 norm (the garment's 384x512 form is expected)."""
        visual = self._use("image")
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            out[start : start + len(batch)] = _forward(visual, self.preprocess_images(batch))
            if progress:
                progress(min(start + batch_size, len(images)), len(images))
        return out

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor | np.ndarray) -> np.ndarray:
        """preprocess_images' output -> [N, dim] float32, unit L2 norm (one forward pass)."""
        return _forward(self._use("image"), pixels)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Texts -> [N, dim] float32, unit L2 norm (truncated to the model's context length)."""
        model = self._use("text")
        assert self._tokenizer is not None
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        device = next(model.parameters()).device
        for start in range(0, len(texts), batch_size):
            tokens = self._tokenizer(list(texts[start : start + batch_size])).to(device)
            out[start : start + len(tokens)] = _normalise(model.encode_text(tokens))
        return out


def _part_of(model: torch.nn.Module, part: str) -> torch.nn.Module:
    """A part of a whole open_clip model: the model ("all"), the model less its image tower
    ("text": `visual` set to None, freeing it) or the image tower ("image")."""
    if part == "image":
        return model.visual
    if part == "text":
        model.visual = None
    return model


def _forward(visual: torch.nn.Module, pixels: torch.Tensor | np.ndarray) -> np.ndarray:
    # open_clip's encode_image is its image tower's forward; the pixels go to the tower's device.
    weight = next(visual.parameters())
    batch = torch.as_tensor(pixels).to(device=weight.device, dtype=weight.dtype)
    return _normalise(visual(batch))


def _normalise(feats: torch.Tensor) -> np.ndarray:
    # Normalise in float32 on the CPU even if the model ran in half precision, so scores are
    # comparable with the stored embeddings to float32 accuracy.
    x = feats.detach().float().cpu().numpy()
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)
