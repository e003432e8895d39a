"""Queries by picture (issue 22): a garment photo or crop ranks the catalog by image-image cosine,
and with a text by (1 - w) text cosine + w image cosine. Expected rankings are numpy brute
forces over the stored embeddings; the picture is fitted with PIL's own ImageOps.pad."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_runs import run_cli
from PIL import Image, ImageOps

from fashion_rag.openclip_encoder import GarmentEncoder
from fashion_rag.retrieval.build import build_index
from fashion_rag.retrieval.catalog import scan_catalog
from fashion_rag.retrieval.index import load_index
from fashion_rag.retrieval.search import retrieve, search
from tools.demo.encoder import TINY_ARCH, write_tiny_encoder_weights

K = 8


@pytest.fixture(scope="module")
def shop(tmp_path_factory, demo_source):
    root = tmp_path_factory.mktemp("image_queries")
    weights = write_tiny_encoder_weights(root / "tiny.safetensors")
    encoder = GarmentEncoder(weights, TINY_ARCH)
    build_index(scan_catalog(demo_source), root / "shop", encoder)
    # A photo-like query: a crop of one garment, at another size and aspect than the catalog's.
    garment = Image.open(sorted(demo_source.rglob("*.png"))[5]).convert("RGB")
    picture = garment.crop((40, 60, 330, 420)).resize((200, 250))
    picture.save(root / "query.jpg", quality=95)
    picture = Image.open(root / "query.jpg").convert("RGB")
    return root, weights, load_index(root / "shop", encoder), picture


def _brute(index, query: np.ndarray, k: int = K) -> tuple[list[str], np.ndarray]:
    scores = np.asarray(index.embeddings, dtype=np.float64) @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return [index.ids[i] for i in order], scores[order]


def _picture_embedding(index, picture: Image.Image) -> np.ndarray:
    fitted = ImageOps.pad(picture, (384, 512), Image.Resampling.BICUBIC, color=(255, 255, 255))
    return index.encoder.encode_images([fitted])[0].astype(np.float64)


def _ids_scores(hits) -> tuple[list[str], list[float]]:
    return [h.id for h in hits], [h.score for h in hits]


def test_image_query_equals_a_brute_force_over_the_stored_embeddings(shop):
    """Mutation caught: the picture encoded unfitted (open_clip's centre crop of the raw photo)."""
    _, _, index, picture = shop
    ids, scores = _ids_scores(search(index, None, K, image=picture))
    want_ids, want_scores = _brute(index, _picture_embedding(index, picture))
    assert ids == want_ids
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    # A stored garment finds itself first, at cosine 1.
    hit = search(index, "", 1, image=index.garment_image(11))[0]
    assert hit.id == index.ids[11] and hit.score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("text", ["red striped trousers", "a long black dress"])
def test_text_and_image_weights(shop, text):
    """Weights 0 and 1 give the single-modality rankings; 0.3 the brute force of the weighted
    sum of cosines. Mutation caught: the weight applied the other way round (w on the text)."""
    _, _, index, picture = shop
    text_only = _ids_scores(search(index, text, K, mode="image"))
    image_only = _ids_scores(search(index, None, K, image=picture))
    assert _ids_scores(search(index, text, K, mode="image", image=picture, image_weight=0.0)) == text_only
    assert _ids_scores(search(index, text, K, mode="image", image=picture, image_weight=1.0)) == image_only
    assert text_only[0] != image_only[0]  # the two modalities really rank differently here
    t = index.encoder.encode_texts([text])[0].astype(np.float64)
    want_ids, want_scores = _brute(index, 0.7 * t + 0.3 * _picture_embedding(index, picture))
    ids, scores = _ids_scores(search(index, text, K, mode="image", image=picture, image_weight=0.3))
    assert ids == want_ids
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    # Fusion: the caption ranking of the text fused with the picture's embedding ranking.
    fused = search(index, text, K, mode="fusion", image=picture, image_weight=0.0)
    assert _ids_scores(fused) == _ids_scores(search(index, text, K, mode="fusion"))


def test_a_picture_alone_retrieves_garments_for_the_empty_query_text(shop):
    """The GARMENTS of a picture-only query (text None) carry "" as their query text, which score
    nodes compare with, never None. Mutation caught: `query=text` for `query=text or ""` in
    retrieve()."""
    _, _, index, picture = shop
    garments = retrieve(index, None, 2, image=picture)
    assert garments.query == "" and len(garments) == 2
    assert retrieve(index, "a long black dress", 1, mode="caption").query == "a long black dress"


def test_bad_image_requests_are_refused(shop):
    _, _, index, picture = shop
    with pytest.raises(ValueError, match="image_weight must be a number from 0 to 1"):
        search(index, "a top", 3, image=picture, image_weight=1.5)
    with pytest.raises(ValueError, match="Mode 'caption' ranks the captions only"):
        search(index, "a top", 3, mode="caption", image=picture)
    with pytest.raises(ValueError, match="there is no text"):
        search(index, None, 3, mode="caption", image=picture)


def test_cli_query_by_image(shop):
    """Mutation caught: --image-weight not passed on (the default 0.5 used)."""
    root, weights, index, picture = shop
    base = ["index", "query", str(root / "shop"), "--weights", str(weights), "--json", "-k", str(K),
            "--mode", "image", "--image", str(root / "query.jpg")]
    alone, mixed, nothing, missing = run_cli([
        base, base[:3] + ["a long black dress"] + base[3:] + ["--image-weight", "0.3"],
        base[:8], base[:-1] + [str(root / "no.jpg")]], deadline=120)
    assert alone["rc"] == 0, alone["stderr"]
    want = search(index, None, K, image=picture)
    assert [h["id"] for h in json.loads(alone["stdout"])] == [h.id for h in want]
    assert mixed["rc"] == 0, mixed["stderr"]
    want = search(index, "a long black dress", K, mode="image", image=picture, image_weight=0.3)
    assert [h["id"] for h in json.loads(mixed["stdout"])] == [h.id for h in want]
    assert nothing["rc"] == 2 and "give a text, an --image, or both" in nothing["stderr"]
    assert missing["rc"] == 2 and "no.jpg" in missing["stderr"] and "Traceback" not in missing["stderr"]
