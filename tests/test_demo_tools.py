"""Small parts of the demo (tools/demo/): the prompt the demo command sends, the outputs it
collects, its contact sheet, the drawn person's keypoints and the random weights' filler, each
checked against values written out by hand (PIL and numpy for the pixels and statistics)."""

from __future__ import annotations

import copy
import hashlib
import json

import numpy as np
import torch
from PIL import Image

from tools.demo.contact_sheet import contact_sheet
from tools.demo.person import draw_person, keypoints_json
from tools.demo.run import collect_outputs, demo_prompt
from tools.demo.weights import random_state_dict


def _api(weights: str = "fashion_rag_tiny_random.safetensors") -> dict:
    return {
        "3": {"class_type": "FashionRAGGarmentIndexLoader",
              "inputs": {"index": "demo", "encoder_weights": weights}},
        "4": {"class_type": "FashionRAGTextGarmentRetrieve",
              "inputs": {"index": ["3", 0], "text": "a red striped short-sleeve top", "mode": "fusion"}},
        "13": {"class_type": "SaveImage",
               "inputs": {"images": ["4", 0], "filename_prefix": "fashion_rag/garments"}},
    }


def test_the_demo_ranks_by_captions_only_with_the_demo_encoder():
    """Mutations caught: the demo's mode other than "caption"; every index treated as the demo
    encoder's (real weights would lose image retrieval); the --text override ignored; the
    caller's workflow changed in place."""
    api = _api()
    before = copy.deepcopy(api)
    prompt = demo_prompt(api, "a blue skirt")
    assert api == before
    assert prompt["4"]["inputs"] == {"index": ["3", 0], "text": "a blue skirt", "mode": "caption"}
    assert demo_prompt(api)["4"]["inputs"]["text"] == "a red striped short-sleeve top"
    real = _api("open_clip_model.safetensors")
    assert demo_prompt(real)["4"]["inputs"]["mode"] == "fusion"


def test_collected_outputs_are_the_saved_images_by_prefix():
    """Mutations caught: temp previews collected instead of saved outputs; the key the whole
    prefix rather than its last part."""
    entry = {"outputs": {"13": {"images": [
        {"filename": "g_1.png", "type": "output"}, {"filename": "p.png", "type": "temp"},
        {"filename": "g_2.png", "type": "output"}]}}}
    found = collect_outputs(_api(), entry)
    assert found == {"garments": [{"filename": "g_1.png", "type": "output"},
                                  {"filename": "g_2.png", "type": "output"}]}


def test_contact_sheet_rows_sit_one_under_another():
    """Two rows (a red 128x128 and a blue 64x128 image): each scaled to 256 high, placed left to
    right from x=110, rows 8 px apart. Mutations caught: every row pasted at the top; images of
    a row at the same x; the aspect ratio lost."""
    red, blue, green = Image.new("RGB", (128, 128), (255, 0, 0)), Image.new("RGB", (64, 128), (0, 0, 255)), \
        Image.new("RGB", (10, 20), (0, 255, 0))
    sheet = np.asarray(contact_sheet([("a", [red, blue]), ("b", [green])]))
    assert sheet.shape == (8 + 2 * (256 + 8), 110 + (256 + 8) + (128 + 8) + 8, 3)
    assert tuple(sheet[8 + 128, 110 + 128]) == (255, 0, 0)
    assert tuple(sheet[8 + 128, 110 + 264 + 64]) == (0, 0, 255)
    assert tuple(sheet[8 + 264 + 128, 110 + 64]) == (0, 255, 0)
    assert tuple(sheet[8 + 264 + 128, 110 + 200]) == (250, 250, 250)  # green is 128 wide at 256 high


