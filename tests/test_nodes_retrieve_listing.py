"""Mutation pass over the retrieve node (nodes/retrieve.py): its k bound and the garment listing
it shows, inside a real in-process ComfyUI with the demo index."""

from __future__ import annotations

import pytest

from comfy_harness import PromptFailed

LOADER, RETRIEVE = "FashionRAGGarmentIndexLoader", "FashionRAGTextGarmentRetrieve"


def _workflow(**inputs) -> dict:
    from tools.demo.catalog import TINY_WEIGHTS_NAME

    retrieve = {"index": ["1", 0], "text": "red striped trousers", "k": 3, "category": "any",
                "mode": "caption", "pin_ids": "", "exclude_ids": "", **inputs}
    return {
        "1": {"class_type": LOADER, "inputs": {"index": "demo", "encoder_weights": TINY_WEIGHTS_NAME}},
        "2": {"class_type": RETRIEVE, "inputs": retrieve},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }


def test_k_up_to_14_of_a_category_and_each_listed_garment_keeps_its_own_category_and_6_decimals(comfy):
    """k = 14 runs (pins dress03, top05 first, then the demo's 12 lower-body garments); k = 21 is refused at
    validation. The listing names each garment's own category (dresses, upper_body, lower_body ...)
    and its score to 6 decimals, not 2. Mutations caught: the node's k maximum lowered to 10;
    every listed garment given the top garment's category; scores rounded to 2 decimals."""
    out = comfy.run(_workflow(k=14, category="lower_body", pin_ids="dress03,top05"))
    listing = out["2"]["fashion_rag_garments"]
    assert [g["rank"] for g in listing] == list(range(1, 15))
    assert [g["id"] for g in listing[:2]] == ["dress03", "top05"]
    assert [g["category"] for g in listing] == ["dresses", "upper_body"] + ["lower_body"] * 12
    scores = [g["score"] for g in listing]
    assert all(round(s, 6) == s for s in scores)
    assert any(round(s, 2) != s for s in scores)  # BM25 scores carry more than 2 decimals
    with pytest.raises(PromptFailed) as err:
        comfy.run(_workflow(k=21))
    assert err.value.kind == "validation" and "bigger than max of 20" in str(err.value.payload)
