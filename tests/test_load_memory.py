"""Each model of the example graph is held once: no file copy kept beside it, none made on the way.

- The UNet loader copies a memory-mapped `.pth` into ComfyUI's model block by block, giving the
  file's pages back as it goes (fashion_rag.weights.load_in_parts): measured in a fresh process
  at a mid size (160M parameters, 0.6 GiB fp32), the load's peak stays near one model, and what
  stays after is one model. Before, the mapped file and the model were both whole in memory at
  the end of load_state_dict: a peak of two models.
- Renaming diffusers keys to ComfyUI's copies no tensor.
- Loaded weights have memory of their own: rewriting the file in place afterwards changes nothing
  (memory-mapped weights assigned to a model would change with it, or crash on a truncation).
- Giving pages back never touches data: only pages of the file's own mapping, which read back
  unchanged.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import torch
from load_probe import measure_load
from safetensors.torch import save_file
from test_inpaint_parity import load_tiny_model, pack_module, tiny_unet

from fashion_rag.inpaint.unet_layout import UNetLayout, diffusers_to_ldm
from fashion_rag.inversion.adapter import AdapterConfig, expected_shapes, load_adapter
from fashion_rag.weights import FilePages, load_in_parts, read_state_dict

TESTS = Path(__file__).resolve().parent
# 160M parameters: big enough that a second copy (0.64 GB) stands far above allocator noise.
MID_LAYOUT = dict(block_out_channels=(320, 640), attention_levels=(True, True))

# Writes a random UNet of `layout` (diffusers keys, fp32) as the reference's `.pth` would be.
_WRITE = r"""
import json, sys
import torch
from diffusers import UNet2DConditionModel
sys.path.insert(0, sys.argv[3])
from fashion_rag.inpaint.unet_layout import UNetLayout

layout = UNetLayout(**json.loads(sys.argv[2]))
with torch.device("meta"):
    shapes = {k: v.shape for k, v in UNet2DConditionModel(**layout.diffusers_config()).state_dict().items()}
