"""Fashion-RAG Score: the reference's CLIP-T / CLIP-I on the repainted region, in real ComfyUI.

The regions are checked against the reference's own torchvision calls, the scores against an
independent open_clip computation with the same weights (the demo index's tiny encoder is a
real open_clip CLIP), and the CLIP_VISION route against ComfyUI's own encode_image. Patch sizes
and offsets are the reference's literals (64 and 15 px at 512 px height), not the pack's
constants. CLIP-T is scored for a text whose cosines with these crops are positive (the tiny
random encoder gives negative ones for most texts, clipped to 0, which any region would match).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.ops import masks_to_boxes

from fashion_rag.evaluation import crop as C
from fashion_rag.evaluation.scores import OWN_GARMENT, rank
from fashion_rag.retrieval.garments import Garment, Garments
from tools.demo.catalog import TINY_WEIGHTS_NAME
from tools.demo.person import keypoints_json


def _reference_crop(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """val_metrics.py: masks_to_boxes, the box's pixels, white outside the mask. ([3,h,w], box)"""
    box = masks_to_boxes(mask[None])[0].int()
    x0, y0, x1, y1 = (int(v) for v in box)
    crop = image.movedim(-1, 0)[:, y0 : y1 + 1, x0 : x1 + 1].clone()
    crop[:, mask[y0 : y1 + 1, x0 : x1 + 1] == 0] = 1
    return crop, box


def _reference_clip_t_input(image, mask):
    crop, _ = _reference_crop(image, mask)
    _, h, w = crop.shape
    if h > w:
        h_new, w_new = 224, round(224 * w / h)
        padded = T.Resize((h_new, w_new), antialias=True)(crop)
        left = round((224 - w_new) / 2)
        return T.Pad([left, 0, 224 - w_new - left, 0], fill=1)(padded)
    w_new, h_new = 224, round(224 * h / w)
    padded = T.Resize((h_new, w_new), antialias=True)(crop)
    top = round((224 - h_new) / 2)
    return T.Pad([0, top, 0, 224 - h_new - top], fill=1)(padded)


def _patch_size(height: int) -> int:
    """The reference's 64 px texture patch at 512 px image height, scaled with the height."""
    return max(1, round(64 * height / 512))


