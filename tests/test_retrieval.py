"""Text -> garment retrieval: exact against brute force, BM25, fusion, filters, pins, images."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from fashion_rag.openclip_encoder import GarmentEncoder
from fashion_rag.retrieval.build import build_index
from fashion_rag.retrieval.catalog import scan_catalog
from fashion_rag.retrieval.index import CaptionIndex, load_index, tokenize
from fashion_rag.retrieval.search import UnknownIdError, parse_ids, retrieve, search
from tools.demo.catalog import write_demo_catalog
from tools.demo.encoder import TINY_ARCH, write_tiny_encoder_weights

QUERIES = ["red striped trousers", "a long dress", "black checked short-sleeve top", "polka-dot skirt"]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    return write_demo_catalog(tmp_path_factory.mktemp("catalog"), seed=0)


@pytest.fixture(scope="module")
def demo_index(tmp_path_factory, catalog):
    """The demo setup: tiny encoder with RANDOM demo weights (marked as such)."""
    weights = write_tiny_encoder_weights(tmp_path_factory.mktemp("w") / "tiny.safetensors", seed=0)
    enc = GarmentEncoder(weights, TINY_ARCH)
    out = tmp_path_factory.mktemp("idx") / "demo"
    build_index(scan_catalog(catalog), out, enc)
    return load_index(out, enc)


@pytest.fixture(scope="module")
def plain_index(tmp_path_factory, catalog):
    """Same architecture, weights *not* marked as demo weights: image similarity is used as is."""
    folder = tmp_path_factory.mktemp("w2")
    marked = write_tiny_encoder_weights(folder / "marked.safetensors", seed=3)
    save_file(load_file(str(marked)), str(folder / "plain.safetensors"))  # same tensors, no mark
    enc = GarmentEncoder(folder / "plain.safetensors", TINY_ARCH)
    assert not enc.is_random_demo
    out = tmp_path_factory.mktemp("idx2") / "plain"
    build_index(scan_catalog(catalog), out, enc)
    return load_index(out, enc)


def _brute_force(index, text: str, allowed=None) -> tuple[list[str], np.ndarray]:
    q = index.encoder.encode_texts([text])[0].astype(np.float64)
    scores = np.asarray(index.embeddings, dtype=np.float64) @ q
    order = [i for i in np.argsort(-scores, kind="stable") if allowed is None or allowed[i]]
    return [index.ids[i] for i in order], scores[order]


@pytest.mark.parametrize("text", QUERIES)
def test_image_mode_equals_numpy_brute_force(plain_index, text):
    hits = search(plain_index, text, k=10, mode="image")
    ids, scores = _brute_force(plain_index, text)
    assert [h.id for h in hits] == ids[:10]
    np.testing.assert_allclose([h.score for h in hits], scores[:10], atol=1e-5)


def test_category_filter_equals_brute_force_on_that_category(plain_index):
    allowed = [c == "dresses" for c in plain_index.categories]
    hits = search(plain_index, "something blue", k=7, mode="image", category="dress")  # free text ok
    ids, _ = _brute_force(plain_index, "something blue", allowed)
    assert [h.id for h in hits] == ids[:7]
    assert {h.category for h in hits} == {"dresses"}


def test_caption_query_ranks_matching_caption_first(demo_index):
    for caption in ("red striped trousers", "green polka-dot long dress", "black striped long-sleeve top"):
        assert caption in demo_index.captions, caption
        top = search(demo_index, caption, k=3, mode="caption")[0]
        assert top.caption == caption, (caption, top)
    # Word forms meet: plural/participle variants still find the striped items.
    hits = search(demo_index, "stripes", k=5, mode="caption")
    assert all("striped" in h.caption for h in hits)


def test_the_default_mode_is_fusion_whatever_the_weights(demo_index, plain_index):
    """No special case for random weights in the library: the demo asks for 'caption' itself."""
    for index in (demo_index, plain_index):
        text = QUERIES[0]
        default = [h.id for h in search(index, text, 6)]
        assert default == [h.id for h in search(index, text, 6, mode="fusion")]
        assert default != [h.id for h in search(index, text, 6, mode="caption")]

def test_fusion_is_reciprocal_rank_fusion(plain_index):
    """score = sum over both rankings of 1 / (60 + rank), k = 60 as Cormack et al. (written out
    here, not the pack's constant). Mutation caught: RRF_K = 1 in search.py (failed: yes)."""
    text = "red striped trousers"
    hits = search(plain_index, text, k=8, mode="fusion")
    image_ids, _ = _brute_force(plain_index, text)
    bm25 = CaptionIndex(plain_index.captions).scores(text)
    caption_order = [plain_index.ids[i] for i in np.argsort(-bm25, kind="stable") if bm25[i] > 0]
    expected = {}
    for ranking in (image_ids, caption_order):
        for rank, item_id in enumerate(ranking, 1):
            expected[item_id] = expected.get(item_id, 0.0) + 1.0 / (60 + rank)
    best = sorted(expected, key=lambda i: (-expected[i], image_ids.index(i)))[:8]
    assert [h.id for h in hits] == best
    np.testing.assert_allclose([h.score for h in hits], [expected[i] for i in best], rtol=1e-6)
    # It differs from both single rankings on this query (else the test would prove little).
    assert [h.id for h in hits] != image_ids[:8] and [h.id for h in hits] != caption_order[:8]


def test_fusion_without_captions_is_the_image_ranking(plain_index, catalog, tmp_path):
    """An index without captions has no second ranking to fuse: the default mode ranks by cosine.
    Mutations caught: resolve_mode keeping 'fusion' for a caption-less index, and without its
    'caption' refusal for one (failed: yes, both)."""
    bare_catalog = scan_catalog(catalog)
    bare_catalog.items = [replace(item, caption="") for item in bare_catalog.items]
    build_index(bare_catalog, tmp_path / "bare", plain_index.encoder)
    bare = load_index(tmp_path / "bare", plain_index.encoder)
    hits = search(bare, QUERIES[0], 6)
    ids, scores = _brute_force(bare, QUERIES[0])
    assert [h.id for h in hits] == ids[:6]
    np.testing.assert_allclose([h.score for h in hits], scores[:6], atol=1e-5)
    with pytest.raises(ValueError, match="has no captions, so mode 'caption' cannot rank anything"):
        search(bare, QUERIES[0], 3, mode="caption")


def test_pins_first_in_order_and_excludes_never(demo_index):
    text = "red striped trousers"
    bm25 = CaptionIndex(demo_index.captions).scores(text)
    ranking = [demo_index.ids[i] for i in np.argsort(-bm25, kind="stable")]
    pins, excluded = ["dress07", "top02"], ranking[:2]
    assert all(i.startswith("bottom") for i in excluded)  # so excluding them changes the answer
    hits = search(demo_index, text, 5, mode="caption", category="lower_body",
                  pin_ids=" dress07, top02 ,", exclude_ids=f"{excluded[0]},{excluded[1]},nonexistent")
    ids = [h.id for h in hits]
    assert ids[:2] == pins  # pinned ignore the category filter, keep their order
    lower = [i for i in ranking if demo_index.categories[demo_index.position(i)] == "lower_body"]
    assert ids[2:] == [i for i in lower if i not in excluded][:3]
    assert not set(excluded) & set(ids)
    many = search(demo_index, "dress", 2, mode="caption", pin_ids=["top01", "top02", "top03"])
    assert [h.id for h in many] == ["top01", "top02", "top03"]  # pins always included


@pytest.mark.parametrize("mode", ["caption", "fusion"])
def test_a_pinned_garment_is_never_returned_twice(demo_index, mode):
    """The best match pinned: it comes first, and the k - 1 others are the next best, no repeat.
    Mutation caught: pins left among the garments that fill the rest (failed: yes, both modes)."""
    text = "red striped trousers"
    best = search(demo_index, text, 5, mode=mode)
    again = search(demo_index, text, 5, mode=mode, pin_ids=best[0].id)
    assert [h.id for h in again] == [h.id for h in best]


def test_a_pin_outside_the_filter_is_ranked_in_both_rankings(plain_index):
    """Fusion under a category filter with a pin of another category: the pin takes its place in
    the image ranking (its cosine) and in the caption ranking (its BM25), each among the filtered
    garments and the pins (docs/method.md, "Retrieval"); its score is their reciprocal-rank sum,
    written out here with k = 60. Mutation caught: the pin left out of the caption ranking (its
    score then 1/(60 + image rank) alone; failed: yes)."""
    text = "red striped trousers"
    bm25 = CaptionIndex(plain_index.captions).scores(text)
    pin = plain_index.ids[int(np.argmax(bm25))]
    assert plain_index.categories[plain_index.position(pin)] == "lower_body"
    allowed = np.array([c == "upper_body" for c in plain_index.categories])
    allowed[plain_index.position(pin)] = True
    image_ids, _ = _brute_force(plain_index, text, allowed)
    caption_ids = [plain_index.ids[i] for i in np.argsort(-bm25, kind="stable") if allowed[i] and bm25[i] > 0]
    assert caption_ids[0] == pin
    hits = search(plain_index, text, 4, mode="fusion", category="upper_body", pin_ids=pin)
    assert hits[0].id == pin and all(h.category == "upper_body" for h in hits[1:])
    assert hits[0].score == pytest.approx(1 / (60 + image_ids.index(pin) + 1) + 1 / (60 + 1), rel=1e-6)


def test_fused_ties_go_to_the_better_image_rank():
    """Two garments whose image and caption ranks are swapped (1 and 2) fuse to the same score:
    the better image rank wins, then catalog order (docs/method.md, "Retrieval"). Here the better
    image rank is the later garment, so catalog order alone would put the other first. Mutation
    caught: ties broken by catalog order only (failed: yes)."""
    from tools.synthetic_index import in_memory_index

    emb = np.array([[0.8, 0.6], [0.9, np.sqrt(0.19)], [0.1, np.sqrt(0.99)]], dtype=np.float32)
    index = in_memory_index(emb)
    index.captions = ["alpha beta", "alpha", "gamma"]  # BM25 for "alpha beta": garment 0, then 1
    index.encoder = type("TextOnly", (), {"encode_texts": lambda self, texts: np.array([[1.0, 0.0]])})()
    hits = search(index, "alpha beta", 3, mode="fusion")
    assert [h.id for h in hits] == ["1", "0", "2"]
    assert hits[0].score == hits[1].score == pytest.approx(1 / 61 + 1 / 62)


def test_bad_requests_say_what_is_wrong(demo_index, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        search(demo_index, "   ", 3)
    with pytest.raises(UnknownIdError, match="'nope'"):
        search(demo_index, "top", 3, pin_ids="nope")
    with pytest.raises(ValueError, match="mode"):
        search(demo_index, "top", 3, mode="psychic")
    with pytest.raises(ValueError, match="no garments of category 'shoes'"):
        search(demo_index, "boots", 3, mode="caption", category="shoes")
    all_dresses = ",".join(i for i in demo_index.ids if i.startswith("dress"))
    with pytest.raises(ValueError, match="excluded"):
        search(demo_index, "dress", 3, mode="caption", category="dresses", exclude_ids=all_dresses)
    no_encoder = load_index(demo_index.index_dir)
    with pytest.raises(ValueError, match="without its text encoder"):
        search(no_encoder, "top", 3, mode="image")
    assert len(search(no_encoder, "top", 3, mode="caption")) == 3


def test_retrieve_returns_fitted_images_in_rank_order(demo_index, catalog):
    """The images are the garment files' own pixels (not fit_garment's, which the build stores).
    Mutation caught: fit_garment mirroring a 384x512 image (failed: yes)."""
    garments = retrieve(demo_index, "green polka-dot long dress", k=3, category="dresses")
    assert garments.images.shape == (3, 512, 384, 3)
    assert len(garments) == 3 and garments.items[0].caption == "green polka-dot long dress"
    for img, item in zip(garments.images, garments.items, strict=True):
        assert item.category == "dresses" and (catalog / item.path).is_file()  # (the catalog-relative path)
        source = Image.open(catalog / item.path)  # drawn at 384x512: fitted, the file's own pixels
        assert source.size == (384, 512)
        expected = np.asarray(source.convert("RGB"), dtype=np.float32) / 255
        assert np.array_equal(img.numpy(), expected)


def test_ivf_index_retrieval_matches_exact_on_small_catalog(tmp_path, catalog, plain_index):
    enc = plain_index.encoder
    build_index(scan_catalog(catalog), tmp_path / "ivf", enc, index_type="ivf")
    ivf = load_index(tmp_path / "ivf", enc)
    for text in QUERIES:
        got = search(ivf, text, 6, mode="image", category="upper_body")
        exact = search(plain_index, text, 6, mode="image", category="upper_body")
        assert [h.id for h in got] == [h.id for h in exact]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in exact], atol=1e-6)


