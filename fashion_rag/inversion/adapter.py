"""The inversion adapter: CLIP ViT-H vision features of a garment -> 16 pseudo-word embeddings.

Plain torch, with exactly the parameter names of the reference module (a transformers
`CLIPEncoderLayer` in `encoder_layers`, `post_layernorm`, an `nn.Sequential` in `layers`), so
`inversion_adapter_120000.pth` loads with a strict check and no key renaming. See
docs/method.md, "Garment → pseudo-words".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..model_files import ADAPTER
from ..weights import WeightFileError, check_state_dict, load_in_parts, read_state_dict


@dataclass(frozen=True)
class AdapterConfig:
    """Sizes of an inversion adapter. The defaults are the reference's (ViT-H/14 -> SD2)."""

    vision_width: int = 1280  # width of the vision tower's hidden states
    heads: int = 16  # attention heads of the encoder layer (ViT-H/14: 16 heads of 80)
    mlp_dim: int = 5120  # MLP width inside the encoder layer
    hidden_dim: int = 5120  # width of the two hidden layers of the head
    num_tokens: int = 16  # pseudo-words per garment
    text_width: int = 1024  # width of the text encoder's token embeddings (SD2: 1024)
    num_encoder_layers: int = 1
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.vision_width % self.heads:
            raise ValueError(f"vision_width {self.vision_width} is not divisible by heads {self.heads}")

    @property
    def output_dim(self) -> int:
        return self.num_tokens * self.text_width

    @classmethod
    def from_state_dict(
        cls, sd: Mapping[str, torch.Tensor], *, heads: int = 16, num_tokens: int = 16
    ) -> AdapterConfig:
        """Read the sizes off a state dict. Heads and the token split of the output are not
        visible in the shapes, so they are arguments (the reference's values by default)."""
        try:
            vision_width = sd["post_layernorm.weight"].shape[0]
            mlp_dim = sd["encoder_layers.0.mlp.fc1.weight"].shape[0]
            hidden_dim = sd["layers.0.weight"].shape[0]
            output_dim = sd["layers.6.weight"].shape[0]
        except KeyError as exc:
            raise ValueError(f"not an inversion adapter state dict: no key {exc}") from None
        layer_ids = {int(k.split(".")[1]) for k in sd if k.startswith("encoder_layers.")}
        if output_dim % num_tokens:
            raise ValueError(f"adapter output width {output_dim} is not divisible by {num_tokens} tokens")
        return cls(
            vision_width=vision_width,
            heads=heads,
            mlp_dim=mlp_dim,
            hidden_dim=hidden_dim,
            num_tokens=num_tokens,
            text_width=output_dim // num_tokens,
            num_encoder_layers=max(layer_ids) + 1 if layer_ids else 0,
        )


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, **factory) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width, **factory)
        self.k_proj = nn.Linear(width, width, **factory)
        self.v_proj = nn.Linear(width, width, **factory)
        self.out_proj = nn.Linear(width, width, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, w = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(n, t, self.heads, w // self.heads).transpose(1, 2)

        # No mask: the reference calls the layer with attention_mask=None (all 257 tokens see
        # each other). SDPA's default scale is head_dim**-0.5, as in CLIP.
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(n, t, w))


class _MLP(nn.Module):
    def __init__(self, width: int, mlp_dim: int, **factory) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_dim, **factory)
        self.fc2 = nn.Linear(mlp_dim, width, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ViT-H's config says hidden_act "gelu": the exact (erf) GELU, not quick_gelu.
        return self.fc2(F.gelu(self.fc1(x)))


class _EncoderLayer(nn.Module):
    """A pre-LN CLIP encoder layer (same names as transformers' CLIPEncoderLayer)."""

    def __init__(self, cfg: AdapterConfig, **factory) -> None:
        super().__init__()
        self.self_attn = _Attention(cfg.vision_width, cfg.heads, **factory)
        self.layer_norm1 = nn.LayerNorm(cfg.vision_width, eps=cfg.layer_norm_eps, **factory)
        self.mlp = _MLP(cfg.vision_width, cfg.mlp_dim, **factory)
        self.layer_norm2 = nn.LayerNorm(cfg.vision_width, eps=cfg.layer_norm_eps, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class InversionAdapter(nn.Module):
    """[N, 257, vision_width] vision hidden states -> [N, num_tokens, text_width] embeddings."""

    def __init__(
        self,
        config: AdapterConfig | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.config = cfg = config or AdapterConfig()
        factory = {"device": device, "dtype": dtype}
        self.encoder_layers = nn.ModuleList(
            _EncoderLayer(cfg, **factory) for _ in range(cfg.num_encoder_layers)
        )
        self.post_layernorm = nn.LayerNorm(cfg.vision_width, eps=cfg.layer_norm_eps, **factory)
        # Indices 0/3/6 hold the Linear layers, as in the reference's nn.Sequential; the
        # Dropout(0.5) layers only matter in training (this module is used in eval mode).
        self.layers = nn.Sequential(
            nn.Linear(cfg.vision_width, cfg.hidden_dim, **factory),
            nn.GELU(),
            nn.Dropout(p=0.5),
            nn.Linear(cfg.hidden_dim, cfg.hidden_dim, **factory),
            nn.GELU(),
            nn.Dropout(p=0.5),
            nn.Linear(cfg.hidden_dim, cfg.output_dim, **factory),
        )
        self.eval()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: the vision tower's last_hidden_state (before its post_layernorm)."""
        if features.ndim != 3 or features.shape[-1] != self.config.vision_width:
            raise ValueError(
                f"the adapter expects vision hidden states [N, tokens, {self.config.vision_width}], "
                f"got {tuple(features.shape)}"
            )
        x = features
        for layer in self.encoder_layers:
            x = layer(x)
        # Only the class token goes on, as in the reference.
        x = self.post_layernorm(x[:, 0, :])
        x = self.layers(x)
        return x.view(x.shape[0], self.config.num_tokens, self.config.text_width)


def expected_shapes(config: AdapterConfig | None = None) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the state dict of an adapter with this config (no allocation)."""
    return {k: tuple(v.shape) for k, v in InversionAdapter(config, device="meta").state_dict().items()}


def load_adapter_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """An adapter state dict from .pth/.pt/.bin (tensors only, never pickled code) or .safetensors."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"Inversion adapter file not found: {path}. Get {ADAPTER.where_to_get}.")
    return read_state_dict(path, what="an inversion adapter")


def load_adapter(
    path: str | os.PathLike,
    config: AdapterConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> InversionAdapter:
    """Build an adapter from a weights file with a strict key/shape check.

    Without `config`, the sizes are read off the file (heads=16, 16 tokens per garment).
    """
    sd = load_adapter_state_dict(path)
    advice = f"The expected file is {ADAPTER.where_to_get}."
    if config is None:
        try:
            config = AdapterConfig.from_state_dict(sd)
        except ValueError as exc:
            raise WeightFileError(f"{path}: {exc}. {advice}") from None
    check_state_dict(sd, expected_shapes(config), str(path), "an inversion adapter of the expected layout",
                     advice)
    # Copied into weights of the model's own, block by block with the file's pages given back:
    # never the file and the model both whole in memory, and weights that do not change (or
    # crash the process) when the file is rewritten while loaded, as mapped weights would.
    model = InversionAdapter(config, device="meta", dtype=dtype).to_empty(device=device)  # no random init
    load_in_parts(model, sd, source=path)  # keys and shapes checked above
    return model.eval().requires_grad_(False)