def _reference_patch(image, mask, category, size):
    crop, box = _reference_crop(image, mask)
    if category == "lower_body":
        top = round(15 * image.shape[0] / 512)  # the reference: 15 px below the box top at 512 px
        return TF.crop(crop, top, int(box[2] - box[0]) // 2 - size // 2, size, size)
    return T.CenterCrop(size)(crop)


@pytest.mark.parametrize("box,height", [((10, 30, 70, 120), 512), ((5, 3, 40, 200), 256),
                                        ((20, 40, 28, 49), 512), ((2, 2, 90, 20), 128),
                                        ((4, 10, 90, 400), 512), ((6, 20, 80, 290), 310)])
def test_regions_are_the_reference_torchvision_ones(box, height):
    """Crop, CLIP-T square and CLIP-I patch (centre, lower-body, and a box smaller than the patch,
    padded as torchvision pads) equal the reference's torchvision calls; a box taller than 224 px
    is shrunk for CLIP-T (antialiased, as torchvision's Resize), and at 310 px the patch is
    64 * 310 / 512 = 38.75 -> 39 px.
    Mutations caught: PATCH = 32, LOWER_BODY_TOP = 10 in crop.py; the CLIP-T resize without
    antialiasing; the patch size truncated instead of rounded (failed: yes, each)."""
    g = torch.Generator().manual_seed(sum(box))
    image = torch.rand(height, 96, 3, generator=g)
    mask = torch.zeros(height, 96)
    x0, y0, x1, y1 = box
    mask[y0 : y1 + 1, x0 : x1 + 1] = 1.0
    mask[y0 + 2 : y0 + 5, x0 : x0 + 3] = 0.0  # a hole: white in the crop
    ref_crop, ref_box = _reference_crop(image, mask)
    assert C.mask_box(mask) == tuple(int(v) for v in ref_box)
    assert torch.equal(C.garment_crop(image, mask), ref_crop)
    torch.testing.assert_close(C.clip_t_input(image, mask), _reference_clip_t_input(image, mask).clamp(0, 1))
    size = _patch_size(height)
    for category in ("upper_body", "lower_body", "dresses"):
        expected = _reference_patch(image, mask, category, size)
        assert torch.equal(C.clip_i_patch(image, mask, category), expected)
    with pytest.raises(ValueError, match="the mask is empty"):
        C.mask_box(torch.zeros(8, 8))


@pytest.mark.parametrize("category", ["upper_body", "lower_body"])
def test_a_tiny_image_still_gets_a_one_pixel_patch(category):
    """At 4 px image height the patch is 64 * 4 / 512 = 0.5 -> 0 px by round(); the patch is then
    one pixel, torchvision's CenterCrop(1) of the crop (upper body) or its pixel at (0, w // 2)
    (lower body: the offset 15 * 4 / 512 rounds to 0).
    Mutation caught: the patch size's floor of 1 dropped (an empty patch)."""
    image = torch.rand(4, 6, 3, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(4, 6)
    mask[:, 1:5] = 0.75
    crop = image[:, 1:5].movedim(-1, 0)
    expected = T.CenterCrop(1)(crop) if category == "upper_body" else crop[:, 0:1, 1:2]
    patch = C.clip_i_patch(image, mask, category)
    assert patch.shape == (3, 1, 1)
    assert torch.equal(patch, expected)


def test_a_white_garment_gives_a_white_clip_t_square_exactly():
    """A white 38x230 garment shrunk to 37x224 (antialiased) overshoots 1.0 by a float rounding
    (1 + 2e-7); CLIP-T's input stays white and inside [0, 1]: at most exactly 1.
    Mutation caught: the final clamp(0, 1) dropped."""
    image = torch.ones(300, 96, 3)
    mask = torch.zeros(300, 96)
    mask[:230, :38] = 1.0
    square = C.clip_t_input(image, mask)
    torch.testing.assert_close(square, torch.ones(3, 224, 224), rtol=0, atol=1e-6)
    assert float(square.max()) == 1.0


def test_the_preview_keeps_off_grid_pixels_rounded():
    """Away from the drawn box and labels, the preview is the image with each value rounded to its
    nearest 8-bit level (written out here), also for values between levels.
    Mutation caught: truncation instead of rounding in preview.draw_scores (failed: yes)."""
    from fashion_rag.evaluation.preview import draw_scores
    from fashion_rag.evaluation.scores import ImageScore

    g = torch.Generator().manual_seed(5)
    levels = torch.randint(0, 255, (128, 96, 3), generator=g).double()
    image = ((levels + torch.where(torch.rand(128, 96, 3, generator=g) < 0.5, 0.3, 0.7)) / 255).float()
    mask = torch.zeros(128, 96)
    mask[60:100, 20:70] = 1.0
    preview = draw_scores(image, mask, ImageScore(index=0, score=1.0, clip_t=2.0, clip_i=None), 1)
    expected = np.floor(image.double().numpy() * 255 + 0.5) / 255
    untouched = (slice(105, 128), slice(0, 96))  # below the box and the label band
    np.testing.assert_allclose(preview[untouched].numpy(), expected[untouched], atol=1e-7)
    assert not np.allclose(preview[58:62, 18:72].numpy(), expected[58:62, 18:72], atol=1e-3)  # the outline


# -- in ComfyUI ------------------------------------------------------------------------------------

TEXT = "a red striped short-sleeve top"
# CLIP-T's text: with the tiny random encoder its cosines with the three crops are positive
# (about 0.11-0.13) and differ from the whole images' (measured; asserted in the tests below).
CLIP_T_TEXT = "a blue shirt"


@pytest.fixture(scope="module")
def scored(comfy):
    """Three results (the demo person with differently coloured tops, 96x128) scored by the node:
    index = the demo index (tiny OpenCLIP), garments = the top 2 for TEXT, mask from the keypoints."""
    from template_runs import SMALL, probe, saved, small_person

    person = Image.open(small_person(comfy)).convert("RGB")
    files = []
    for i, colour in enumerate([(200, 30, 40), (40, 80, 200), (235, 200, 40)]):
        img = np.asarray(person).copy()
        img[40:80, 25:70] = colour  # the torso
        img[40:80:6, 25:70] = 255  # stripes
        name = f"fr_score_result_{i}.png"
        Image.fromarray(img).save(comfy.base / "input" / name)
        files.append(name)
    prompt = {
        "1": {"class_type": "FashionRAGGarmentIndexLoader",
              "inputs": {"index": "demo", "encoder_weights": TINY_WEIGHTS_NAME}},
        "2": {"class_type": "FashionRAGTextGarmentRetrieve",
              "inputs": {"index": ["1", 0], "text": TEXT, "k": 2, "category": "upper_body", "mode": "caption",
                         "pin_ids": "", "exclude_ids": ""}},
        "3": {"class_type": "LoadImage", "inputs": {"image": files[0]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": files[1]}},
        "5": {"class_type": "LoadImage", "inputs": {"image": files[2]}},
        "6": {"class_type": "ImageBatch", "inputs": {"image1": ["3", 0], "image2": ["4", 0]}},
        "7": {"class_type": "ImageBatch", "inputs": {"image1": ["6", 0], "image2": ["5", 0]}},
        "8": {"class_type": "FashionRAGGarmentMask",
              "inputs": {"image": ["3", 0], "category": "upper_body", "keypoints_json": keypoints_json(),
                         "grow": 4, "feather": 0}},
        "9": {"class_type": "FashionRAGScore",
              "inputs": {"images": ["7", 0], "mask": ["8", 0], "garments": ["2", 1], "index": ["1", 0],
                         "text": CLIP_T_TEXT, "rank_by": "mean", "clip_i_garments": "all",
                         "category": "auto"}},
        "10": {"class_type": "SaveImage",
               "inputs": {"images": ["9", 0], "filename_prefix": "test/score_sorted"}},
    }
    mask_probe = probe(prompt, ["8", 0], "score_mask", mask=True)
    out = comfy.run(prompt)
    mask = torch.from_numpy(saved(comfy, out, mask_probe)[0][..., 0] >= 128).float()
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(comfy.base / "input" / f), np.float32) / 255)
                          for f in files])
    assert mask.shape == (SMALL[1], SMALL[0])
    return comfy, out, images, mask, [g["id"] for g in out["2"]["fashion_rag_garments"]]


