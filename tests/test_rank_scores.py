"""The ranking and the checks of fashion_rag/evaluation/scores.py on literal scores counted by hand
(no encoder: the checks come before any encoding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fashion_rag.evaluation.scores import clip_i_scores, per_image, rank


def test_ties_keep_their_order_and_the_mean_is_the_two_scores_halved():
    """Mutations caught: ties broken by the later image first; the sum of CLIP-T and CLIP-I
    instead of their mean."""
    ranked = rank(np.array([1.5, 3.25, 3.25, 2.0]), None, "clip_t")
    assert [s.index for s in ranked] == [1, 2, 3, 0]
    assert [s.score for s in ranked] == [3.25, 3.25, 2.0, 1.5]
    both = rank(np.array([10.2, 20.4, 7.0]), np.array([30.0, -0.6, 7.0]))
    assert [(s.index, s.score) for s in both] == [(0, pytest.approx(20.1)), (1, pytest.approx(9.9)),
                                                 (2, pytest.approx(7.0))]
    assert (both[1].clip_t, both[1].clip_i) == (20.4, -0.6)


def test_ranking_by_a_score_that_was_not_computed_is_refused():
    """Mutation caught: the check dropped (rank_by clip_i without CLIP-I fell back to CLIP-T)."""
    with pytest.raises(ValueError, match="rank_by 'clip_i', but CLIP-I needs the garments"):
        rank(np.array([1.0, 2.0]), None, "clip_i")
    with pytest.raises(ValueError, match="rank_by 'clip_t', but CLIP-T needs a text"):
        rank(None, np.array([1.0, 2.0]), "clip_t")


def test_garment_ids_are_named_only_when_there_is_one_per_image():
    """Mutation caught: ids of a shorter list given to the first images."""
    short = rank(np.array([1.0, 2.0]), None, "clip_t", garment_ids=["a"])
    assert [s.garment for s in short] == [None, None]
    assert "garment" not in short[0].as_dict(1)
    full = rank(np.array([1.0, 2.0]), None, "clip_t", garment_ids=["a", "b"])
    assert [(s.garment, s.as_dict(i + 1)["rank"]) for i, s in enumerate(full)] == [("b", 1), ("a", 2)]


def test_one_mask_serves_every_image_and_other_counts_are_refused():
    """Mutations caught: a single mask refused for several images; more garments than images
    accepted for 'one per image'."""
    one = torch.zeros(1, 4, 5)
    one[0, 1, 2] = 0.5
    masks = per_image(one, 3)
    assert masks.shape == (3, 4, 5) and (masks == one).all()
    assert per_image(torch.ones(4, 5), 2).shape == (2, 4, 5)
    with pytest.raises(ValueError, match="2 masks for 3 images: give one mask, or one per image"):
        per_image(torch.ones(2, 4, 5), 3)
    images, garments = torch.rand(2, 3, 8, 8), torch.rand(3, 8, 8, 3)
    for k in (1, 3):
        with pytest.raises(ValueError, match=f"there are 2 images and {k} garments"):
            clip_i_scores(None, images, torch.ones(8, 8), garments[:k], "upper_body", "one per image")


def test_pictures_are_clamped_then_rounded_to_8_bits():
    """Values below 0 and above 1 (an over-exposed decode) become 0 and 255; others round to the
    nearest level. Mutation caught: no clamp (out-of-range values wrapped around in uint8)."""
    from fashion_rag.evaluation.scores import to_pil

    levels = torch.tensor([-0.2, 0.0, 0.3 / 255, 0.7 / 255, 100.4 / 255, 254.6 / 255, 1.0, 1.3])
    picture = to_pil(levels.reshape(1, 2, 4).expand(3, 2, 4))
    assert picture.mode == "RGB" and picture.size == (4, 2)
    expected = [[0, 0, 0, 1], [100, 255, 255, 255]]
    assert (np.asarray(picture) == np.array(expected)[..., None]).all()
