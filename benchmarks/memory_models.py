"""Model files for benchmarks/memory.py: random weights of the real formats, written once.

Both pipelines read the same tensors, each in the format its side reads in real use:
- the pack's files, as users download them: the Fashion-RAG UNet and adapter as plain fp32
  `.pth` state dicts (diffusers keys for the UNet), the SD2-inpainting single-file checkpoint
  (fp16, LDM/OpenCLIP keys, with its own full-size 9-channel UNet, which the example graph
  never reads), the ViT-H/14 vision tower as ComfyUI's `clip_vision_h.safetensors` (fp16,
  transformers keys);
- the reference's diffusers/transformers folders (config.json + safetensors, fp16) for the
  23-layer text encoder and the VAE, made from the same tensors; the vision folder links the
  pack's file, the UNet and adapter are the same `.pth` files.

Full size (default): 866M-parameter 27-channel UNet, 24-layer 1024-wide text encoder, SD VAE,
ViT-H/14 (632M), the 136M adapter; about 10 GB in `~/.cache/fashion-rag/bench/` (generating
needs about 4 GB of RAM). `--smoke`: tiny configs of the same architectures, seconds. The
checkpoint and vision loaders of ComfyUI fix those models at their real sizes, so in smoke mode
the pack side builds the tiny text encoder, VAE and vision tower with ComfyUI's own classes
(memory_pack.py), reading `clip_vae.safetensors` and `clip_vision.json` written here.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fashion_rag.files import atomic_write  # noqa: E402
from fashion_rag.inpaint.unet_layout import FULL, UNetLayout, diffusers_to_ldm  # noqa: E402
from fashion_rag.inversion.adapter import AdapterConfig, InversionAdapter  # noqa: E402
from tools.demo.weights import random_state_dict  # noqa: E402

VERSION = "v1"  # bump when a generator below changes, so caches are rebuilt


@dataclass(frozen=True)
class Sizes:
    name: str
    unet: UNetLayout
    text: dict  # transformers CLIPTextConfig sizes
    text_layers: int  # in the checkpoint; the reference's text model has one fewer (SD2 uses layer -2)
    vision: dict  # transformers CLIPVisionConfig sizes
    vae_blocks: tuple[int, ...]
    vae_layers: int
    adapter: AdapterConfig
    base_unet: UNetLayout | None  # the checkpoint's own 9-channel UNet (full size only)
    file_dtype: torch.dtype = torch.float16  # checkpoint, vision and reference folders
    extra: dict = field(default_factory=dict)

    @property
    def text_config(self) -> dict:
        return dict(vocab_size=49408, max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5,
                    bos_token_id=49406, eos_token_id=49407, pad_token_id=0, **self.text)

    @property
    def vision_config(self) -> dict:
        return dict(image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5, **self.vision)

    def vae_config(self) -> dict:
        n = len(self.vae_blocks)
        return dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=self.vae_blocks,
                    layers_per_block=self.vae_layers, down_block_types=["DownEncoderBlock2D"] * n,
                    up_block_types=["UpDecoderBlock2D"] * n, norm_num_groups=32, sample_size=512,
                    scaling_factor=0.18215)

    def comfy_vae_config(self) -> dict:
        """The same autoencoder in ComfyUI's (LDM) terms, for smoke mode's explicit VAE."""
        ch = self.vae_blocks
        return {"params": {"embed_dim": 4, "ddconfig": {
            "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": ch[0],
            "ch_mult": [c // ch[0] for c in ch], "num_res_blocks": self.vae_layers, "attn_resolutions": [],
            "dropout": 0.0}}}


FULL_SIZES = Sizes(
    name="full", unet=FULL,
    text=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16), text_layers=24,
    vision=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                projection_dim=1024),
    vae_blocks=(128, 256, 512, 512), vae_layers=2, adapter=AdapterConfig(),
    base_unet=UNetLayout(in_channels=9),
)
SMOKE_SIZES = Sizes(
    name="smoke",
    unet=UNetLayout(block_out_channels=(64, 128), layers_per_block=1, attention_levels=(True, False),
                    cross_attention_dim=64),
    text=dict(hidden_size=64, intermediate_size=128, num_attention_heads=4), text_layers=3,
    vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                projection_dim=16),
    vae_blocks=(32, 32, 32, 32), vae_layers=1,
    adapter=AdapterConfig(vision_width=32, heads=16, mlp_dim=64, hidden_dim=48, text_width=64),
    base_unet=None,
)


@dataclass(frozen=True)
class Files:
    """Where one size's files are (all under one cache folder)."""

    root: Path

    unet = property(lambda self: self.root / "fashion_rag_unet.pth")
    unet_fp16 = property(lambda self: self.root / "fashion_rag_unet_fp16.safetensors")
    adapter = property(lambda self: self.root / "inversion_adapter.pth")
    checkpoint = property(lambda self: self.root / "sd2_inpainting.safetensors")  # full size
    clip_vae = property(lambda self: self.root / "clip_vae.safetensors")  # smoke
    clip_vision = property(lambda self: self.root / "clip_vision_h.safetensors")
    clip_vision_json = property(lambda self: self.root / "clip_vision.json")  # smoke
    ref = property(lambda self: self.root / "reference")
    done = property(lambda self: self.root / "complete")