def _open_clip_model(comfy):
    """The demo index's tiny encoder built by open_clip itself, not by the pack's GarmentEncoder."""
    import open_clip

    from tools.demo.encoder import TINY_ARCH, TINY_CONFIG

    open_clip.factory._MODEL_CONFIGS[TINY_ARCH] = TINY_CONFIG
    path = comfy.base / "models" / "fashion_rag" / "retrieval" / TINY_WEIGHTS_NAME
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_ARCH, pretrained=str(path))
    return model.eval(), preprocess, open_clip.get_tokenizer(TINY_ARCH)


def _embed_images(model, preprocess, pictures: list[torch.Tensor]) -> torch.Tensor:
    pil = [Image.fromarray((p.clamp(0, 1) * 255).round().byte().movedim(0, -1).numpy()) for p in pictures]
    with torch.no_grad():
        feats = model.encode_image(torch.stack([preprocess(p) for p in pil]))
    return torch.nn.functional.normalize(feats.double(), dim=-1)


def _text_embedding(model, tokenizer, text: str) -> torch.Tensor:
    with torch.no_grad():
        return torch.nn.functional.normalize(model.encode_text(tokenizer([text])).double(), dim=-1)[0]


def test_scores_equal_an_independent_open_clip_computation(scored):
    """CLIP-T (positive here, so the region matters) and CLIP-I equal open_clip on the reference's
    regions. Mutation caught: CLIP-T on the whole image instead of the mask's crop (failed: yes)."""
    comfy, out, images, mask, garment_ids = scored
    model, preprocess, tokenizer = _open_clip_model(comfy)
    text = _text_embedding(model, tokenizer, CLIP_T_TEXT)
    crops = [_reference_clip_t_input(img, mask) for img in images]
    clip_t = torch.clamp(100 * _embed_images(model, preprocess, crops) @ text, min=0)
    # The check can fail: every CLIP-T is positive, and the whole image would score otherwise.
    whole = 100 * _embed_images(model, preprocess, [_reference_clip_t_input(img, torch.ones_like(mask))
                                                    for img in images]) @ text
    assert (clip_t > 5).all() and ((whole - clip_t).abs() > 0.1).all(), (clip_t, whole)

    from fashion_rag.retrieval.index import load_index

    index = load_index(str(comfy.base / "models" / "fashion_rag" / "indexes" / "demo"))
    pictures = [np.asarray(index.garment_image(index.position(g)), np.float32) / 255 for g in garment_ids]
    garments = [torch.from_numpy(p).movedim(-1, 0) for p in pictures]
    size = _patch_size(images.shape[1])
    patches = [_reference_patch(img, mask, "upper_body", size) for img in images]
    cos = _embed_images(model, preprocess, patches) @ _embed_images(model, preprocess, garments).T
    clip_i = 100 * cos.mean(dim=1)

    entries = out["9"]["fashion_rag_scores"]
    by_index = {e["index"]: e for e in entries}
    assert sorted(by_index) == [0, 1, 2]
    for n in range(3):
        assert by_index[n]["clip_t"] == pytest.approx(float(clip_t[n]), abs=1e-3)
        assert by_index[n]["clip_i"] == pytest.approx(float(clip_i[n]), abs=1e-3)
        assert by_index[n]["score"] == pytest.approx((float(clip_t[n]) + float(clip_i[n])) / 2, abs=1e-3)
    scores = [e["score"] for e in entries]
    assert scores == sorted(scores, reverse=True) and [e["rank"] for e in entries] == [1, 2, 3]
    # The sorted images are the inputs in that order (SaveImage of the node's first output).
    from template_runs import saved

    for e, picture in zip(entries, saved(comfy, out, "10"), strict=True):
        assert np.abs(picture.astype(int) - np.round(images[e["index"]].numpy() * 255)).max() <= 1
    assert len(out["9"]["images"]) == 3  # the preview with the scores drawn on


