"""Catalog scanning, metadata files, safe image loading and the generated demo catalog."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashion_rag.images import (
    GARMENT_SIZE,
    ImageLoadError,
    fit_garment,
    load_garment,
    load_image,
    to_image_tensor,
)
from fashion_rag.openclip_encoder import GarmentEncoder
from fashion_rag.retrieval.build import build_index
from fashion_rag.retrieval.catalog import scan_catalog
from fashion_rag.retrieval.index import load_index
from fashion_rag.retrieval.search import search
from tools.demo.catalog import PER_CATEGORY, demo_items, write_demo_catalog
from tools.demo.encoder import TINY_ARCH


def _png(path: Path, size=(40, 60), colour=(200, 0, 0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def test_folder_scan_categories_ids_and_captions(tmp_path):
    _png(tmp_path / "Tops" / "a1.png")
    _png(tmp_path / "women" / "dresses" / "d1.jpg")
    _png(tmp_path / "lower_body" / "images" / "p1.png")
    _png(tmp_path / "misc" / "x1.png")
    _png(tmp_path / "loose.png")
    _png(tmp_path / "misc" / "sub" / "a1.png")  # same stem as Tops/a1.png
    (tmp_path / "Tops" / "notes.txt").write_text("not an image")
    (tmp_path / "women" / "dresses" / "d1.txt").write_text("  red   floral\nmidi dress ")
    _png(tmp_path / ".cache" / "hidden.png")

    cat = scan_catalog(tmp_path)
    by_path = {it.path: it for it in cat.items}
    assert sorted(by_path) == ["Tops/a1.png", "loose.png", "lower_body/images/p1.png", "misc/sub/a1.png",
                               "misc/x1.png", "women/dresses/d1.jpg"]
    assert by_path["Tops/a1.png"].category == "upper_body"
    assert by_path["women/dresses/d1.jpg"].category == "dresses"
    assert by_path["lower_body/images/p1.png"].category == "lower_body"
    assert by_path["misc/x1.png"].category == "misc"  # no known word: the folder's own name
    assert by_path["loose.png"].category == ""
    assert by_path["women/dresses/d1.jpg"].caption == "red floral midi dress"
    # Stems are ids unless they collide; then the path keeps them apart.
    assert by_path["women/dresses/d1.jpg"].id == "d1"
    assert {by_path["Tops/a1.png"].id, by_path["misc/sub/a1.png"].id} == {"Tops/a1", "misc/sub/a1"}
    assert cat.skipped == []


def test_metadata_csv_with_problems(tmp_path):
    _png(tmp_path / "img" / "1.png")
    _png(tmp_path / "img" / "2.png")
    _png(tmp_path / "img" / "3.png")
    meta = tmp_path / "shop.csv"
    meta.write_text(
        "SKU,Image,Category,Title\n"
        "s1,img/1.png,Evening Gown,Black silk gown\n"
        "s2,img/2.png,T-Shirt,White tee\n"
        "s3,img/missing.png,dress,gone\n"
        "s1,img/3.png,skirt,duplicate id\n"
        "s4,,skirt,no image\n"
        "s5,img/3.png,accessories,A scarf\n"
    )
    cat = scan_catalog(tmp_path, meta)
    assert [(i.id, i.path, i.category, i.caption) for i in cat.items] == [
        ("s1", "img/1.png", "dresses", "Black silk gown"),
        ("s2", "img/2.png", "upper_body", "White tee"),
        ("s5", "img/3.png", "accessories", "A scarf"),
    ]
    assert [(s.id, s.row, s.reason) for s in cat.skipped] == [
        ("s3", 4, "missing"), ("s1", 5, "duplicate id"), ("s4", 6, "no image path")]
    assert "missing.png" in str(cat.skipped[0]) and "shop.csv line 4" in str(cat.skipped[0])


def test_metadata_jsonl_is_found_in_the_catalog_folder(tmp_path):
    _png(tmp_path / "dresses" / "x.png")
    rows = [{"image": "dresses/x.png", "caption": "green dress"}]  # no id, no category column
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    cat = scan_catalog(tmp_path)
    assert [(i.id, i.category, i.caption) for i in cat.items] == [("x", "dresses", "green dress")]


def test_metadata_errors_are_clear(tmp_path):
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"image": "a.png"}\nnot json\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2"):
        scan_catalog(tmp_path, bad)
    nocol = tmp_path / "m.csv"
    nocol.write_text("id,caption\n1,x\n")
    with pytest.raises(ValueError, match="no image column"):
        scan_catalog(tmp_path, nocol)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_catalog(tmp_path / "nope")


# What str.splitlines() also cuts at (besides "\n" and "\r"): captions may hold any of them.
SEPARATORS = {"U+2028": "\u2028", "U+2029": "\u2029", "U+0085": "\x85", "form feed": "\f",
              "vertical tab": "\v", "U+001C": "\x1c", "U+001D": "\x1d", "U+001E": "\x1e"}
CSV_ONLY = {"newline": "\n", "CRLF": "\r\n"}  # quoted in a CSV field (JSON writes them escaped)
WORDS = ("zebra", "quokka", "ocelot", "narwhal", "tapir", "okapi", "lemur", "gecko", "ibis", "yak")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_metadata_captions_keep_line_separators(tmp_path, tiny_weights, fmt):
    """Issue 24, item 10: rows were split with str.splitlines(), so one JSON Lines caption with
    U+2028 failed the whole build, and CSV captions were cut (a quoted newline was lost)."""
    separators = list({**SEPARATORS, **(CSV_ONLY if fmt == "csv" else {})}.values())
    rows = [{"id": f"g{i}", "image": f"dresses/g{i}.png", "caption": f"plain{sep}{WORDS[i]} dress"}
            for i, sep in enumerate(separators)]
    for i, row in enumerate(rows):
        _png(tmp_path / "catalog" / row["image"], colour=(20 * i, 100, 50))
    meta = tmp_path / "catalog" / f"metadata.{fmt}"
    with open(meta, "w", encoding="utf-8", newline="") as f:
        if fmt == "csv":
            writer = csv.DictWriter(f, ["id", "image", "caption"], quoting=csv.QUOTE_ALL)
            writer.writeheader()
            writer.writerows(rows)
        else:  # the separators raw inside the JSON strings, as an exporter may write them
            f.writelines(f'{{"id": "{r["id"]}", "image": "{r["image"]}", "caption": "{r["caption"]}"}}\n'
                         for r in rows)
    report = build_index(scan_catalog(tmp_path / "catalog"), tmp_path / "idx",
                         GarmentEncoder(tiny_weights, TINY_ARCH), log_fn=lambda m: None)
    assert report.skipped == [] and report.items == len(rows)
    index = load_index(tmp_path / "idx")
    for i, row in enumerate(rows):
        assert index.captions[index.position(row["id"])] == row["caption"], repr(separators[i])
        # BM25 finds the word after the separator, in that garment only, and ranks it first.
        matched = np.flatnonzero(index.caption_scores(WORDS[i])).tolist()
        assert matched == [index.position(row["id"])], repr(separators[i])
        assert search(index, WORDS[i], 1, mode="caption")[0].id == row["id"]


def test_corrupt_and_truncated_images_raise_image_load_error(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 10)
    good = _png(tmp_path / "good.png", size=(300, 300))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:-40])
    for path in (garbage, truncated, tmp_path / "absent.png"):
        with pytest.raises(ImageLoadError, match=path.name):
            load_image(path)
    assert load_image(good).size == (300, 300)


def test_fit_garment_keeps_aspect_and_pads_white():
    wide = Image.new("RGB", (200, 100), (10, 20, 30))  # 2:1 -> 384x192, centred vertically
    out = np.asarray(fit_garment(wide))
    assert out.shape == (512, 384, 3)
    rows = np.flatnonzero((out != 255).any(axis=(1, 2)))
    assert (rows.min(), rows.max()) == (160, 351)
    assert (out[0] == 255).all() and (out[-1] == 255).all()
    assert tuple(out[256, 192]) == (10, 20, 30)
    tall = np.asarray(fit_garment(Image.new("RGB", (100, 400), (0, 0, 0))))  # 1:4 -> 128x512
    cols = np.flatnonzero((tall != 255).any(axis=(0, 2)))
    assert (cols.min(), cols.max()) == (128, 255)


def test_transparent_background_becomes_white(tmp_path):
    rgba = Image.new("RGBA", (384, 512), (0, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (100, 100, 200, 200))
    rgba.save(tmp_path / "cut.png")
    img = np.asarray(load_garment(tmp_path / "cut.png"))
    assert tuple(img[0, 0]) == (255, 255, 255) and tuple(img[150, 150]) == (0, 0, 255)


def test_image_tensor_layout_is_lossless():
    img = Image.fromarray(np.arange(512 * 384 * 3, dtype=np.uint32).reshape(512, 384, 3).astype(np.uint8))
    t = to_image_tensor([img, img])
    assert t.shape == (2, 512, 384, 3) and t.dtype.is_floating_point
    assert np.array_equal((t[1].numpy() * 255).round().astype(np.uint8), np.asarray(img))


def test_demo_catalog_is_deterministic_and_balanced(tmp_path):
    a = write_demo_catalog(tmp_path / "a", seed=0)
    b = write_demo_catalog(tmp_path / "b", seed=0)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    cat = scan_catalog(a)
    counts = {c: sum(i.category == c for i in cat.items) for c in ("upper_body", "lower_body", "dresses")}
    assert counts == {"upper_body": PER_CATEGORY, "lower_body": PER_CATEGORY, "dresses": PER_CATEGORY}
    captions = [i.caption for i in cat.items]
    assert len(set(captions)) == len(captions)  # each garment distinguishable by its words
    assert load_image(a / cat.items[0].path).size == GARMENT_SIZE
    # A rerun changes nothing (same mtimes), and another seed picks other garments.
    mtime = (a / cat.items[0].path).stat().st_mtime_ns
    write_demo_catalog(a, seed=0)
    assert (a / cat.items[0].path).stat().st_mtime_ns == mtime
    assert [r["caption"] for r in demo_items(1)] != [r["caption"] for r in demo_items(0)]


# What each demo caption promises, written out by hand: the colour word's RGB, the silhouette
# word's Dress Code category, and whether a pattern word means a second (lighter) colour.
_CAPTION_RGB = {"red": (200, 30, 40), "blue": (40, 80, 200), "green": (40, 150, 70),
                "yellow": (235, 200, 40), "black": (30, 30, 30), "pink": (240, 130, 180),
                "orange": (240, 130, 30), "purple": (120, 50, 160), "grey": (130, 130, 135),
                "navy": (25, 35, 90)}
_SHAPE_CATEGORY = {"short-sleeve top": "upper_body", "long-sleeve top": "upper_body",
                   "sleeveless top": "upper_body", "trousers": "lower_body", "shorts": "lower_body",
                   "skirt": "lower_body", "mini dress": "dresses", "long dress": "dresses",
                   "short-sleeve dress": "dresses"}


def test_each_demo_garment_looks_as_its_caption_says(demo_source):
    """Each image of the demo catalog (read back as files, metadata.jsonl with json, pixels with
    numpy) is in the folder and category of its silhouette word, is drawn in its colour word's RGB
    over a good part of the canvas, and shows the lighter pattern colour exactly when the caption
    names a pattern; every silhouette of a category appears.

    Mutations caught: a skirt listed among the dresses; every garment drawn plain (the pattern
    not passed on); stripes drawn in the garment's own colour; the garment mask empty (white
    images); two colours' RGB swapped."""
    rows = [json.loads(line) for line in (demo_source / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 36
    shapes_seen = set()
    for row in rows:
        words = row["caption"].split(" ", 1)
        colour, rest = words[0], words[1]
        pattern = next((p for p in ("striped", "polka-dot", "checked") if rest.startswith(p + " ")), None)
        shape = rest[len(pattern) + 1:] if pattern else rest
        shapes_seen.add(shape)
        assert row["category"] == _SHAPE_CATEGORY[shape], row
        assert row["image"].startswith(f"{row['category']}/"), row
        px = np.asarray(Image.open(demo_source / row["image"]).convert("RGB")).reshape(-1, 3)
        rgb = np.array(_CAPTION_RGB[colour])
        light = rgb + (255 - rgb) * 3 // 4
        main = np.all(px == rgb, axis=1).mean()
        lighter = np.all(px == light, axis=1).mean()
        assert main > 0.05, (row, main)
        if pattern:
            assert lighter > 0.02, (row, lighter)
        else:
            assert lighter == 0, (row, lighter)
    assert shapes_seen == set(_SHAPE_CATEGORY)
