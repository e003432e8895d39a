"""Mutation pass over text -> garment search (search.py): request bounds, mode names, category
names, pins and the fusion's two rankings, each at its boundary. Expected values are literals or
numpy brute forces over the given embeddings and bm25s used directly, never the pack's own
constants or rankings."""

from __future__ import annotations

import bm25s
import numpy as np
import pytest
from PIL import Image

from fashion_rag.retrieval.search import request_problem, search
from tools.synthetic_index import in_memory_index, unit_rows


class _Encoder:
    """Fixed query embeddings for a text and for a picture (what the search tests need)."""

    def __init__(self, text_query, image_query=None) -> None:
        self.text = np.asarray(text_query, dtype=np.float32)
        self.image = None if image_query is None else np.asarray(image_query, dtype=np.float32)

    def encode_texts(self, texts):
        return self.text[None, :]

    def encode_images(self, images):
        return self.image[None, :]


def _cosine_order(x: np.ndarray, q: np.ndarray) -> list[int]:
    return [int(i) for i in np.argsort(-(x.astype(np.float64) @ q.astype(np.float64)), kind="stable")]


@pytest.mark.parametrize(("k", "ok"), [(0, False), (1, True), (20, True), (21, False), (True, False),
                                       (3.0, False)])
def test_k_is_a_whole_number_from_1_to_20(k, ok):
    """Mutations caught: k = 0 allowed (`0 <= k`), MAX_K = 21, and True taken for k = 1 (the bool
    check dropped)."""
    problem = request_problem("a red top", k)
    if ok:
        assert problem is None
    else:
        assert problem == f"k must be a whole number from 1 to 20 (got '{k}')."


def test_each_request_bound_is_inclusive():
    """Exactly at each limit is allowed, one more is refused: 2,000 text characters, 20 pins,
    an id of 256 characters, 1,000 ids, a 100,000-character id list. Mutations caught: each `>`
    written `>=` in search.py (text, pins, id length, id count, list length)."""
    assert request_problem("x" * 2000, 3) is None
    assert "2,001 characters long; at most 2,000" in request_problem("x" * 2001, 3)
    pins = ",".join(f"p{i}" for i in range(20))
    assert request_problem("top", 20, pin_ids=pins) is None
    assert request_problem("top", 20, pin_ids=pins + ",p20").startswith("pin_ids lists 21 garments")
    assert request_problem("top", 3, exclude_ids="a" * 256) is None
    assert "an id of 257 characters" in request_problem("top", 3, exclude_ids="a" * 257)
    thousand = ",".join(f"{i:04d}" for i in range(1000))  # 4,999 characters
    assert request_problem("top", 3, exclude_ids=thousand) is None
    assert request_problem("top", 3, exclude_ids=thousand + ",1000") == \
        "exclude_ids lists more than 1000 ids: list fewer."
    long_list = "a" * 200 + "," * (100_000 - 200)  # one id, blanks between the commas
    assert len(long_list) == 100_000 and request_problem("top", 3, exclude_ids=long_list) is None
    assert request_problem("top", 3, exclude_ids=long_list + ",") == (
        "exclude_ids is 100,001 characters long, more than the 100,000 allowed: list fewer ids.")