def _off_grid(images: torch.Tensor) -> torch.Tensor:
    """The images moved between 8-bit levels (+0.3 and +0.7 of a level, a checkerboard), as
    decoded or resized images are: rounding to bytes and truncating differ on every 0.7 pixel."""
    h, w = images.shape[1:3]
    checker = (torch.arange(h)[:, None] + torch.arange(w)[None]) % 2
    offset = torch.where(checker == 0, 0.3, 0.7)[None, ..., None]
    return ((images * 255).round().clamp(max=254) + offset) / 255


def _soft(mask: torch.Tensor) -> torch.Tensor:
    """The mask with values between 0 and 1 around its 0.5 threshold: 0.3 inside the box (left
    out, white in the crop), a 0.3 band below it and 0.49 beside it (neither grows the box), and
    one 0.5 pixel above it (which does)."""
    x0, y0, x1, y1 = (int(v) for v in masks_to_boxes(mask[None])[0])
    assert y0 >= 2 and y1 + 4 < mask.shape[0] and x1 + 2 < mask.shape[1]
    soft = mask.clone()
    soft[y0 + 4 : y0 + 10, x0 + 3 : x0 + 9] = 0.3
    soft[y1 + 1 : y1 + 4, x0 : x1 + 1] = 0.3
    soft[y0 : y1 + 1, x1 + 1] = 0.49
    soft[y0 - 2, (x0 + x1) // 2] = 0.5
    return soft


def test_clip_t_below_zero_is_zero(scored):
    """CLIP-T is torchmetrics' CLIPScore: 100 x cosine, clipped at 0. TEXT's cosines with these
    crops are negative for the tiny random encoder (checked with open_clip here), so each CLIP-T
    is 0, while CLIP_T_TEXT's are positive and kept. Mutation caught: no clipping (failed: yes)."""
    from fashion_rag.evaluation.scores import clip_t_scores

    comfy, _, images, mask, _ = scored
    model, preprocess, tokenizer = _open_clip_model(comfy)
    crops = _embed_images(model, preprocess, [_reference_clip_t_input(img, mask) for img in images])
    raw = {t: 100 * crops @ _text_embedding(model, tokenizer, t) for t in (TEXT, CLIP_T_TEXT)}
    assert (raw[TEXT] < -0.1).all() and (raw[CLIP_T_TEXT] > 5).all(), raw
    loader = importlib.import_module(f"{comfy.pack.__name__}.nodes.index_loader")
    index = loader.load_garment_index(
        str(comfy.base / "models" / "fashion_rag" / "indexes" / "demo"),
        str(comfy.base / "models" / "fashion_rag" / "retrieval" / TINY_WEIGHTS_NAME))
    for text in (TEXT, CLIP_T_TEXT):
        np.testing.assert_allclose(clip_t_scores(index.encoder, images, mask, text),
                                   raw[text].clamp(min=0).numpy(), atol=1e-3)


def test_off_grid_pixels_and_a_soft_mask_score_as_the_reference(scored):
    """Result pixels between 8-bit levels and mask values of 0.3 / 0.49 / 0.5: the node's CLIP-T
    and CLIP-I equal open_clip on the reference's regions of the mask binarised at >= 0.5, with
    each value rounded to its nearest byte (written out here).
    Mutations caught: truncation instead of rounding in scores.to_pil; the box taken over every
    nonzero mask pixel (mask > 0 in crop.mask_box) or over pixels > 0.5 only; mask pixels below
    0.5 kept in the crop instead of whitened (failed: yes, each)."""
    comfy, _, images, mask, _ = scored
    node = importlib.import_module(f"{comfy.pack.__name__}.nodes.score").FashionRAGScore
    loader = importlib.import_module(f"{comfy.pack.__name__}.nodes.index_loader")
    index = loader.load_garment_index(
        str(comfy.base / "models" / "fashion_rag" / "indexes" / "demo"),
        str(comfy.base / "models" / "fashion_rag" / "retrieval" / TINY_WEIGHTS_NAME))
    results, soft = _off_grid(images), _soft(mask)
    garment_pictures = _off_grid(images.flip(2)[:2])
    items = tuple(Garment(id=f"g{i}", score=1.0, category="upper_body", path="") for i in range(2))
    garments = Garments(items=items, images=garment_pictures)
    res = node.execute(results, soft, "mean", "all", "auto", garments=garments, index=index, text=CLIP_T_TEXT)

    model, preprocess, tokenizer = _open_clip_model(comfy)
    binary = (soft >= 0.5).float()
    text = _text_embedding(model, tokenizer, CLIP_T_TEXT)
    clip_t = torch.clamp(100 * _embed_images(model, preprocess, [_reference_clip_t_input(r, binary)
                                                                 for r in results]) @ text, min=0)
    size = _patch_size(results.shape[1])
    patches = [_reference_patch(r, binary, "upper_body", size) for r in results]
    pictures = [g.movedim(-1, 0) for g in garment_pictures]
    cos = _embed_images(model, preprocess, patches) @ _embed_images(model, preprocess, pictures).T
    clip_i = 100 * cos.mean(dim=1)
    got = {e["index"]: e for e in res.ui["fashion_rag_scores"]}
    for n in range(3):
        assert got[n]["clip_t"] == pytest.approx(float(clip_t[n]), abs=1e-4)
        assert got[n]["clip_i"] == pytest.approx(float(clip_i[n]), abs=1e-4)
    assert (clip_t > 5).all()  # positive: the region and its pixels matter


def test_outputs_report_and_pairings(scored):
    """The node's outputs directly: FLOAT list, report, preview; one garment per image (its CLIP-I
    against that garment alone); errors. Mutation caught: the one-garment pairing averaging every
    garment instead (failed: yes)."""
    comfy, _, images, mask, _ = scored
    node = importlib.import_module(f"{comfy.pack.__name__}.nodes.score").FashionRAGScore
    loader = importlib.import_module(f"{comfy.pack.__name__}.nodes.index_loader")
    index = loader.load_garment_index(
        str(comfy.base / "models" / "fashion_rag" / "indexes" / "demo"),
        str(comfy.base / "models" / "fashion_rag" / "retrieval" / TINY_WEIGHTS_NAME))
    items = tuple(Garment(id=f"g{i}", score=1.0, category="upper_body", path="") for i in range(3))
    own = Garments(items=items, images=images.clone(), query=TEXT)
    res = node.execute(images, mask, "clip_i", OWN_GARMENT, "auto", garments=own, index=index)
    sorted_images, scores, report, preview = res.result
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    assert "CLIP-I" in report and "garment g" in report and "against its own garment" in report
    assert preview.shape == images.shape and sorted_images.shape == images.shape
    entries = res.ui["fashion_rag_scores"]
    assert [e["garment"] for e in entries] == [f"g{e['index']}" for e in entries]
    # Image n against garment n alone (open_clip on the reference's patches): the diagonal.
    model, preprocess, _ = _open_clip_model(comfy)
    patches = [_reference_patch(img, mask, "upper_body", _patch_size(images.shape[1])) for img in images]
    cos = _embed_images(model, preprocess, patches) @ _embed_images(
        model, preprocess, [img.movedim(-1, 0) for img in images]).T
    for e in entries:
        assert e["clip_i"] == pytest.approx(100 * float(cos[e["index"], e["index"]]), abs=1e-3)
    assert (100 * (cos.diagonal() - cos.mean(dim=1))).abs().min() > 0.1  # the pairing matters

    with pytest.raises(ValueError, match="3 images and 2 garments"):
        node.execute(images, mask, "mean", OWN_GARMENT, "auto",
                     garments=Garments(items=own.items[:2], images=images[:2]), index=index)
    with pytest.raises(ValueError, match="nothing to score: CLIP-T needs a text"):
        node.execute(images, mask, "mean", "all", "auto")
    with pytest.raises(ValueError, match="rank_by 'clip_t', but CLIP-T needs a text"):
        node.execute(images, mask, "clip_t", "all", "auto", garments=Garments(items=own.items, images=images),
                     index=index)
    with pytest.raises(ValueError, match="the mask is 48x64 but the image is 96x128"):
        node.execute(images, mask[:64, :48], "mean", "all", "auto", garments=own, index=index)
    assert [s.index for s in rank(np.array([1.0, 3.0, 3.0]), None, "clip_t")] == [1, 2, 0]


def test_clip_i_through_a_connected_clip_vision(scored, tmp_path):
    """CLIP-I from a CLIP_VISION (ComfyUI's own preprocessing and projected embeddings): the
    node's number is 100 x mean cos of encode_image on the reference's patches and garments."""
    import comfy.clip_vision

    comfy_, _, images, mask, _ = scored
    cfg = tmp_path / "tiny_clip_vision.json"
    cfg.write_text('{"hidden_size": 32, "image_size": 32, "intermediate_size": 64, "num_attention_heads": 2, '
                   '"num_hidden_layers": 2, "patch_size": 8, "projection_dim": 16, "hidden_act": "gelu", '
                   '"layer_norm_eps": 1e-5, "num_channels": 3, "model_type": "clip_vision_model"}')
    clip_vision = comfy.clip_vision.ClipVisionModel(str(cfg))
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in clip_vision.model.state_dict().items()}
    clip_vision.load_sd(sd)
    node = importlib.import_module(f"{comfy_.pack.__name__}.nodes.score").FashionRAGScore
    one = (Garment(id="a", score=1.0, category="lower_body", path=""),)
    garments = Garments(items=one, images=images[:1])
    res = node.execute(images, mask, "clip_i", "all", "auto", garments=garments, clip_vision=clip_vision)

    def embed(pictures):
        eight_bit = [((p.clamp(0, 1) * 255).round() / 255).movedim(0, -1)[None] for p in pictures]
        with torch.no_grad():
            rows = [clip_vision.encode_image(p)["image_embeds"] for p in eight_bit]
        return torch.nn.functional.normalize(torch.cat(rows).double(), dim=-1)

    size = _patch_size(images.shape[1])
    patches = [_reference_patch(img, mask, "lower_body", size) for img in images]  # auto: the garment's
    expected = 100 * (embed(patches) @ embed([images[0].movedim(-1, 0)]).T)[:, 0]
    got = {e["index"]: e["clip_i"] for e in res.ui["fashion_rag_scores"]}
    for n in range(3):
        assert got[n] == pytest.approx(float(expected[n]), abs=1e-3)
    assert all(e["clip_t"] is None for e in res.ui["fashion_rag_scores"])  # no text tower, no index