g = torch.Generator().manual_seed(0)
torch.save({k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}, sys.argv[1])
"""

def test_unet_load_peak_and_kept_memory_are_one_model(tmp_path):
    """The loader's peak over the RSS before it < 1.5 models (was ~2: mapped file + model) and
    what it keeps < 1.25 models (no state dict left behind). Mutation caught: mmap=True back in
    read_state_dict, or the whole dict to load_state_dict (peak ~2.0 models)."""
    path = str(tmp_path / "mid_unet.pth")
    out = subprocess.run([sys.executable, "-c", _WRITE, path, json.dumps(MID_LAYOUT), str(TESTS.parent)],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    m = measure_load('model = pack_module("unet_loader").load_unet(args[0], "fp32").model.diffusion_model',
                     tmp_path / "base", path)
    peak, kept = m["peak_models"], m["kept_models"]
    print(f"\nUNet load ({m['bytes'] / 2**30:.2f} GiB of weights): peak {peak:.2f} models, kept {kept:.2f}")
    assert 0.8 < kept < 1.25
    assert peak < 1.5


# Writes a random OpenCLIP ViT-B-16 (text tower 63M parameters, image tower 86M) as open_clip's
# `.bin` checkpoints are: a plain torch state dict.
_WRITE_ENCODER = r"""
import sys, torch, open_clip
torch.manual_seed(0)
torch.save(open_clip.create_model("ViT-B-16", pretrained=None).state_dict(), sys.argv[1])
"""


def test_text_first_encoder_load_holds_the_text_tower_once(tmp_path):
    """The index loader's encoder (text-first) reads only the text tower from the mapped file:
    its load peaks under 1.6 text towers (1.41 measured) and keeps ~1. Before, open_clip built the whole model
    and read the whole file beside it: here ~4.7 text towers at the peak (3.19 GiB for the
    paper's ViT-L-14). Mutation caught: the whole model filled, or the file read whole."""
    path = str(tmp_path / "open_clip_pytorch_model.bin")
    out = subprocess.run([sys.executable, "-c", _WRITE_ENCODER, path], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    m = measure_load("model = GarmentEncoder(args[0], 'ViT-B-16', image_tower=False).tower('text')",
                     tmp_path / "base", path, setup="import open_clip\n"
                     "from fashion_rag.openclip_encoder import GarmentEncoder", comfy=False)
    peak, kept = m["peak_models"], m["kept_models"]
    print(f"\nencoder text tower ({m['bytes'] / 2**30:.2f} GiB): peak {peak:.2f}, kept {kept:.2f} towers")
    assert 0.8 < kept < 1.25
    assert peak < 1.6  # a block is copied beside its file pages: the token embedding is 40% of it


def test_renaming_diffusers_keys_copies_no_tensor(comfy_runtime):
    """Both renamings (the loader's, by ComfyUI's key map, and the library's) give the same tensor
    objects: a conversion that copied would hold the UNet twice while loading."""
    layout = UNetLayout(block_out_channels=(64, 128), layers_per_block=1, attention_levels=(True, False),
                        cross_attention_dim=64)
    sd = tiny_unet(layout).state_dict()
    loader = pack_module(comfy_runtime, "nodes.unet_loader")
    for renamed in (loader.to_ldm(sd, layout), diffusers_to_ldm(sd, layout)):
        assert len(renamed) == len(sd)
        originals = {id(v) for v in sd.values()}
        assert all(id(v) in originals for v in renamed.values())


def _overwrite_in_place(path: Path, offset: int = 4096) -> None:
    """Zero every byte after `offset`, in the same file (same inode), as `cp` over it would."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * (size - offset))


def test_adapter_weights_do_not_depend_on_its_file(tmp_path):
    """Mutation caught: mmap=True in read_state_dict (the adapter's fp32 weights then are the
    file's mapped pages, and turn to zeros with it)."""
    cfg = AdapterConfig(vision_width=32, heads=16, mlp_dim=64, hidden_dim=48, text_width=64)
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "adapter.pth"
    torch.save({k: torch.randn(s, generator=g) for k, s in expected_shapes(cfg).items()}, path)
    adapter = load_adapter(path)
    before = {k: v.clone() for k, v in adapter.state_dict().items()}
    _overwrite_in_place(path)
    after = adapter.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_unet_weights_do_not_depend_on_its_file(comfy_runtime, tmp_path):
    unet = tiny_unet()
    model = load_tiny_model(comfy_runtime, unet, tmp_path)
    path = tmp_path / "unet_tiny.pth"
    before = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    _overwrite_in_place(path)
    after = model.model.diffusion_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    pack_module(comfy_runtime, "nodes.unet_loader")._UNETS.clear()


def test_load_in_parts_equals_load_state_dict_and_frees_the_source():
    """Same weights as one load_state_dict, the dict emptied, and every source tensor freed once
    the caller lets go (nothing keeps the file's tensors); missing/unexpected as load_state_dict."""
    layout = UNetLayout(block_out_channels=(64, 128), layers_per_block=1, attention_levels=(True, False),
                        cross_attention_dim=64)
    source = tiny_unet(layout, seed=3)
    sd = {k: v.clone() for k, v in source.state_dict().items()}
    refs = [weakref.ref(v) for v in sd.values()]
    target = tiny_unet(layout, seed=4)
    sd["extra.weight"] = torch.zeros(1)
    del sd["conv_in.bias"]
    missing, unexpected = load_in_parts(target, sd)
    assert sd == {}
    assert missing == ["conv_in.bias"] and unexpected == ["extra.weight"]
    gc.collect()
    assert all(r() is None for r in refs)
    for k, v in target.state_dict().items():
        if k != "conv_in.bias":
            assert torch.equal(v, source.state_dict()[k]), k


class _ProjectionIfGiven(torch.nn.Module):
    """Like ComfyUI's CLIPVisionModelProjection (0.33): drops its projection when the dict it is
    given lacks the projection's weight, so it must see the whole dict."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))
        self.projection = torch.nn.Linear(4, 2, bias=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if f"{prefix}projection.weight" not in state_dict:
            self.projection = torch.nn.Identity()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def test_load_in_parts_shows_every_module_the_whole_dict(tmp_path):
    """A module whose loading depends on what else the dict holds loads as with one
    load_state_dict. Mutation caught: one load_state_dict per block (the projection became an
    Identity: ComfyUI 0.33's CLIP vision tower lost its visual_projection)."""
    source = _ProjectionIfGiven()
    path = tmp_path / "projection.safetensors"
    save_file(source.state_dict(), str(path))
    target = _ProjectionIfGiven()
    missing, unexpected = load_in_parts(target, read_state_dict(path), source=path)
    assert (missing, unexpected) == ([], [])
    assert isinstance(target.projection, torch.nn.Linear)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())


def _rss_file() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssFile in /proc/self/status")


def test_file_pages_are_given_back_and_read_back_unchanged(tmp_path):
    """FilePages drops a mapped file's resident pages (RSS falls by the file's size) and the
    tensors read the same values afterwards; anonymous tensors are left alone."""
    path = tmp_path / "w.pth"
    g = torch.Generator().manual_seed(0)
    torch.save({f"t{i}": torch.randn(1024, 1024, generator=g) for i in range(64)}, path)  # 256 MiB
    sd = read_state_dict(path)
    copies = {k: v.clone() for k, v in sd.items()}  # touches every page of the mapping
    touched = _rss_file()
    pages = FilePages(path)
    assert pages.ranges, "the file is memory-mapped"
    pages.release(sd.values())
    pages.release(copies.values())  # not from the file: must be left alone
    released = touched - _rss_file()
    print(f"\ngiven back {released / 2**20:.0f} MiB of a 256 MiB file")
    assert released > 200 * 2**20
    assert all(torch.equal(sd[k], copies[k]) for k in sd)