def test_tokenizer_and_id_parsing():
    assert tokenize(["Red STRIPED, stripes; dotted dots dresses dress"])[0] == \
        ["red", "stripe", "stripe", "dot", "dot", "dress", "dress"]
    assert parse_ids("a, b,,a\nc ") == ["a", "b", "c"]
    assert not CaptionIndex(["", " "]).scores("red").any()


def test_the_encoder_reads_only_its_part_and_equals_open_clips_own_load(tiny_weights, tmp_path, monkeypatch):
    """The encoder fills a model made on the meta device from the file (text-first: the text keys
    only, open_clip's whole load never runs) and gives what open_clip's own load of the file
    gives. A file open_clip must convert first (logit_scale stored as [1]), or a failure of the
    reading in parts, takes open_clip's load, with the same embeddings. Mutations caught: the
    causal mask made on the meta device too (torch.device("meta") for the build: no mask to
    run); the text-first read taking the image keys too (no match: open_clip's load runs)."""
    import open_clip
    import torch
    from safetensors import safe_open

    loads = []
    real_create = GarmentEncoder._create
    monkeypatch.setattr(GarmentEncoder, "_create", lambda self, weights: loads.append(weights) or
                        real_create(self, weights))
    texts = ["a red dress", "blue jeans"]
    garments = [Image.new("RGB", (384, 512), colour) for colour in ((200, 40, 40), (30, 60, 200))]
    lean = GarmentEncoder(tiny_weights, TINY_ARCH, image_tower=False)
    got_texts, got_images = lean.encode_texts(texts), lean.encode_images(garments)
    assert loads == [None, None]  # text tower, then image tower: no open_clip load of the whole file

    own = open_clip.create_model(TINY_ARCH, pretrained=str(tiny_weights)).eval()  # config registered above
    with torch.no_grad():
        want_texts = torch.nn.functional.normalize(own.encode_text(open_clip.get_tokenizer(TINY_ARCH)(texts)))
        want_images = torch.nn.functional.normalize(own.encode_image(lean.preprocess_images(garments)))
    np.testing.assert_allclose(got_texts, want_texts.numpy(), atol=1e-6)
    np.testing.assert_allclose(got_images, want_images.numpy(), atol=1e-6)

    converted = tmp_path / "converted.safetensors"
    with safe_open(str(tiny_weights), framework="pt") as f:
        sd, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    sd["logit_scale"] = sd["logit_scale"].reshape(1)
    save_file(sd, str(converted), metadata=meta)
    loads.clear()
    other = GarmentEncoder(converted, TINY_ARCH, image_tower=False)
    np.testing.assert_allclose(other.encode_texts(texts), got_texts, atol=1e-6)
    assert loads == [None, str(converted)]  # the part did not match: open_clip's load took over

    def broken(self, weights):  # reading in parts failing for any reason (say, a new open_clip)
        if weights is None:
            raise RuntimeError("meta build failed")
        return real_create(self, weights)

    monkeypatch.setattr(GarmentEncoder, "_create", broken)
    fallback = GarmentEncoder(tiny_weights, TINY_ARCH, image_tower=False)
    np.testing.assert_allclose(fallback.encode_texts(texts), got_texts, atol=1e-6)