def _demo_index(comfy):
    loader = importlib.import_module(f"{comfy.pack.__name__}.nodes.index_loader")
    return loader.load_garment_index(
        str(comfy.base / "models" / "fashion_rag" / "indexes" / "demo"),
        str(comfy.base / "models" / "fashion_rag" / "retrieval" / TINY_WEIGHTS_NAME))


@pytest.mark.parametrize("first,patch_category", [("lower_body", "lower_body"), ("skirt", "lower_body"),
                                                  ("hat", "upper_body")])
def test_auto_category_is_the_first_garments(scored, first, patch_category):
    """category auto: CLIP-I's patch is placed for the *first* garment's category (a synonym
    normalised; one that is none falls back to upper body, the centre patch), with a second
    garment of another category after it. The expected numbers are open_clip on the reference's
    patch of that category, averaged over both garments.
    Mutations caught: the last garment's category used; the fallback category lower_body."""
    comfy, _, images, mask, _ = scored
    node = importlib.import_module(f"{comfy.pack.__name__}.nodes.score").FashionRAGScore
    second = "upper_body" if patch_category == "lower_body" else "lower_body"
    items = (Garment(id="a", score=1.0, category=first, path=""),
             Garment(id="b", score=1.0, category=second, path=""))
    pictures = images.flip(2)[:2]
    res = node.execute(images, mask, "clip_i", "all", "auto", garments=Garments(items=items, images=pictures),
                       index=_demo_index(comfy))
    model, preprocess, _ = _open_clip_model(comfy)
    size = _patch_size(images.shape[1])
    patches = [_reference_patch(img, mask, patch_category, size) for img in images]
    other = [_reference_patch(img, mask, second, size) for img in images]
    garments = _embed_images(model, preprocess, [p.movedim(-1, 0) for p in pictures])
    expected = 100 * (_embed_images(model, preprocess, patches) @ garments.T).mean(dim=1)
    wrong = 100 * (_embed_images(model, preprocess, other) @ garments.T).mean(dim=1)
    assert ((expected - wrong).abs() > 0.1).all()  # the patch's place matters
    got = {e["index"]: e["clip_i"] for e in res.ui["fashion_rag_scores"]}
    for n in range(3):
        assert got[n] == pytest.approx(float(expected[n]), abs=1e-3)


