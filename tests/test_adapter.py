"""The inversion adapter: reference layout, parity with transformers' CLIP layers, file loading."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPVisionConfig
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from fashion_rag.inversion.adapter import (
    AdapterConfig,
    InversionAdapter,
    expected_shapes,
    load_adapter,
    load_adapter_state_dict,
)

# docs/method.md, "Garment → pseudo-words", step 3.
REFERENCE_SHAPES = {
    **{f"encoder_layers.0.self_attn.{p}_proj.weight": (1280, 1280) for p in "qkv"},
    **{f"encoder_layers.0.self_attn.{p}_proj.bias": (1280,) for p in "qkv"},
    "encoder_layers.0.self_attn.out_proj.weight": (1280, 1280),
    "encoder_layers.0.self_attn.out_proj.bias": (1280,),
    "encoder_layers.0.layer_norm1.weight": (1280,),
    "encoder_layers.0.layer_norm1.bias": (1280,),
    "encoder_layers.0.mlp.fc1.weight": (5120, 1280),
    "encoder_layers.0.mlp.fc1.bias": (5120,),
    "encoder_layers.0.mlp.fc2.weight": (1280, 5120),
    "encoder_layers.0.mlp.fc2.bias": (1280,),
    "encoder_layers.0.layer_norm2.weight": (1280,),
    "encoder_layers.0.layer_norm2.bias": (1280,),
    "post_layernorm.weight": (1280,),
    "post_layernorm.bias": (1280,),
    "layers.0.weight": (5120, 1280),
    "layers.0.bias": (5120,),
    "layers.3.weight": (5120, 5120),
    "layers.3.bias": (5120,),
    "layers.6.weight": (16384, 5120),
    "layers.6.bias": (16384,),
}

TINY = AdapterConfig(vision_width=32, heads=4, mlp_dim=64, hidden_dim=48, num_tokens=4, text_width=8)


class ReferenceAdapter(nn.Module):
    """The reference module's structure, built from transformers' CLIP layers (independent of ours)."""

    def __init__(self, cfg: AdapterConfig) -> None:
        super().__init__()
        vcfg = CLIPVisionConfig(
            hidden_size=cfg.vision_width, num_attention_heads=cfg.heads, intermediate_size=cfg.mlp_dim,
            hidden_act="gelu", layer_norm_eps=1e-5,
        )
        vcfg._attn_implementation = "eager"
        self.encoder_layers = nn.ModuleList([CLIPEncoderLayer(vcfg)])
        self.post_layernorm = nn.LayerNorm(cfg.vision_width, eps=1e-5)
        self.layers = nn.Sequential(
            nn.Linear(cfg.vision_width, cfg.hidden_dim), nn.GELU(), nn.Dropout(0.5),
            nn.Linear(cfg.hidden_dim, cfg.hidden_dim), nn.GELU(), nn.Dropout(0.5),
            nn.Linear(cfg.hidden_dim, cfg.output_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.encoder_layers:
            out = layer(x, None)
            x = out[0] if isinstance(out, tuple) else out
        return self.layers(self.post_layernorm(x[:, 0, :]))


def random_state_dict(cfg: AdapterConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: (1.0 if k.endswith("weight") and len(s) == 1 else 0.0) + 0.2 * torch.randn(s, generator=g)
        for k, s in expected_shapes(cfg).items()
    }


def test_full_size_layout_matches_reference_keys_and_param_count():
    model = InversionAdapter(AdapterConfig(), device="meta")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == REFERENCE_SHAPES
    assert sum(p.numel() for p in model.parameters()) == 136_360_704
    assert AdapterConfig.from_state_dict(model.state_dict()) == AdapterConfig()


def test_matches_transformers_reimplementation():
    sd = random_state_dict(TINY)
    ours = InversionAdapter(TINY)
    ours.load_state_dict(sd, strict=True)
    ref = ReferenceAdapter(TINY).eval()
    ref.load_state_dict(sd, strict=True)  # same key names, no renaming
    x = torch.randn(3, 257, TINY.vision_width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = ours(x)
        want = ref(x).reshape(3, TINY.num_tokens, TINY.text_width)
    assert got.shape == (3, 4, 8)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # Only the class token reaches the head (the reference's x[:, 0]), but attention mixes all.
    x2 = x.clone()
    x2[:, 5:] += 1.0
    assert not torch.allclose(ours(x2), got)


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".safetensors"])
def test_load_adapter_reads_formats_and_infers_config(tmp_path, suffix):
    cfg = AdapterConfig(vision_width=32, heads=16, mlp_dim=64, hidden_dim=48, num_tokens=16, text_width=8)
    sd = random_state_dict(cfg)
    path = tmp_path / f"adapter{suffix}"
    if suffix == ".safetensors":
        save_file(sd, str(path))
    else:  # DataParallel-style prefix, as some checkpoints carry
        torch.save({f"module.{k}": v for k, v in sd.items()}, str(path))
    assert set(load_adapter_state_dict(path)) == set(sd)
    model = load_adapter(path)
    assert model.config == cfg
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k])


def test_load_adapter_strict_check_names_file_and_keys(tmp_path):
    sd = random_state_dict(AdapterConfig(vision_width=32, heads=4, mlp_dim=64, hidden_dim=48))
    del sd["layers.3.bias"]
    sd["extra.weight"] = torch.zeros(2)
    sd["post_layernorm.bias"] = torch.zeros(31)
    path = tmp_path / "broken.pth"
    torch.save(sd, str(path))
    with pytest.raises(ValueError) as err:
        load_adapter(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "layers.3.bias" in msg and "extra.weight" in msg
    assert "post_layernorm.bias (31,) (expected (32,))" in msg
    assert "furio19/fashion-rag" in msg


def test_load_adapter_rejects_other_files(tmp_path):
    path = tmp_path / "unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(1)}, str(path))
    with pytest.raises(ValueError, match="not an inversion adapter"):
        load_adapter(path)
    with pytest.raises(FileNotFoundError, match="inversion_adapter_120000.pth"):
        load_adapter(tmp_path / "missing.pth")


def test_wrong_feature_width_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\[N, tokens, 32\]"):
        InversionAdapter(TINY)(torch.zeros(1, 257, 16))
