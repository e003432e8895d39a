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


def test_config_refuses_a_width_not_divisible_by_the_heads():
    """30 = 4 x 7.5: no head width; refused when the config is made, naming both numbers.

    Mutation caught: the divisibility check dropped (the error came from a view() in forward)."""
    with pytest.raises(ValueError, match="vision_width 30 is not divisible by heads 4"):
        AdapterConfig(vision_width=30, heads=4)
    assert AdapterConfig(vision_width=32, heads=4).heads == 4


def test_output_width_not_divisible_by_16_tokens_is_named(tmp_path):
    """A file whose head ends in 33 outputs cannot be split into 16 pseudo-words: the loader says
    so (width, token count, file, where to get the right one).

    Mutation caught: the output_dim % num_tokens check dropped (33 // 16 = 2-wide words, and a
    layout error about layers.6 instead)."""
    odd = AdapterConfig(vision_width=32, heads=16, mlp_dim=64, hidden_dim=48, num_tokens=1, text_width=33)
    path = tmp_path / "odd.safetensors"
    save_file(random_state_dict(odd), str(path))
    with pytest.raises(ValueError, match="adapter output width 33 is not divisible by 16 tokens") as err:
        load_adapter(path)
    assert str(path) in str(err.value) and "furio19/fashion-rag" in str(err.value)


def _identity_encoder_layer(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights with the encoder layer's two residual branches zeroed (the layer passes
    its input through), so the class token reaches post_layernorm unchanged."""
    zero = ("self_attn.out_proj.", "mlp.fc2.")
    return {k: torch.zeros_like(v) if any(z in k for z in zero) else v for k, v in sd.items()}


@pytest.mark.parametrize("identity", [False, True], ids=["layer_norms_1_2", "post_layernorm"])
def test_layer_norm_epsilon_is_1e_5_on_low_variance_features(identity):
    """Features of standard deviation 1e-3 (variance 1e-6, below the 1e-5 epsilon): the epsilon
    decides the LayerNorm outputs, so only 1e-5 (transformers' CLIPEncoderLayer with
    layer_norm_eps=1e-5, nn.LayerNorm(eps=1e-5)) matches. With the encoder layer an identity, the
    post_layernorm sees those features itself.
    Mutations caught: the config's layer_norm_eps 1e-6; post_layernorm built with eps=1e-6."""
    sd = random_state_dict(TINY, seed=3)
    if identity:
        sd = _identity_encoder_layer(sd)
    ours = InversionAdapter(TINY)
    ours.load_state_dict(sd, strict=True)
    ref = ReferenceAdapter(TINY).eval()
    ref.load_state_dict(sd, strict=True)
    x = 1e-3 * torch.randn(2, 257, TINY.vision_width, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got, want = ours(x), ref(x).reshape(2, TINY.num_tokens, TINY.text_width)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_features_must_be_a_batch_of_token_sequences():
    """One image's hidden states without the batch axis ([257, 32]) are refused with the expected
    layout, not read as 257 one-token sequences or failing deep inside attention.

    Mutation caught: the ndim check dropped (only the width compared)."""
    with pytest.raises(ValueError, match=r"\[N, tokens, 32\], got \(257, 32\)"):
        InversionAdapter(TINY)(torch.zeros(257, 32))
    with pytest.raises(ValueError, match=r"got \(1, 2, 257, 32\)"):
        InversionAdapter(TINY)(torch.zeros(1, 2, 257, 32))


def test_loaded_adapter_is_frozen_in_the_dtype_asked(tmp_path):
    """load_adapter(dtype=float16): every parameter float16 (the file's values rounded to half, as
    torch's .half() rounds them), none requiring grad, and the output float16.
    Mutations caught: the dtype not passed to the model (float32 kept); requires_grad_(False)
    dropped."""
    cfg = AdapterConfig(vision_width=32, heads=16, mlp_dim=64, hidden_dim=48, num_tokens=16, text_width=8)
    sd = random_state_dict(cfg)
    path = tmp_path / "a.safetensors"
    save_file(sd, str(path))
    model = load_adapter(path, dtype=torch.float16)
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float16, k
        assert torch.equal(v, sd[k].half()), k
    assert not any(p.requires_grad for p in model.parameters())
    assert not load_adapter(path).layers[0].weight.requires_grad
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, dtype=torch.float16)).dtype == torch.float16


def test_a_given_config_is_used_not_the_one_read_off_the_file(tmp_path):
    """Heads are invisible in the shapes: with config=(... heads=4 ...) the model has 4 heads and
    computes what transformers' CLIPEncoderLayer with 4 heads computes (the file alone would
    give 16).
    Mutation caught: the config read off the file even when one is given."""
    cfg = AdapterConfig(vision_width=32, heads=4, mlp_dim=64, hidden_dim=48, num_tokens=16, text_width=8)
    sd = random_state_dict(cfg, seed=5)
    path = tmp_path / "a4.safetensors"
    save_file(sd, str(path))
    model = load_adapter(path, config=cfg)
    assert model.config.heads == 4
    ref = ReferenceAdapter(cfg).eval()
    ref.load_state_dict(sd, strict=True)
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x).reshape(2, 16, 8), atol=1e-5, rtol=1e-5)
        ref16 = ReferenceAdapter(AdapterConfig(**{**cfg.__dict__, "heads": 16})).eval()
        ref16.load_state_dict(sd, strict=True)
        assert (ref16(x) - ref(x)).abs().max() > 1e-3  # the head count shows in the output
