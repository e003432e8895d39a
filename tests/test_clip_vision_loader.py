"""Fashion-RAG CLIP Vision Loader: ComfyUI's own ViT-H/14 CLIP_VISION, never held twice.

Full size (the demo's random ViT-H/14, fp16 file, 632M parameters), in a fresh process: the
load's peak over the RSS before it stays near one fp32 model (the stock loader keeps the whole
mapped file beside the model, +0.5 model), and the weights equal the stock loader's exactly.
"""

from __future__ import annotations

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