def test_empty_text_falls_back_to_the_garments_query(scored):
    """No text: CLIP-T scores the text the garments were retrieved for (their query), here
    CLIP_T_TEXT, as open_clip does; the report names it.
    Mutation caught: the query fallback dropped (no CLIP-T, rank_by clip_t fails)."""
    comfy, _, images, mask, _ = scored
    node = importlib.import_module(f"{comfy.pack.__name__}.nodes.score").FashionRAGScore
    items = tuple(Garment(id=f"g{i}", score=1.0, category="upper_body", path="") for i in range(2))
    garments = Garments(items=items, images=images[:2].clone(), query=f"  {CLIP_T_TEXT} ")
    res = node.execute(images, mask, "clip_t", "all", "auto", garments=garments, index=_demo_index(comfy),
                       text="  ")
    model, preprocess, tokenizer = _open_clip_model(comfy)
    crops = _embed_images(model, preprocess, [_reference_clip_t_input(img, mask) for img in images])
    clip_t = torch.clamp(100 * crops @ _text_embedding(model, tokenizer, CLIP_T_TEXT), min=0)
    got = {e["index"]: e["clip_t"] for e in res.ui["fashion_rag_scores"]}
    for n in range(3):
        assert got[n] == pytest.approx(float(clip_t[n]), abs=1e-3)
    assert f"text '{CLIP_T_TEXT}'" in res.result[2]