def cache_root() -> Path:
    root = os.environ.get("FASHION_RAG_CACHE") or Path.home() / ".cache" / "fashion-rag"
    return Path(root) / "bench"


def files_for(sizes: Sizes, root: Path | None = None) -> Files:
    return Files((root or cache_root()) / f"{sizes.name}-{VERSION}")


def _shapes(build: Callable[[], torch.nn.Module]) -> dict[str, torch.Size]:
    with torch.device("meta"):
        module = build()
    return {k: v.shape for k, v in module.state_dict().items()}


def _save(path: Path, sd: dict[str, torch.Tensor], kind: str = "safetensors") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "safetensors":
        meta = {"fashion_rag_bench": "random weights, not a trained model"}
        atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))
    else:  # the reference's files are plain torch state dicts
        atomic_write(path, lambda tmp: torch.save(sd, tmp))


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def text_state_dict(sizes: Sizes, seed: int = 11) -> dict[str, torch.Tensor]:
    """The text encoder with all the checkpoint's layers in transformers' names, fp32
    ("text_model.*" and "text_projection.weight", the keys of a saved SD2 text encoder)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(num_hidden_layers=sizes.text_layers, projection_dim=sizes.text["hidden_size"],
                         **sizes.text_config)
    shapes = _shapes(lambda: CLIPTextModelWithProjection(cfg))
    shapes.pop("text_model.embeddings.position_ids", None)
    return random_state_dict(shapes, seed, dtype=torch.float32)


def to_open_clip_text(sd: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """transformers names -> the OpenCLIP names SD2's single-file checkpoint stores."""
    t = "text_model."
    out = {
        "token_embedding.weight": sd[f"{t}embeddings.token_embedding.weight"],
        "positional_embedding": sd[f"{t}embeddings.position_embedding.weight"],
        "ln_final.weight": sd[f"{t}final_layer_norm.weight"],
        "ln_final.bias": sd[f"{t}final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].t().contiguous(),  # OpenCLIP: x @ P
        "logit_scale": torch.tensor(4.6052),
    }
    for i in range(layers):
        src, dst = f"{t}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [sd[f"{src}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")])
            for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                         ("attn.out_proj", "self_attn.out_proj"), ("mlp.c_fc", "mlp.fc1"),
                         ("mlp.c_proj", "mlp.fc2")):
                out[f"{dst}{a}.{kind}"] = sd[f"{src}{b}.{kind}"]
    return out


def vae_state_dict(sizes: Sizes, seed: int = 12) -> dict[str, torch.Tensor]:
    from diffusers import AutoencoderKL

    return random_state_dict(_shapes(lambda: AutoencoderKL(**sizes.vae_config())), seed, dtype=torch.float32)


def _to_dtype(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype).contiguous() for k, v in sd.items()}