def test_a_text_first_encoder_holds_no_image_tower_until_an_image_is_encoded(tiny_weights):
    """image_tower=False (the index loader node's): text queries build and keep the text tower
    only; the first image encode loads the image tower apart; both give exactly the full
    model's embeddings. Mutation caught: the image tower kept (1.13 GiB fp32 for ViT-L/14)."""
    full = GarmentEncoder(tiny_weights, TINY_ARCH)
    lean = GarmentEncoder(tiny_weights, TINY_ARCH, image_tower=False)
    used = []
    lean.before_use = used.append
    texts = ["a red dress", "blue jeans"]
    assert np.array_equal(lean.encode_texts(texts), full.encode_texts(texts))
    assert lean.module.visual is None and lean._visual is None and used == ["text"]
    text_params = {id(p) for p in lean.module.parameters()}
    assert sum(p.numel() for p in lean.module.parameters()) < sum(p.numel() for p in full.module.parameters())

    garments = [Image.new("RGB", (384, 512), colour) for colour in ((200, 40, 40), (30, 60, 200))]
    assert np.array_equal(lean.encode_images(garments), full.encode_images(garments))
    assert used == ["text", "image"] and lean.module.visual is None
    visual = lean.tower("image")
    assert not text_params & {id(p) for p in visual.parameters()}
    assert lean.tower("image") is visual  # loaded once
    with pytest.raises(ValueError, match="'text' or 'image'"):
        lean.tower("audio")