def test_preview_outlines_each_images_own_mask(scored):
    """One mask per image: each preview frame outlines its own image's box (the box colour
    (255, 214, 10) at the box's bottom-right corner, from torchvision's masks_to_boxes), not
    another image's.
    Mutation caught: every preview drawn with the first image's mask."""
    comfy, _, images, mask, _ = scored
    node = importlib.import_module(f"{comfy.pack.__name__}.nodes.score").FashionRAGScore
    other = torch.zeros_like(mask)
    other[90:120, 10:50] = 1.0
    masks = torch.stack([mask, other, mask])
    res = node.execute(images, masks, "clip_t", "all", "auto", index=_demo_index(comfy), text=CLIP_T_TEXT)
    preview = res.result[3]
    colour = torch.tensor([255, 214, 10]) / 255
    corners = {}
    for n, m in enumerate(masks):
        x1, y1 = (int(v) for v in masks_to_boxes(m[None])[0][2:])
        corners[n] = (y1, x1)
    assert corners[0] != corners[1]
    for r, e in enumerate(res.ui["fashion_rag_scores"]):
        n = e["index"]
        y, x = corners[n]
        torch.testing.assert_close(preview[r, y, x], colour, atol=1e-6, rtol=0)
        y, x = corners[1 if n != 1 else 0]
        assert not torch.allclose(preview[r, y, x], colour, atol=0.05), (r, n)


