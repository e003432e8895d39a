"""Random-weight stand-ins for every model file the example workflow needs.

No pretrained weights can be downloaded where this project is built and tested, so the demo
and the end-to-end tests run on files of the *real formats* (the layouts users download)
filled with seeded random values. The images they produce are meaningless; the point is that
every loader, node and socket runs for real. Users replace these files with the real weights
(README, "Model files").

Sizes: ComfyUI's loaders fix the SD2 text encoder (OpenCLIP-H text, 24 layers), the SD VAE
and the ViT-H/14 vision tower at their real sizes, so those are full-size (written in fp16,
about 2.2 GB together, generated once into a cache and linked into models folders). The
Fashion-RAG UNet is a small config of the real architecture (27 input channels, context 1024),
since our loader reads its config from the weights; the base checkpoint's own UNet, which the
workflow never uses, is the smallest that ComfyUI still detects as SD2.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from fashion_rag.files import atomic_write
from fashion_rag.inpaint.unet_layout import UNetLayout, diffusers_to_ldm

CHECKPOINT = "fashion_rag_demo_sd2_inpainting.safetensors"
CLIP_VISION = "fashion_rag_demo_clip_vision_h.safetensors"
ADAPTER = "fashion_rag_demo_adapter.safetensors"
UNET = "fashion_rag_demo_unet.pth"

# Demo Fashion-RAG UNet: the SD2-inpainting architecture (27 input channels, context 1024),
# narrow; heads of 64 channels and GroupNorm(32) as ComfyUI's UNet assumes. Its transformers
# (self- and cross-attention to the garment tokens) sit at the half-resolution level and in the
# middle block only: self-attention over the full 48x64 latent made the 50-step demo's sampling
# 6x dearer (0.69 against 0.11 CPU s per cfg step at 384x512, one thread).
DEMO_UNET_LAYOUT = UNetLayout(
    block_out_channels=(64, 64), layers_per_block=1, attention_levels=(False, True),
    cross_attention_dim=1024,
)
# Base SD2 checkpoint UNet: model_channels 320 and context 1024 are what ComfyUI keys SD2 on.
BASE_UNET = dict(
    in_channels=9, out_channels=4, block_out_channels=(320,), layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
    cross_attention_dim=1024, attention_head_dim=(5,), use_linear_projection=True,
    sample_size=64,
)


def _is_norm(name: str) -> bool:
    n = name.lower()
    return any(s in n for s in ("norm", "ln_", "ln_final", "layrnorm"))


def random_state_dict(shapes: dict[str, torch.Size], seed: int,
                      dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Seeded values that keep activations bounded: norms 1/0, biases 0, fan-in scaled weights."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        leaf = name.rsplit(".", 1)[-1]
        if _is_norm(name) and len(shape) == 1:
            t = torch.ones(shape) if leaf == "weight" else torch.zeros(shape)
        elif leaf == "bias":
            t = torch.zeros(shape)
        elif len(shape) >= 2 and "embedding" not in name:
            t = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        else:  # token/position/class embeddings, logit scale
            t = torch.randn(shape, generator=g) * 0.02
        out[name] = t.to(dtype).contiguous()
    return out


def _shapes(build: Callable[[], torch.nn.Module]) -> dict[str, torch.Size]:
    with torch.device("meta"):
        module = build()
    return {k: v.shape for k, v in module.state_dict().items()}


def _diffusers_unet_shapes(config: dict) -> dict[str, torch.Size]:
    from diffusers import UNet2DConditionModel

    return _shapes(lambda: UNet2DConditionModel(**config))


def checkpoint_state_dict(seed: int = 1) -> dict[str, torch.Tensor]:
    """An SD2-inpainting single-file checkpoint (LDM layout, what CheckpointLoaderSimple reads)."""
    from diffusers import AutoencoderKL
    from open_clip.model import CLIPTextCfg, _build_text_tower


    unet = random_state_dict(_diffusers_unet_shapes(BASE_UNET), seed)
    sd = {f"model.diffusion_model.{k}": v for k, v in diffusers_to_ldm(unet).items()}
    text_cfg = CLIPTextCfg(context_length=77, vocab_size=49408, width=1024, heads=16, layers=24)
    text = random_state_dict(_shapes(lambda: _build_text_tower(1024, text_cfg)), seed + 1)
    sd.update({f"cond_stage_model.model.{k}": v for k, v in text.items()})
    vae_cfg = dict(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
        layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    vae = random_state_dict(_shapes(lambda: AutoencoderKL(**vae_cfg)), seed + 2)
    sd.update({f"first_stage_model.{k}": v for k, v in vae.items()})
    return sd


def clip_vision_state_dict(seed: int = 4) -> dict[str, torch.Tensor]:
    """CLIP ViT-H/14 vision tower in the transformers layout (what CLIPVisionLoader reads)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                           num_attention_heads=16, image_size=224, patch_size=14,
                           projection_dim=1024, hidden_act="gelu")
    shapes = _shapes(lambda: CLIPVisionModelWithProjection(cfg))
    shapes.pop("vision_model.embeddings.position_ids", None)
    return random_state_dict(shapes, seed)