def write_checkpoint(sizes: Sizes, files: Files, text: dict, vae: dict) -> None:
    """The SD2-inpainting single file: LDM UNet (9 channels), OpenCLIP text, LDM VAE."""
    from comfy.diffusers_convert import convert_vae_state_dict  # only to write LDM VAE keys
    from diffusers import UNet2DConditionModel

    assert sizes.base_unet is not None
    layout = sizes.base_unet
    unet = random_state_dict(_shapes(lambda: UNet2DConditionModel(**layout.diffusers_config())), 13,
                             dtype=sizes.file_dtype)
    sd = {f"model.diffusion_model.{k}": v for k, v in diffusers_to_ldm(unet, layout).items()}
    del unet
    text16 = _to_dtype(to_open_clip_text(text, sizes.text_layers), sizes.file_dtype)
    sd.update({f"cond_stage_model.model.{k}": v for k, v in text16.items()})
    vae_ldm = convert_vae_state_dict(_to_dtype(vae, sizes.file_dtype))
    sd.update({f"first_stage_model.{k}": v.contiguous() for k, v in vae_ldm.items()})
    _save(files.checkpoint, sd)


def write_smoke_clip_vae(sizes: Sizes, files: Files, text: dict, vae: dict) -> None:
    sd = {f"text.{k}": v for k, v in _to_dtype(text, sizes.file_dtype).items()}
    sd.update({f"vae.{k}": v for k, v in _to_dtype(vae, sizes.file_dtype).items()})
    _save(files.clip_vae, sd)
    cfg = {**sizes.vision_config, "num_channels": 3, "model_type": "clip_vision_model"}
    _write_json(files.clip_vision_json, cfg)


def write_reference(sizes: Sizes, files: Files, text: dict, vae: dict) -> None:
    """diffusers/transformers folders of the same tensors (23 of the 24 text layers, as SD2's)."""
    layers = sizes.text_layers - 1
    keep = {k: v for k, v in text.items() if k.startswith("text_model.") and not any(
        f"encoder.layers.{i}." in k for i in range(layers, sizes.text_layers))}
    _save(files.ref / "text_encoder" / "model.safetensors", _to_dtype(keep, sizes.file_dtype))
    _write_json(files.ref / "text_encoder" / "config.json", {
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "num_hidden_layers": layers,
        "projection_dim": sizes.text["hidden_size"], "torch_dtype": "float16", **sizes.text_config})
    _save(files.ref / "vae" / "diffusion_pytorch_model.safetensors", _to_dtype(vae, sizes.file_dtype))
    _write_json(files.ref / "vae" / "config.json", {"_class_name": "AutoencoderKL", **sizes.vae_config()})
    vision = files.ref / "clip_vision"
    vision.mkdir(parents=True, exist_ok=True)
    link = vision / "model.safetensors"
    link.unlink(missing_ok=True)
    link.symlink_to(files.clip_vision)
    _write_json(vision / "config.json", {"architectures": ["CLIPVisionModelWithProjection"],
                                         "model_type": "clip_vision_model", **sizes.vision_config})
    _write_json(files.ref / "unet_config.json", {"_class_name": "UNet2DConditionModel",
                                                 **sizes.unet.diffusers_config()})


def generate(sizes: Sizes, files: Files, log: Callable[[str], None] = print) -> Files:
    """Write every file of `sizes` once (a `complete` marker makes reruns instant)."""
    if files.done.exists():
        return files
    from diffusers import UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    log(f"[bench] generating random {sizes.name}-size model files in {files.root} (once)")
    files.root.mkdir(parents=True, exist_ok=True)
    unet_shapes = _shapes(lambda: UNet2DConditionModel(**sizes.unet.diffusers_config()))
    _save(files.unet, random_state_dict(unet_shapes, 6, dtype=torch.float32), kind="pth")
    _save(files.adapter, random_state_dict(_shapes(lambda: InversionAdapter(sizes.adapter)), 5,
                                           dtype=torch.float32), kind="pth")
    vcfg = CLIPVisionConfig(**sizes.vision_config)
    vshapes = _shapes(lambda: CLIPVisionModelWithProjection(vcfg))
    vshapes.pop("vision_model.embeddings.position_ids", None)
    _save(files.clip_vision, random_state_dict(vshapes, 4, dtype=sizes.file_dtype))
    text, vae = text_state_dict(sizes), vae_state_dict(sizes)
    if sizes.base_unet is not None:
        write_checkpoint(sizes, files, text, vae)
    else:
        write_smoke_clip_vae(sizes, files, text, vae)
    write_reference(sizes, files, text, vae)
    files.done.write_text(VERSION)
    return files
