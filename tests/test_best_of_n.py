"""The best-of-N template (example_workflows/fashion_rag_best_of_n.json) in real ComfyUI, demo
weights: N samples of one garment set, scored by Fashion-RAG Score, the best one saved."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from template_runs import ids_of, probe, saved, small, template

BEST_OF_N = "fashion_rag_best_of_n"


def _nodes(api: dict) -> tuple[str, str, str, str, str]:
    (repeat,) = ids_of(api, "RepeatImageBatch")
    (inpaint,) = ids_of(api, "FashionRAGInpaint")
    (score,) = ids_of(api, "FashionRAGScore")
    (pick,) = ids_of(api, "ImageFromBatch")
    (save,) = ids_of(api, "SaveImage")
    return repeat, inpaint, score, pick, save


def test_template_shape():
    """N copies of the person -> N samples (different noise per item) -> Score with the same mask,
    the retrieved garments, the index and ViT-H -> the first of the sorted images saved."""
    api = template(BEST_OF_N)
    repeat, inpaint, score, pick, save = _nodes(api)
    assert api[repeat]["inputs"]["amount"] == 4
    assert api[inpaint]["inputs"]["image"] == [repeat, 0]
    s = api[score]["inputs"]
    assert s["images"] == [inpaint, 1] and s["mask"] == api[inpaint]["inputs"]["mask"]
    assert s["garments"] == api[api[inpaint]["inputs"]["positive"][0]]["inputs"]["garments"]
    assert api[s["index"][0]]["class_type"] == "FashionRAGGarmentIndexLoader"
    assert api[s["clip_vision"][0]]["class_type"] == "FashionRAGCLIPVisionLoader"  # ViT-H: reference CLIP-I
    assert s["clip_i_garments"] == "all" and not s["text"]  # the retrieval text
    assert api[pick]["inputs"] == {"image": [score, 0], "batch_index": 0, "length": 1}
    assert api[save]["inputs"]["images"] == [pick, 0]


def _computation(api: dict, node_id: str) -> tuple:
    """What a node computes as ComfyUI's cache keys it: its class and inputs, links replaced by
    what their source computes (node ids left out)."""
    node = api[node_id]
    return (node["class_type"], tuple(sorted(
        (name, _computation(api, value[0]) + (value[1],) if isinstance(value, list) else value)
        for name, value in node["inputs"].items())))


def test_its_garment_inversion_is_the_outfits_second(tmp_path):
    """conftest.py runs the best-of-N test right after the outfit run so that its Garment
    Inversion (a full-size ViT-H pass) comes from ComfyUI's cache: only while both inversions
    compute the same thing from the same inputs. If a template's text, k or loaders change, this
    fails: then drop that entry from conftest._RUNS_FROM_CACHE."""
    here = SimpleNamespace(base=tmp_path)
    (tmp_path / "input").mkdir()
    best = small(template(BEST_OF_N), here, k=1)
    outfit = small(template("fashion_rag_outfit"), here, k=1)
    (inversion,) = ids_of(best, "FashionRAGGarmentInversion")
    assert _computation(best, inversion) in {_computation(outfit, i)
                                             for i in ids_of(outfit, "FashionRAGGarmentInversion")}


@pytest.mark.slow  # one garment through ViT-H, 3 samples, ViT-H on 3 patches + the garment
def test_the_best_scored_sample_is_saved(comfy):
    api = small(template(BEST_OF_N), comfy, k=1)
    repeat, inpaint, score, _, save = _nodes(api)
    api[repeat]["inputs"]["amount"] = 3
    results_probe = probe(api, [inpaint, 1], "best_of_n_results")

    out = comfy.run(api)
    results = saved(comfy, out, results_probe)
    entries = out[score]["fashion_rag_scores"]
    assert len(results) == len(entries) == 3
    assert sorted(e["index"] for e in entries) == [0, 1, 2]
    assert all(e["clip_t"] is not None and e["clip_i"] is not None for e in entries)
    assert [e["score"] for e in entries] == sorted((e["score"] for e in entries), reverse=True)
    # N samples, not N copies: each item had its own noise.
    assert (results[0] != results[1]).any() and (results[1] != results[2]).any()
    (best,) = saved(comfy, out, save)
    assert np.array_equal(best, results[entries[0]["index"]])
    assert len(out[score]["images"]) == 3  # the preview, best first
