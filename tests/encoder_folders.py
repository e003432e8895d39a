"""Random-weight OpenCLIP model folders in the published layouts, written offline (test helper).

A folder is what the Hugging Face hub holds for open_clip models: open_clip_config.json
({"model_cfg", "preprocess_cfg"}), open_clip_model.safetensors and, for SigLIP-family models,
the Hugging Face tokenizer files. Both configs are the real architectures at tiny widths:
- CLIP: laion/CLIP-ViT-*'s layout (open_clip's own ViT and text transformer, its BPE tokenizer);
- SigLIP: Marqo-FashionSigLIP's layout (a timm ViT with attention pooling, a custom text tower
  with no causal mask and last-token pooling, an HF tokenizer), timm's 0.4 M-parameter test_vit3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

WORDS = ("<pad> </s> <unk> a an red blue black white green striped checked floral long short sleeve "
         "top dress trousers skirt shirt jeans").split()

CLIP_CONFIG: dict[str, Any] = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                       "std": [0.26862954, 0.26130258, 0.27577711]},
}
SIGLIP_CONFIG: dict[str, Any] = {
    "model_cfg": {
        "embed_dim": 96,  # timm_proj none: the image tower's width (test_vit3's 96)
        "init_logit_bias": -10,
        "custom_text": True,
        "vision_cfg": {"image_size": 160, "timm_model_name": "test_vit3", "timm_model_pretrained": False,
                       "timm_pool": "map", "timm_proj": "none"},
        "text_cfg": {"context_length": 16, "vocab_size": len(WORDS),
                     "hf_tokenizer_name": "timm/ViT-B-16-SigLIP",
                     "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 32, "heads": 2, "layers": 1,
                     "no_causal_mask": True, "proj_bias": True, "pool_type": "last",
                     "norm_kwargs": {"eps": 1e-6}},
    },
    "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                       "resize_mode": "squash"},
}
CONFIGS = {"clip": CLIP_CONFIG, "siglip": SIGLIP_CONFIG}


def write_tokenizer(folder: Path, words: tuple[str, ...] | list[str] = WORDS) -> None:
    """A word-level Hugging Face tokenizer (tokenizer.json + tokenizer_config.json), offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": 16}))


def write_model_folder(folder: Path, kind: str, seed: int = 0) -> Path:
    """A random-weight model folder of `kind` ("clip" or "siglip"), same seed, same weights."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(CONFIGS[kind], indent=2))
    if kind == "siglip":
        write_tokenizer(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(f"local-dir:{folder}", load_weights=False, pretrained_text=False)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder
