"""The retrieval step of `fashion-rag evaluate` with the pack's own index (rankings.py's
index_rankings, write_gallery_table) and the relevant garments of each query (relevant_garments),
on a hand-made gallery small enough to count by hand: the tiny random encoder, caption
retrieval (BM25: the garment sharing more of the query's words first)."""

from __future__ import annotations

import csv

from PIL import Image

from fashion_rag.evaluation.pairs import GalleryGarment
from fashion_rag.evaluation.rankings import index_rankings, relevant_garments
from tools.demo.encoder import TINY_ARCH


def test_relevant_garments_are_those_whose_caption_gives_the_query(tmp_path):
    """A garment is relevant to the query its own caption gives with n noun chunks, within its
    category; a garment whose caption has fewer chunks than n gives no n-chunk query and is
    relevant to none (not to its caption).
    Mutation caught: a garment without an n-chunk query taken as relevant to its caption."""
    image = tmp_path / "g.png"
    gallery = {
        "a": GalleryGarment("a", "dresses", image, "blue, silk, wrap dress",
                            {1: "blue", 2: "blue, silk", 3: "blue, silk, wrap dress"}),
        "b": GalleryGarment("b", "dresses", image, "blue, maxi dress", {1: "blue", 2: "blue, maxi dress"}),
        "c": GalleryGarment("c", "upper_body", image, "blue, silk, shirt",
                            {1: "blue", 2: "blue, silk", 3: "blue, silk, shirt"}),
    }
    assert relevant_garments(gallery, 1) == {("dresses", "blue"): {"a", "b"}, ("upper_body", "blue"): {"c"}}
    assert relevant_garments(gallery, 3) == {("dresses", "blue, silk, wrap dress"): {"a"},
                                             ("upper_body", "blue, silk, shirt"): {"c"}}


def test_index_rankings_rank_within_the_category_and_name_indexed_garments_only(tmp_path, tiny_weights):
    """index_rankings writes the gallery as the index's metadata table (image paths relative to
    the root, the caption whole, commas and all), ranks each query among its own category's
    garments only, and gives images only for the garments the index holds (a file that is not a
    picture is left out, and said so).
    Mutations caught: the search not limited to the query's category (the red skirt among the
    tops); `images` naming a garment the index left out; the table's caption cut at its first
    comma."""
    root = tmp_path / "DressCode"
    spec = [("t1", "upper_body", "red cotton top, short sleeves", (200, 30, 30)),
            ("t2", "upper_body", "blue wool top", (30, 30, 200)),
            ("s1", "lower_body", "red pleated skirt", (190, 40, 40))]
    gallery = {}
    for gid, category, caption, colour in spec:
        path = root / category / "images" / f"{gid}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 32), colour).save(path)
        gallery[gid] = GalleryGarment(gid, category, path, caption)
    broken = root / "upper_body" / "images" / "t3.png"
    broken.write_bytes(b"not a picture")
    gallery["t3"] = GalleryGarment("t3", "upper_body", broken, "red linen top")
    said: list[str] = []
    index_dir = tmp_path / "indexes" / "shop"
    got = index_rankings(gallery, {("upper_body", "red top"), ("lower_body", "red skirt")}, root, index_dir,
                         tiny_weights, TINY_ARCH, "caption", said.append)
    assert got.ranked == {("upper_body", "red top"): ["t1", "t2"], ("lower_body", "red skirt"): ["s1"]}
    assert got.images == {"t1": root / "upper_body" / "images" / "t1.png",
                          "t2": root / "upper_body" / "images" / "t2.png",
                          "s1": root / "lower_body" / "images" / "s1.png"}
    assert any(m.startswith("index: garment left out: 't3'") for m in said), said
    with open(tmp_path / "indexes" / "shop_garments.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows == [["id", "image", "category", "caption"],
                    ["t1", "upper_body/images/t1.png", "upper_body", "red cotton top, short sleeves"],
                    ["t2", "upper_body/images/t2.png", "upper_body", "blue wool top"],
                    ["s1", "lower_body/images/s1.png", "lower_body", "red pleated skirt"],
                    ["t3", "upper_body/images/t3.png", "upper_body", "red linen top"]]
