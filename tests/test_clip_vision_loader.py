"""Fashion-RAG CLIP Vision Loader: ComfyUI's own ViT-H/14 CLIP_VISION, never held twice.

Full size (the demo's random ViT-H/14, fp16 file, 632M parameters), in a fresh process: the
load's peak over the RSS before it stays near one fp32 model (the stock loader keeps the whole
mapped file beside the model, +0.5 model), and the weights equal the stock loader's exactly.
"""

from __future__ import annotations

import re
import sys

import pytest
import torch
from load_probe import measure_load
from safetensors.torch import save_file

_STOCK = r"""
import comfy.clip_vision
stock = comfy.clip_vision.load(args[0])
a, b = model.state_dict(), stock.model.state_dict()
extra = {"same": a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a),
         "classes": [type(ours.patcher).__name__, type(stock.patcher).__name__],
         "image_size": [ours.image_size, stock.image_size]}
"""


@pytest.mark.slow
def test_full_size_equals_the_stock_loader_with_one_model_at_peak(demo_models, comfy_base, tmp_path):
    """Mutation caught: the whole state dict to load_state_dict (peak ~1.5 models: the mapped
    fp16 file + the fp32 model), or weights mapped wrongly (not equal to the stock loader's)."""
    from tools.demo.weights import CLIP_VISION

    path = str(comfy_base / "models" / "clip_vision" / CLIP_VISION)
    m = measure_load('ours = pack_module("clip_vision_loader").load_clip_vision(args[0]); model = ours.model',
                     tmp_path / "base", path, then=_STOCK)
    peak, kept = m["peak_models"], m["kept_models"]
    print(f"\nCLIP vision load ({m['bytes'] / 2**30:.2f} GiB of weights): peak {peak:.2f} models, "
          f"kept {kept:.2f}")
    assert m["same"], "the weights differ from ComfyUI's stock CLIPVisionLoader's"
    assert m["classes"][0] == m["classes"][1] and m["image_size"] == [224, 224]
    assert 0.8 < kept < 1.2
    assert peak < 1.2


def _module():
    return next(m for n, m in sys.modules.items() if n.endswith("nodes.clip_vision_loader"))


def test_a_vision_tower_that_is_not_vit_h_is_refused(comfy_runtime, tmp_path):
    path = tmp_path / "clip_vision_l.safetensors"  # 24 layers: ViT-L/14's depth
    save_file({f"vision_model.encoder.layers.{i}.layer_norm1.weight": torch.ones(8) for i in range(24)},
              str(path))
    with pytest.raises(ValueError, match="not a CLIP ViT-H/14 vision tower.*laion/CLIP-ViT-H-14"):
        _module().load_clip_vision(str(path))


def test_a_vit_h_file_missing_weights_is_refused(comfy_runtime, tmp_path):
    path = tmp_path / "clip_vision_h_part.safetensors"  # the right depth, but most weights absent
    save_file({f"vision_model.encoder.layers.{i}.layer_norm1.weight": torch.ones(1280) for i in range(32)},
              str(path))
    with pytest.raises(ValueError, match="lacks .* weights"):
        _module().load_clip_vision(str(path))


def test_a_vit_g_file_is_refused_before_any_model_is_built(comfy_runtime, tmp_path):
    """A ViT-g/14 vision tower (48 layers) holds ViT-H's 31st layer key too: it is refused by
    name, not loaded into a ViT-H model.
    Mutation caught: the ViT-g key check dropped (a ViT-H model built, then 'lacks ... weights')."""
    path = tmp_path / "clip_vision_g.safetensors"
    save_file({f"vision_model.encoder.layers.{i}.layer_norm1.weight": torch.ones(1664) for i in range(48)},
              str(path))
    with pytest.raises(ValueError, match=r"clip_vision_g\.safetensors is not a CLIP ViT-H/14 vision tower"):
        _module().load_clip_vision(str(path))


def test_a_missing_weights_message_counts_them_and_names_one(comfy_runtime, tmp_path):
    """The message names one missing key (not the whole list) and how many are missing.
    Mutation caught: the whole list of missing keys in the message."""
    given = [f"vision_model.encoder.layers.{i}.layer_norm1.weight" for i in range(32)]
    path = tmp_path / "clip_vision_h_part.safetensors"
    save_file({k: torch.ones(1280) for k in given}, str(path))
    with pytest.raises(ValueError) as err:
        _module().load_clip_vision(str(path))
    found = re.search(r"lacks (\d+) weights \(e\.g\. ([\w.]+)\)\. Expected ", str(err.value))
    assert found, str(err.value)
    assert int(found[1]) > 300 and found[2].startswith("vision_model.") and found[2] not in given