def test_a_mask_of_another_size_is_named_width_by_height():
    """The crop's size message gives width x height of both, as the image's size is read.
    Mutation caught: the mask's size given height x width."""
    with pytest.raises(ValueError) as err:
        C.garment_crop(torch.rand(64, 48, 3), torch.ones(64, 40))
    assert str(err.value) == ("the mask is 40x64 but the image is 48x64: score with the mask the image "
                              "was inpainted with")


def test_a_mask_value_of_exactly_one_half_is_repainted():
    """The mask is binarised at 0.5 inclusive (a pixel at exactly 0.5 is repainted), the same way
    for the box and for the crop's white background: a 0.5 pixel at the box's top-left corner
    sets the box and keeps its colour; 0.49 inside the box and 0.4999 outside it count as not
    repainted (white, and no wider box). Box and crop are hand counts on an 11x12 image whose
    values are off the 8-bit grid.
    Mutations caught: the box taken from mask > 0.5 (box (5, 4, 8, 6)); the crop's background
    taken from mask <= 0.5 (the 0.5 corner white)."""
    image = torch.rand(11, 12, 3, generator=torch.Generator().manual_seed(7)) * 0.9 + 0.001
    assert not torch.equal(image * 255, (image * 255).round())
    mask = torch.zeros(11, 12)
    repainted = [(2, 3), (4, 5), (6, 8)]  # (y, x)
    for (y, x), v in zip(repainted, (0.5, 0.75, 1.0), strict=True):
        mask[y, x] = v
    mask[5, 4], mask[7, 10], mask[0, 0] = 0.49, 0.4999, 0.25
    assert C.mask_box(mask) == (3, 2, 8, 6)
    expected = np.ones((5, 6, 3), dtype=np.float32)  # rows 2..6, columns 3..8
    for y, x in repainted:
        expected[y - 2, x - 3] = image[y, x].numpy()
    crop = C.garment_crop(image, mask)
    np.testing.assert_array_equal(crop.movedim(0, -1).numpy(), expected)


def test_an_image_with_an_alpha_channel_is_scored_on_its_colours():
    """An [H, W, 4] image (RGBA) gives a 3-channel crop of its colour channels, and the CLIP-T
    square and CLIP-I patches of its RGB part, as the reference's torchvision calls give them.
    Mutation caught: the crop keeping every channel (a 4-channel crop; CLIP-T's white square
    cannot take it)."""
    image = torch.rand(40, 30, 4, generator=torch.Generator().manual_seed(11))
    mask = torch.zeros(40, 30)
    mask[5:25, 4:20] = 1.0
    rgb = image[..., :3]
    crop = C.garment_crop(image, mask)
    assert torch.equal(crop, rgb[5:25, 4:20].movedim(-1, 0))
    torch.testing.assert_close(C.clip_t_input(image, mask), _reference_clip_t_input(rgb, mask).clamp(0, 1))
    for category in ("upper_body", "lower_body"):
        expected = _reference_patch(rgb, mask, category, _patch_size(40))
        assert torch.equal(C.clip_i_patch(image, mask, category), expected)
