"""The real retrieval encoder: OpenCLIP ViT-L-14 `laion2b_s32b_b82k`, configured as open_clip itself would.

The pack loads the encoder from a local file (never a download), so open_clip cannot apply the
pretrained tag's settings by itself: the pack has to pass the tag's preprocessing (LAION's
0.5/0.5 mean/std, not OpenAI's) and activation (exact GELU, not QuickGELU). Here the pack's
encoder, as GarmentEncoder builds it, is held against (1) the values written out literally and
(2) what open_clip builds for `create_model_and_transforms("ViT-L-14", "laion2b_s32b_b82k")`.
No 1.7 GB weights are needed: both models are built on the meta device without weights (open_clip's
download is stubbed), which keeps every config decision and allocates nothing.
"""

from __future__ import annotations

import json

import numpy as np
import open_clip  # noqa: E402  (the pack requires it)
import pytest
import torch
from PIL import Image

from fashion_rag.openclip_encoder import GarmentEncoder

ARCH, TAG = "ViT-L-14", "laion2b_s32b_b82k"  # docs/method.md: the paper's retrieval encoder
# What open_clip's registry says for that tag (open_clip/pretrained.py, model_configs/ViT-L-14.json).
LITERAL = dict(
    hf_hub="laion/CLIP-ViT-L-14-laion2B-s32B-b82K/", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    interpolation="bicubic", resize_mode="shortest", image_size=224, embed_dim=768, quick_gelu=False,
)


def test_open_clip_registry_is_the_literal_config():
    """Guards the reference itself: a future open_clip that changes the tag shows here first."""
    tag = open_clip.get_pretrained_cfg(ARCH, TAG)
    model = open_clip.get_model_config(ARCH)
    assert tag["hf_hub"] == LITERAL["hf_hub"]
    assert tuple(tag["mean"]) == LITERAL["mean"] and tuple(tag["std"]) == LITERAL["std"]
    assert tag.get("interpolation", "bicubic") == LITERAL["interpolation"]
    assert tag.get("resize_mode", "shortest") == LITERAL["resize_mode"]
    assert bool(tag.get("quick_gelu", False)) == bool(model.get("quick_gelu", False)) == LITERAL["quick_gelu"]
    assert model["vision_cfg"]["image_size"] == LITERAL["image_size"]
    assert model["embed_dim"] == LITERAL["embed_dim"]


def _build_without_weights(create, name, pretrained, **kwargs):
    """open_clip's create_model_and_transforms on the meta device, no weights read."""
    with torch.device("meta"):
        return create(name, pretrained=pretrained, load_weights=False, device="meta", **kwargs)


@pytest.fixture(scope="module")
def open_clip_own():
    """(model, eval transform) as open_clip builds them for the pretrained tag itself."""
    mp = pytest.MonkeyPatch()
    seen = []
    mp.setattr(open_clip.factory, "download_pretrained",
               lambda cfg, cache_dir=None: seen.append(cfg) or "not-downloaded")
    try:
        model, _, transform = _build_without_weights(open_clip.create_model_and_transforms, ARCH, TAG)
    finally:
        mp.undo()
    assert seen and seen[0]["hf_hub"] == LITERAL["hf_hub"]  # really the tag's path
    return model, transform


def _activations(model) -> set[tuple[str, str, str]]:
    """(tower, activation class, GELU approximation) of every MLP activation."""
    out = set()
    for name, m in model.named_modules():
        if name.endswith("mlp.gelu"):
            out.add((name.split(".")[0], type(m).__name__, getattr(m, "approximate", "-")))
    return out


def _garment(seed: int = 0) -> Image.Image:
    """A 384x512 garment-like image (the form the catalog stores)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:512, 0:384]
    rgb = np.stack([xx * 255 / 384, yy * 255 / 512, (xx + yy) % 255], -1) + rng.normal(0, 20, (512, 384, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("arch", [None, ARCH], ids=["default", "from_manifest_name"])
def test_pack_encoder_is_open_clips_own_for_the_tag(tmp_path, open_clip_own, arch):
    """GarmentEncoder (default arguments, and as an index manifest names it) == open_clip's build.

    Checked: what the encoder reports (name, tag, dim, preprocess_id) and what it builds (the
    model's preprocess_cfg, its eval transform on a garment image, every MLP activation).
    Mutations caught (each tried once): no default pretrained tag for ViT-L-14 (OpenAI mean/std
    from a file path); quick_gelu forced True; resize_mode "squash" or interpolation "bilinear"
    instead of the tag's; preprocess_id reporting OpenAI's mean/std; image_mean/std not passed to
    open_clip (the model's preprocess_cfg then says OpenAI's while preprocess_id says LAION's).
    """
    weights = tmp_path / "open_clip_pytorch_model.bin"
    weights.write_bytes(b"")  # never read: the model is built without weights

    encoder = GarmentEncoder(weights) if arch is None else GarmentEncoder(weights, arch)
    # What it reports without building anything.
    assert (encoder.name, encoder.pretrained_tag, encoder.dim) == (ARCH, TAG, LITERAL["embed_dim"])
    size, mode, interp, mean, std = encoder.preprocess_id.split("|")[1:]
    assert int(size) == LITERAL["image_size"]
    assert (mode, interp) == (LITERAL["resize_mode"], LITERAL["interpolation"])
    assert (tuple(json.loads(mean)), tuple(json.loads(std))) == (LITERAL["mean"], LITERAL["std"])

    # What it builds: the model its load fills (parameters on the meta device; open_clip's load
    # of a file in another layout gets the same arguments).
    model = encoder._create(None)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    ref_model, ref_transform = open_clip_own
    assert model.visual.preprocess_cfg == ref_model.visual.preprocess_cfg
    assert tuple(model.visual.preprocess_cfg["mean"]) == LITERAL["mean"]
    assert tuple(model.visual.preprocess_cfg["std"]) == LITERAL["std"]
    image = _garment()
    # The transform the encoder builds without its model (the Ray build's CPU workers use it).
    assert torch.equal(encoder.image_transform()(image), ref_transform(image))
    assert _activations(model) == _activations(ref_model) == {("visual", "GELU", "none"),
                                                              ("transformer", "GELU", "none")}
