"""The candidates template (example_workflows/fashion_rag_candidates.json) in real ComfyUI, demo
weights: the top k garments each worn separately in one run, side by side with their garment,
from one noise, so that pinning the winner and running it alone gives the same picture."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from template_runs import SMALL, SMALL_PERSON, ids_of, probe, saved, small, template

CANDIDATES = "fashion_rag_candidates"


def _nodes(api: dict) -> tuple[str, str, str, str]:
    (retrieve,) = ids_of(api, "FashionRAGTextGarmentRetrieve")
    (inversion,) = ids_of(api, "FashionRAGGarmentInversion")
    (inpaint,) = ids_of(api, "FashionRAGInpaint")
    (stitch,) = ids_of(api, "ImageStitch")
    return retrieve, inversion, inpaint, stitch


def test_template_shape():
    """Top 4, one prompt per garment, ONE person image (so the inpaint node makes one candidate
    per prompt from one noise), each result stitched right of its garment and saved."""
    api = template(CANDIDATES)
    retrieve, inversion, inpaint, stitch = _nodes(api)
    assert api[retrieve]["inputs"]["k"] == 4
    assert api[inversion]["inputs"]["per_garment"] is True
    assert api[inversion]["inputs"]["garments"] == [retrieve, 1]
    assert api[api[inpaint]["inputs"]["image"][0]]["class_type"] == "LoadImage"
    assert api[inpaint]["inputs"]["paste_back"] is True  # only the garment region differs
    assert api[stitch]["inputs"]["image1"] == [retrieve, 0]
    assert api[stitch]["inputs"]["image2"] == [inpaint, 1]
    assert api[stitch]["inputs"]["direction"] == "right"
    (save,) = ids_of(api, "SaveImage")
    assert api[save]["inputs"]["images"] == [stitch, 0]


@pytest.mark.slow  # k garments through ViT-H and one inpainting batch, then one garment alone
def test_each_garment_worn_separately_and_the_pinned_one_reproduces(comfy):
    k = 3
    api = small(template(CANDIDATES), comfy, k=k)
    retrieve, _, inpaint, stitch = _nodes(api)
    (save,) = ids_of(api, "SaveImage")
    results_probe = probe(api, [inpaint, 1], "candidates_results")
    mask_probe = probe(api, [api[inpaint]["inputs"]["mask"][0], 0], "candidates_mask", mask=True)

    out = comfy.run(api)
    garment_ids = [g["id"] for g in out[retrieve]["fashion_rag_garments"]]
    sheets = saved(comfy, out, save)
    results = saved(comfy, out, results_probe)
    mask = saved(comfy, out, mask_probe)[0][..., 0] >= 128
    assert len(garment_ids) == len(sheets) == len(results) == k

    # Side by side: garment i (384x512, rank order), an 8 px white gap, then result i at the
    # garments' height (ImageStitch scales the small test person up).
    for i, sheet in enumerate(sheets):
        assert sheet.shape[0] == 512 and sheet.shape[1] > 384 + 8
        assert (sheet[:, 384:392] == 255).all()
        right = np.asarray(Image.fromarray(results[i]).resize((sheet.shape[1] - 392, 512), Image.LANCZOS))
        assert np.abs(sheet[:, 392:].astype(int) - right).mean() < 3, i

    # Only the garment differs: outside the mask every candidate is the person (paste_back),
    # inside each wears its own garment.
    person = np.asarray(Image.open(comfy.base / "input" / SMALL_PERSON).convert("RGB")).astype(int)
    for r in results:
        assert r.shape == (SMALL[1], SMALL[0], 3)
        assert np.abs(r[~mask].astype(int) - person[~mask]).max() <= 1
    for i in range(1, k):
        assert (results[i][mask] != results[0][mask]).any(), i

    # Pin the last candidate's garment, k = 1: the same seed gives the same picture (one noise for
    # all candidates is the noise of a single image), up to a rounding level of the batch's float math.
    last = garment_ids[-1]
    alone_api = small(template(CANDIDATES), comfy, k=1, pin_ids=last)
    alone_probe = probe(alone_api, [inpaint, 1], "candidate_alone")
    alone_out = comfy.run(alone_api)
    assert [g["id"] for g in alone_out[retrieve]["fashion_rag_garments"]] == [last]
    (alone,) = saved(comfy, alone_out, alone_probe)
    assert np.abs(alone.astype(int) - results[-1]).max() <= 1
    assert np.abs(alone.astype(int) - results[0])[mask].max() > 1  # and not just any candidate