def _captioned(n: int = 6, seed: int = 1):
    x = unit_rows(n, 4, seed)
    index = in_memory_index(x, ["upper_body", "lower_body"] * (n // 2))
    index.captions = ["red top", "red skirt", "blue top", "green skirt", "red striped top", "coat"][:n]
    index.encoder = _Encoder(x[0], x[3])
    return index, x


def test_mode_auto_is_fusion_and_the_category_any_is_no_filter():
    """Mutations caught: 'auto' refused as a mode (left out of the mode names that mean fusion),
    and the category 'any' taken for a category name (no garment of it) instead of no filter."""
    index, _ = _captioned()
    fusion = [(h.id, h.score) for h in search(index, "red top", 4, mode="fusion")]
    assert [(h.id, h.score) for h in search(index, "red top", 4, mode="auto")] == fusion
    assert [(h.id, h.score) for h in search(index, "red top", 4, category="any")] == fusion


@pytest.mark.parametrize("name", ["Upper Body", "tops", " T-Shirt "])
def test_a_category_is_searched_by_its_canonical_name(name):
    """A category written as a shop writes it names Dress Code's category. Mutation caught: the
    category compared as given (`{category}` for `{canonical_or_text(category)}`: no garment)."""
    index, x = _captioned()
    hits = search(index, "red top", 3, mode="image", category=name)
    upper = [i for i in _cosine_order(x, x[0]) if i % 2 == 0]
    assert [h.id for h in hits] == [str(i) for i in upper[:3]]


def test_a_pinned_best_match_is_not_returned_twice_in_image_mode():
    """Mode 'image': the pinned garment first, the k - 1 others the next best by cosine. Mutation
    caught: only the excluded ids kept out of the vector search (not the pins), so the pin came
    back a second time."""
    index, x = _captioned()
    order = _cosine_order(x, x[0])
    hits = search(index, "red top", 3, mode="image", pin_ids=str(order[0]))
    assert [h.id for h in hits] == [str(i) for i in order[:3]]


def test_image_weight_0_and_1_are_allowed_just_beyond_is_not():
    """The weight's bounds are inclusive. Mutations caught: 0 refused (`0.0 < image_weight`)."""
    index, x = _captioned()
    picture = Image.new("RGB", (8, 8), (255, 0, 0))
    by_text = [str(i) for i in _cosine_order(x, x[0])[:3]]
    by_picture = [str(i) for i in _cosine_order(x, x[3])[:3]]
    for weight, want in ((0.0, by_text), (1, by_picture)):
        hits = search(index, "red top", 3, mode="image", image=picture, image_weight=weight)
        assert [h.id for h in hits] == want
    for weight in (-0.01, 1.01):
        message = f"image_weight must be a number from 0 to 1 \\(got '{weight}'\\)"
        with pytest.raises(ValueError, match=message):
            search(index, "red top", 3, image=picture, image_weight=weight)


def test_a_picture_alone_on_a_captioned_index_ranks_by_cosine():
    """No text (""): the picture is ranked by image-image cosine even though the index has
    captions and the mode is fusion, so the scores are the cosines (not 1/(60 + rank)). Mutation
    caught: resolve_mode keeping 'fusion' for a query without text."""
    index, x = _captioned()
    picture = Image.new("RGB", (8, 8), (255, 0, 0))
    hits = search(index, "", 4, image=picture)
    order = _cosine_order(x, x[3])[:4]
    assert [h.id for h in hits] == [str(i) for i in order]
    assert [h.score for h in hits] == pytest.approx([float(x[i] @ x[3]) for i in order], abs=1e-6)


def test_equal_caption_scores_keep_catalog_order_beyond_a_small_sort():
    """40 garments, every other one captioned "red top": BM25 ties those 20, and the caption
    ranking keeps them in catalog order (a stable sort; numpy's default quicksort reorders ties
    among more than 16 elements). Mutation caught: `kind="stable"` dropped from the caption
    ranking."""
    x = unit_rows(40, 4, seed=4)
    index = in_memory_index(x)
    index.captions = ["red top" if i % 2 == 0 else "blue coat" for i in range(40)]
    hits = search(index, "red top", 20, mode="caption")
    assert [h.id for h in hits] == [str(i) for i in range(0, 40, 2)]
    assert len({h.score for h in hits}) == 1


def test_captions_sharing_no_word_take_no_part_in_the_fusion():
    """Only garment 2's caption shares a word with the query: every other garment's fused score is
    1/(60 + its image rank) alone, garment 2's adds 1/61 (its caption rank 1), checked against
    bm25s used directly. Mutation caught: the all-zero caption tail ranked as well (the
    `bm25 > 0` condition dropped)."""
    x = unit_rows(8, 4, seed=6)
    index = in_memory_index(x)
    index.captions = ["blue coat", "green skirt", "red top", "black boots", "grey scarf", "white shirt",
                      "brown belt", "pink hat"]
    index.encoder = _Encoder(x[5])
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(index.captions, stopwords=None, show_progress=False), show_progress=False)
    assert np.flatnonzero(retriever.get_scores(["red"])).tolist() == [2]
    image_rank = {p: r for r, p in enumerate(_cosine_order(x, x[5]), 1)}
    expected = {p: 1 / (60 + r) + (1 / 61 if p == 2 else 0.0) for p, r in image_rank.items()}
    best = sorted(expected, key=lambda p: (-expected[p], image_rank[p]))
    hits = search(index, "red", 8, mode="fusion")
    assert [h.id for h in hits] == [str(p) for p in best]
    assert [h.score for h in hits] == pytest.approx([expected[p] for p in best], rel=1e-9)


def test_a_pin_beyond_the_image_depth_gets_its_caption_rank_alone():
    """102 garments, the image ranking is read 100 deep: the pin, the query's farthest garment,
    falls beyond it (100 others come first), so its fused score is its caption rank 1 alone,
    1/61. Mutation caught: the image ranking with the pins added not cut back to its depth (the
    pin then also scored 1/(60 + 101))."""
    x = unit_rows(102, 8, seed=7)
    q = x[1].copy()
    x[0] = -q
    index = in_memory_index(x)
    index.captions = ["alpha"] + [""] * 101
    index.encoder = _Encoder(q)
    assert _cosine_order(x, q)[-1] == 0
    hits = search(index, "alpha", 3, mode="fusion", pin_ids="0")
    assert hits[0].id == "0" and hits[0].score == pytest.approx(1 / 61, rel=1e-9)
    others = [i for i in _cosine_order(x, q) if i != 0][:2]
    assert [h.id for h in hits[1:]] == [str(i) for i in others]
    assert [h.score for h in hits[1:]] == pytest.approx([1 / 61, 1 / 62], rel=1e-9)


def test_the_image_ranking_is_read_exactly_100_deep():
    """102 garments; the two captioned "alpha" (equal BM25, caption ranks in catalog order) are the
    query's 100th and 101st by cosine. The 100th fuses its image rank, 1/160, with its caption
    rank; the 101st, beyond the depth, its caption rank alone. Mutation caught: a shallower image
    ranking (FUSION_DEPTH = 10: the 100th then lost its 1/160)."""
    x = unit_rows(102, 8, seed=8)
    q = x[1].copy()
    index = in_memory_index(x)
    order = _cosine_order(x, q)
    a, b = order[99], order[100]
    index.captions = ["alpha" if p in (a, b) else "" for p in range(102)]
    index.encoder = _Encoder(q)
    caption_rank = {p: r for r, p in enumerate(sorted((a, b)), 1)}
    hits = search(index, "alpha", 4, mode="fusion")
    want = {a: 1 / 160 + 1 / (60 + caption_rank[a]), b: 1 / (60 + caption_rank[b]),
            order[0]: 1 / 61, order[1]: 1 / 62}
    # Equal scores: the better image rank first (b has none within the depth).
    image_rank = {a: 100, b: 10**6, order[0]: 1, order[1]: 2}
    best = sorted(want, key=lambda p: (-want[p], image_rank[p]))
    assert [h.id for h in hits] == [str(p) for p in best]
    assert [h.score for h in hits] == pytest.approx([want[p] for p in best], rel=1e-9)
