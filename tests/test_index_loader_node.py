"""Mutation pass over the index loader node (nodes/index_loader.py) inside a real ComfyUI: which
index a name means, the widget's default, and which loads the caches may answer. Each test names
the planted mistake it catches; indexes are tiny ones built here in extra indexes roots (tmp_path)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fashion_rag.openclip_encoder import GarmentEncoder
from fashion_rag.retrieval.build import build_index
from fashion_rag.retrieval.catalog import scan_catalog
from tools.demo.catalog import COLOURS, SHAPES, draw_garment
from tools.demo.encoder import TINY_ARCH, write_tiny_encoder_weights

LOADER = "FashionRAGGarmentIndexLoader"


@pytest.fixture
def roots(comfy_runtime, tmp_path, tiny_weights):
    """Two extra indexes roots (added after ComfyUI's own) and one tiny built index to copy."""
    import folder_paths

    from fashion_rag.model_files import INDEXES_KEY

    cat = tmp_path / "cat" / "dresses"
    cat.mkdir(parents=True)
    for name, colour in (("a", "navy"), ("b", "red")):
        draw_garment(SHAPES["dresses"]["mini dress"], COLOURS[colour], "solid").save(cat / f"{name}.png")
    built = tmp_path / "built"
    build_index(scan_catalog(tmp_path / "cat"), built, GarmentEncoder(tiny_weights, TINY_ARCH))
    added = [tmp_path / "root1", tmp_path / "root2"]
    for root in added:
        root.mkdir()
        folder_paths.add_model_folder_path(INDEXES_KEY, str(root))
    try:
        yield comfy_runtime, built, added
    finally:
        for root in added:
            folder_paths.folder_names_and_paths[INDEXES_KEY][0].remove(str(root))


def test_an_index_name_in_two_roots_means_the_first_roots(roots):
    """"zz_shop" in both extra roots: the name means root1's (the roots' order, as ComfyUI's own
    model folders). Mutation caught: index_dir searching the roots last first."""
    comfy, built, (root1, root2) = roots
    for root in (root1, root2):
        shutil.copytree(built, root / "zz_shop")
    loader = comfy.pack.nodes.index_loader
    assert Path(loader.index_dir("zz_shop")) == root1 / "zz_shop"


def test_the_widget_defaults_to_demo_even_when_another_index_sorts_first(roots):
    """Indexes "aa_first" and "demo" listed: the loader's default is "demo", not the first name.
    Mutation caught: the default taken as the first index listed."""
    comfy, built, (root1, _) = roots
    for name in ("aa_first", "demo"):
        shutil.copytree(built, root1 / name)
    schema = comfy.nodes.NODE_CLASS_MAPPINGS[LOADER].define_schema()
    widget = schema.inputs[0]
    assert widget.options[:1] == ["aa_first"] and "demo" in widget.options
    assert widget.default == "demo"


def test_other_weights_are_refused_after_the_index_was_loaded_with_its_own(roots, tiny_weights, tmp_path):
    """The index loaded (and cached) with its weights, then asked for with other weights of the same
    architecture (seed 7): refused naming both, never the cached index answered.
    Mutation caught: the loaded-index cache keyed without the weights (`options=None`)."""
    comfy, built, (root1, _) = roots
    shutil.copytree(built, root1 / "zz_cached")
    loader = comfy.pack.nodes.index_loader
    path = loader.index_dir("zz_cached")
    assert len(loader.load_garment_index(path, str(tiny_weights))) == 2
    other = write_tiny_encoder_weights(tmp_path / "other_seed.safetensors", seed=7)
    with pytest.raises(ValueError, match="other_seed.safetensors") as info:
        loader.load_garment_index(path, str(other))
    assert type(info.value).__name__ == "EncoderMismatchError"  # (the pack as ComfyUI imported it)


def test_one_weights_file_built_as_two_architectures_gives_each_index_its_own_encoder(roots, tiny_weights):
    """One weights file, two indexes: one built as the tiny architecture, one as its QuickGELU twin
    (the same tensors through another activation, as OpenAI's ViT-B-32 file loads both as ViT-B-32
    and as ViT-B-32-quickgelu). Loaded one after the other in one session, each index gets its own
    encoder: its queries are what a fresh encoder of its architecture gives, not the other's.
    Mutation caught (L7): the loader's encoder cache keyed by the weights file alone (`options=()`:
    the second index was refused as built with another encoder)."""
    import numpy as np

    from fashion_rag.openclip_encoder import register_config
    from tools.demo.encoder import TINY_CONFIG

    comfy, built, (root1, _) = roots
    quick = "fashion-rag-tiny-quickgelu"
    register_config(quick, {**TINY_CONFIG, "quick_gelu": True})
    shutil.copytree(built, root1 / "zz_gelu")
    build_index(scan_catalog(built.parent / "cat"), root1 / "zz_quick", GarmentEncoder(tiny_weights, quick))
    loader = comfy.pack.nodes.index_loader
    query = ["a red mini dress"]
    got = {}
    for name, arch in (("zz_gelu", TINY_ARCH), ("zz_quick", quick)):
        index = loader.load_garment_index(loader.index_dir(name), str(tiny_weights))
        assert index.encoder.name == arch
        got[arch] = index.encoder.encode_texts(query)
        fresh = GarmentEncoder(tiny_weights, arch).encode_texts(query)
        np.testing.assert_allclose(got[arch], fresh, atol=1e-6)
    assert np.abs(got[TINY_ARCH] - got[quick]).max() > 1e-3  # the two really are other encoders
