"""A graph built with the nodes' default widget values runs the reference method.

Defaults are read from the node schemas as real ComfyUI serves them (/object_info's entry, built by
ComfyUI from each node's schema), and compared with the reference's settings (docs/method.md). The
binarisation of the mask (>= 0.5 repaints) has no widget: test_inpaint_parity pins it.

Mutations caught (each tried once): steps 50 -> 30, cfg 7.5 -> 7.0, sampler default "euler",
denoise 0.99, paste_back True (FashionRAGInpaint); noise_mask True (FashionRAGInpaintConditioning);
k 4 (FashionRAGTextGarmentRetrieve); category "dresses" (FashionRAGGarmentInversion); width 512
(FashionRAGPoseFromKeypoints).
"""

from __future__ import annotations

import pytest

from workflow_ui import node_info

REFERENCE_SAMPLER = "fashion_rag_ddim"  # the reference-exact DDIM (test_inpaint_parity)

# node id -> {input: (default, why)}
REFERENCE_DEFAULTS = {
    "FashionRAGInpaint": {
        "steps": (50, "DDIM, 50 steps"),
        "cfg": (7.5, "classifier-free guidance 7.5"),
        "sampler_name": (REFERENCE_SAMPLER, "the reference's DDIM (unit-noise start, alpha_bar_0 end)"),
        "scheduler": ("normal", "unused by the reference sampler; ComfyUI's usual default"),
        "denoise": (1.0, "starts from pure noise"),
        "paste_back": (False, "the reference does no paste-back"),
    },
    "FashionRAGInpaintConditioning": {
        "noise_mask": (False, "the reference samples the whole latent, no latent noise mask"),
    },
    "FashionRAGTextGarmentRetrieve": {
        "k": (3, "k 1-3 in practice; 3 fits every category's prompt (16 pseudo-words each)"),
    },
    "FashionRAGGarmentInversion": {
        "category": ("auto", "the prompt noun of the retrieved garments' category"),
        "extra_text": ("", "the reference prompt, nothing after the pseudo-words"),
    },
    "FashionRAGPoseFromKeypoints": {
        "width": (384, "the reference's 384x512 (WxH)"),
        "height": (512, "the reference's 384x512 (WxH)"),
    },
    "FashionRAGGarmentMask": {
        "grow": (0, "the garment region's box as it is"),
        "feather": (0, "a hard mask, like the reference's"),
    },
}


def widgets(info: dict) -> dict[str, dict]:
    return {name: (spec[1] if len(spec) > 1 else {}) | {"type": spec[0]}
            for group in ("required", "optional") for name, spec in info["input"].get(group, {}).items()}


@pytest.mark.parametrize("node_id", sorted(REFERENCE_DEFAULTS))
def test_defaults_are_the_reference_settings(comfy_runtime, node_id):
    found = widgets(node_info(comfy_runtime.nodes.NODE_CLASS_MAPPINGS[node_id]))
    for name, (expected, why) in REFERENCE_DEFAULTS[node_id].items():
        assert name in found, f"{node_id} has no input {name!r}"
        got = found[name].get("default")
        assert got == expected and type(got) is type(expected), (
            f"{node_id}.{name} defaults to {got!r}; the reference needs {expected!r} ({why})")
        if found[name]["type"] == "COMBO":
            assert expected in found[name]["options"], f"{node_id}.{name}: {expected!r} is not offered"


def test_default_k_fits_every_category(comfy_runtime):
    """The default k garments fit the prompt of every category (3 for upper/lower body)."""
    from fashion_rag.inversion.prompt import max_garments

    k = widgets(node_info(comfy_runtime.nodes.NODE_CLASS_MAPPINGS["FashionRAGTextGarmentRetrieve"]))["k"]
    for category in ("upper_body", "lower_body", "dresses"):
        assert k["default"] <= max_garments(category), category