def adapter_state_dict(seed: int = 5) -> dict[str, torch.Tensor]:
    """The inversion adapter at its real size (ViT-H width 1280 → 16 × 1024)."""
    from fashion_rag.inversion.adapter import AdapterConfig, InversionAdapter

    return random_state_dict(_shapes(lambda: InversionAdapter(AdapterConfig())), seed)


def unet_state_dict(seed: int = 6) -> dict[str, torch.Tensor]:
    """The Fashion-RAG UNet in the reference's format: a diffusers-key plain state_dict."""
    shapes = _diffusers_unet_shapes(DEMO_UNET_LAYOUT.diffusers_config())
    return random_state_dict(shapes, seed, dtype=torch.float32)


def _cache_dir() -> Path:
    root = os.environ.get("FASHION_RAG_CACHE") or Path.home() / ".cache" / "fashion-rag"
    return Path(root) / "demo-models"


def source_tag(sources: list[Path]) -> str:
    """12 hex digits of the sha256 of the files' bytes, in order: a cached file's name carries the
    tag of the code that generated it, so a change to that code writes it anew. (A hand-bumped
    version let a changed generator go unseen by every test on a warm cache.)"""
    digest = hashlib.sha256()
    for path in sources:
        data = path.read_bytes()
        digest.update(len(data).to_bytes(8, "big") + data)  # the lengths keep file boundaries apart
    return digest.hexdigest()[:12]


def _sources(*modules: str) -> list[Path]:
    """This file and the files of the modules a generator builds its shapes from (where import
    finds them, without importing them)."""
    return [Path(__file__).resolve(), *(Path(importlib.util.find_spec(m).origin) for m in modules)]


_UNET_SOURCES = _sources("fashion_rag.inpaint.unet_layout")
# target path under models/ -> (cache file name, generator, file kind)
_FILES: dict[str, tuple[str, Callable[[], dict[str, torch.Tensor]], str]] = {
    f"checkpoints/{CHECKPOINT}": (f"{source_tag(_UNET_SOURCES)}-{CHECKPOINT}", checkpoint_state_dict,
                                  "safetensors"),
    f"clip_vision/{CLIP_VISION}": (f"{source_tag(_sources())}-{CLIP_VISION}", clip_vision_state_dict,
                                   "safetensors"),
    f"fashion_rag/adapter/{ADAPTER}": (f"{source_tag(_sources('fashion_rag.inversion.adapter'))}-{ADAPTER}",
                                       adapter_state_dict, "safetensors"),
    f"fashion_rag/unet/{UNET}": (f"{source_tag(_UNET_SOURCES)}-{UNET}", unet_state_dict, "pth"),
}


def missing_demo_weights() -> list[str]:
    """Cache file names still to be generated (the first run's extra minutes)."""
    return [name for name, _, _ in _FILES.values() if not (_cache_dir() / name).exists()]


def _write_model(path: Path, make: Callable[[], dict[str, torch.Tensor]], kind: str) -> None:
    sd = make()
    if kind == "safetensors":
        meta = {"fashion_rag_demo": "random weights, not a trained model"}
        atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))
    else:  # the reference ships plain torch state_dicts; weights_only loading reads them
        atomic_write(path, lambda tmp: torch.save(sd, tmp))


def _remove_older(cache: Path, name: str) -> None:
    """Delete the cache's files of `name` made by other generator code ("<tag>-" or the old
    "v<N>-" prefix): each is a GB of random numbers no current checkout asks for."""
    base = name.split("-", 1)[1]
    for old in cache.glob(f"*-{base}"):
        if old.name != name and re.fullmatch(r"(?:[0-9a-f]{12}|v[0-9]+)-", old.name[: -len(base)]):
            old.unlink(missing_ok=True)


def install_demo_models(models_dir: Path, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Make the demo index and demo weights available under models_dir (a ComfyUI models folder).

    Weight files are generated once into a cache (FASHION_RAG_CACHE, default ~/.cache/fashion-rag)
    and symlinked, so reruns take milliseconds; a missing cache is simply rebuilt.
    """
    from .catalog import install_demo_index

    models_dir = Path(models_dir)
    cache = _cache_dir()
    written: dict[str, Path] = {}
    for rel, (name, make, kind) in _FILES.items():
        target = models_dir / rel
        cached = cache / name
        if not cached.exists():
            log(f"[fashion-rag] generating random demo weights {name} (once; cached in {cache})")
            _write_model(cached, make, kind)
            _remove_older(cache, name)
        if not (target.is_symlink() and target.resolve() == cached.resolve()):
            if target.exists() and not target.is_symlink():
                log(f"[fashion-rag] keeping your own {target}")
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.unlink(missing_ok=True)
                target.symlink_to(cached)
        written[rel] = target
    written["index"] = install_demo_index(models_dir)
    return written