def test_the_demo_persons_keypoints_lie_on_the_person_facing_the_camera():
    """OpenPose JSON: 18 (x, y, 1) points on a 384x512 canvas; the person's right shoulder, hip
    and ankle on the image's left; the drawing (PIL pixels) has its shirt colour between the
    shoulders and hips. Mutations caught: the canvas width the height; left and right shoulders
    swapped; the torso drawn in the background colour."""
    data = json.loads(keypoints_json())
    assert (data["canvas_width"], data["canvas_height"]) == (384, 512)
    flat = data["people"][0]["pose_keypoints_2d"]
    assert len(flat) == 54 and flat[2::3] == [1.0] * 18
    pts = list(zip(flat[0::3], flat[1::3], strict=True))
    for right, left in ((2, 5), (8, 11), (10, 13)):  # COCO-18: shoulders, hips, ankles
        assert pts[right][0] < 192 < pts[left][0], (right, left, pts)
    person = np.asarray(draw_person())
    assert person.shape == (512, 384, 3)
    assert tuple(person[200, 192]) == (120, 130, 140)  # the shirt
    assert tuple(person[10, 10]) == (232, 229, 224)  # the backdrop


def test_random_demo_weights_keep_norms_identity_and_weights_fan_in_scaled():
    """The demo weights' filler (tools/demo/weights.py) on a few named shapes: LayerNorm/GroupNorm
    weights 1 and biases 0, fan-in scaled matrices (std 1/sqrt(fan-in)), embeddings of std 0.02,
    fp16 by default, the same seed the same values. Expected values by hand; the statistics by numpy.

    Mutations caught: norm weights written as zeros; "ln_" layers not taken for norms; the
    fan-in scaling left out; fp32 files."""
    shapes = {"transformer.resblocks.0.ln_1.weight": torch.Size([64]),
              "transformer.resblocks.0.ln_1.bias": torch.Size([64]),
              "encoder.conv_norm_out.weight": torch.Size([32]),
              "transformer.resblocks.0.mlp.c_fc.weight": torch.Size([512, 256]),
              "conv_in.weight": torch.Size([128, 4, 3, 3]),
              "token_embedding.weight": torch.Size([2000, 16])}
    sd = random_state_dict(shapes, seed=3)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(s) for k, s in shapes.items()}
    assert all(v.dtype == torch.float16 for v in sd.values())
    a = {k: v.float().numpy() for k, v in sd.items()}
    assert (a["transformer.resblocks.0.ln_1.weight"] == 1).all()
    assert (a["transformer.resblocks.0.ln_1.bias"] == 0).all()
    assert (a["encoder.conv_norm_out.weight"] == 1).all()
    assert abs(a["transformer.resblocks.0.mlp.c_fc.weight"].std() - 1 / 16) < 0.003  # fan-in 256
    assert abs(a["conv_in.weight"].std() - 1 / 6) < 0.01  # fan-in 4*3*3 = 36
    assert abs(a["token_embedding.weight"].std() - 0.02) < 0.001
    again = random_state_dict(shapes, seed=3)
    assert all(torch.equal(sd[k], again[k]) for k in shapes)


def test_the_demo_weights_cache_names_carry_the_generator_codes_hash(tmp_path):
    """A cached demo weights file is named by the sha256 of the code that generated it, so a
    changed generator writes its files anew instead of every test reading the old ones; the
    older files of the same model are deleted, nothing else. Expected digests by hashlib.

    Mutations caught: the tag over the file names, not their bytes; the files' boundaries lost
    (b"ab" + b"c" and b"a" + b"bc" one tag); a user's own file named like a model deleted."""
    from tools.demo.weights import _remove_older, source_tag

    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_bytes(b"ab")
    b.write_bytes(b"c")
    first = source_tag([a, b])
    lengths_and_bytes = b"\0" * 7 + b"\x02" + b"ab" + b"\0" * 7 + b"\x01" + b"c"  # 8-byte big-endian lengths
    assert first == hashlib.sha256(lengths_and_bytes).hexdigest()[:12]
    a.write_bytes(b"a")
    b.write_bytes(b"bc")
    assert source_tag([a, b]) != first
    a.write_bytes(b"ab")
    b.write_bytes(b"c")
    assert source_tag([a, b]) == first

    cache = tmp_path / "cache"
    cache.mkdir()
    keep = ["0123456789ab-unet.pth", "mine-unet.pth", "v1-other.pth", "0123456789abc-unet.pth"]
    for name in [*keep, "v3-unet.pth", "fedcba987654-unet.pth"]:
        (cache / name).write_bytes(b"x")
    _remove_older(cache, "0123456789ab-unet.pth")
    assert sorted(p.name for p in cache.iterdir()) == sorted(keep)
