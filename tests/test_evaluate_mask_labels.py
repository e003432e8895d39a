"""Label rules of the Dress Code mask (fashion_rag/evaluation/dresscode_mask.py) the hand-made person
of test_evaluate_masks.py does not exercise (a scarf, a head inside a lower-body box, a non-3:4
label map), each against that module's transcription of the reference recipe plus pixels
checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from test_evaluate_masks import POSE, person, recipe

from fashion_rag.evaluation.dresscode_mask import MaskError, label_map_mask


def _check(parse, pose, category):
    for mask_type in ("bounding_box", "mask"):
        np.testing.assert_array_equal(label_map_mask(parse, pose, category, mask_type),
                                      recipe(parse, pose, category, mask_type))


@pytest.mark.parametrize("category", ["upper_body", "dresses"])
def test_a_scarf_over_the_garment_is_kept(category):
    """Mutation caught: the scarf left out of the always-fixed labels (repainted with the top)."""
    parse = person(category)
    parse[150:180, 150:235] = 17  # a scarf over the garment
    _check(parse, POSE, category)
    assert not label_map_mask(parse, POSE, category, "mask")[150:180, 150:235].any()
    assert label_map_mask(parse, POSE, category, "mask")[200, 190]  # the garment under it repainted


def test_a_head_label_inside_a_lower_body_box_is_kept():
    """lower_body has no neck rule: every head label is fixed, even inside the trousers' box.
    Mutation caught: lower_body's head not made fixed."""
    parse = person("lower_body")
    parse[300:320, 180:200] = 11  # a face at hip height (a child held on the hip, say)
    _check(parse, POSE, "lower_body")
    box = label_map_mask(parse, POSE, "lower_body", "bounding_box")
    assert not box[300:320, 180:200].any() and box[299, 180:200].all() and box[320, 180:200].all()


def test_lower_body_keeps_the_arms_and_dresses_grow_over_the_legs():
    """Mutations caught: lower_body's arms not fixed; the legs left out of the dress's garment area."""
    parse = person("lower_body")
    parse[280:300, 150:170] = 15  # a hand on the thigh, inside the trousers
    _check(parse, POSE, "lower_body")
    assert not label_map_mask(parse, POSE, "lower_body", "mask")[280:300, 150:170].any()
    dress = person("dresses")
    _check(dress, POSE, "dresses")
    # The legs end at row 470; grown by 10 px they reach row 479, shoes (fixed) aside.
    assert label_map_mask(dress, POSE, "dresses", "mask")[479, 190]


def test_an_unknown_category_or_mask_type_is_named():
    parse = person("dresses")
    with pytest.raises(MaskError, match="unknown category 'shoes'; expected one of "):
        label_map_mask(parse, POSE, "shoes")
    with pytest.raises(MaskError, match="unknown mask type 'box'; expected one of bounding_box, mask"):
        label_map_mask(parse, POSE, "dresses", "box")


def test_a_wrist_on_the_left_edge_is_not_missing():
    """A wrist at x 0.5 but y 300 (the arm reaching out of the picture's left edge) is a point:
    only both coordinates at most 1 px mean "missing". Mutation caught: either coordinate <= 1
    taken as missing (the line then stopped at the elbow)."""
    pose = POSE.copy()
    pose[4] = (0.5, 300.0)
    parse = person("upper_body")
    _check(parse, pose, "upper_body")
    assert label_map_mask(parse, pose, "upper_body", "mask")[300, 5]  # the line's end, grown: repainted


def test_sunglasses_below_the_shoulder_line_go_with_the_neck():
    """Sunglasses count as head: below the shifted shoulder line they join the garment area (grown
    10 px), while staying fixed themselves. Mutation caught: sunglasses left out of the head labels."""
    parse = person("dresses")
    parse[330:340, 20:30] = 3  # sunglasses held low, in the background
    _check(parse, POSE, "dresses")
    mask = label_map_mask(parse, POSE, "dresses", "mask")
    assert mask[325, 25] and mask[345, 15] and not mask[335, 25] and not mask[325, 45]
