"""The index loader and retrieve nodes inside a real ComfyUI (in-process and over HTTP)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_harness import PromptFailed
from fashion_rag.openclip_encoder import GarmentEncoder
from fashion_rag.retrieval.build import build_index
from fashion_rag.retrieval.catalog import scan_catalog
from fashion_rag.retrieval.ondisk import POINTER, resolve_version
from tools.demo.catalog import TINY_WEIGHTS_NAME
from tools.demo.encoder import TINY_ARCH, write_tiny_encoder_weights

LOADER, RETRIEVE = "FashionRAGGarmentIndexLoader", "FashionRAGTextGarmentRetrieve"


def workflow(text: str = "red striped trousers", k: int = 3, index: str = "demo", save: bool = False,
             weights: str = TINY_WEIGHTS_NAME, **retrieve_inputs) -> dict:
    # The demo's encoder weights are random: captions are what makes its rankings meaningful.
    inputs = {"index": ["1", 0], "text": text, "k": k, "category": "any", "mode": "caption",
              "pin_ids": "", "exclude_ids": "", **retrieve_inputs}
    sink = ({"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "fr_retrieve"}}
            if save else {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}})
    return {
        "1": {"class_type": LOADER, "inputs": {"index": index, "encoder_weights": weights}},
        "2": {"class_type": RETRIEVE, "inputs": inputs},
        "3": sink,
    }


def _error_text(err: PromptFailed) -> str:
    return str(err.payload)


def test_workflow_runs_in_process(comfy, comfy_base):
    # The loader's summary is UI output, sent only when it runs: not from the cache of an
    # earlier test's identical loader (test_score's, when it runs first).
    comfy.executor.reset()
    out = comfy.run(workflow(save=True, k=3, category="lower_body"))
    summary = out["1"]["fashion_rag_index"][0]
    assert summary["name"] == "demo" and summary["items"] == 36
    assert summary["per_category"] == {"upper_body": 12, "lower_body": 12, "dresses": 12}
    assert summary["random_demo"] is True and "RANDOM demo weights" in summary["warning"]
    assert "laion/CLIP-ViT-L-14-laion2B-s32B-b82K" in summary["warning"]

    listing = out["2"]["fashion_rag_garments"]
    assert [g["rank"] for g in listing] == [1, 2, 3]
    assert listing[0]["caption"] == "red striped trousers"
    assert all(g["category"] == "lower_body" for g in listing)
    previews = out["2"]["images"]
    assert len(previews) == 3 and all(p["type"] == "temp" for p in previews)
    assert all((comfy_base / "temp" / p["subfolder"] / p["filename"]).is_file() for p in previews)

    # The IMAGE output, as SaveImage wrote it, is each garment fitted to 384x512, in rank order.
    saved = out["3"]["images"]
    assert len(saved) == 3
    catalog = comfy_base / "models" / "fashion_rag" / "catalogs" / "demo"
    for entry, garment in zip(saved, listing, strict=True):
        saved_file = comfy_base / "output" / entry["subfolder"] / entry["filename"]
        png = np.asarray(Image.open(saved_file).convert("RGB"))
        # The demo garments are drawn at 384x512: fitted, they are the file's own pixels.
        source = Image.open(next(catalog.rglob(f"{garment['id']}.png")))
        assert source.size == (384, 512)
        assert png.shape == (512, 384, 3) and np.array_equal(png, np.asarray(source.convert("RGB")))


def test_pins_and_excludes_through_the_node(comfy):
    first = comfy.run(workflow(k=4))["2"]["fashion_rag_garments"]
    top = first[0]["id"]
    out = comfy.run(workflow(k=4, pin_ids="dress03,top05", exclude_ids=top))["2"]["fashion_rag_garments"]
    ids = [g["id"] for g in out]
    assert ids[:2] == ["dress03", "top05"] and top not in ids and len(ids) == 4


def test_image_mode_runs_the_encoder_under_comfy_memory_management(comfy):
    import comfy.model_management as mm

    out = comfy.run(workflow(text="a blue dress", k=5, mode="image", category="dresses"))
    listing = out["2"]["fashion_rag_garments"]
    assert len(listing) == 5 and all(g["category"] == "dresses" for g in listing)
    scores = [g["score"] for g in listing]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)  # cosines
    loaded = [lm.model.model for lm in mm.current_loaded_models if lm.model is not None]
    assert any(type(m).__name__ == "CLIP" and hasattr(m, "encode_text") for m in loaded)


def test_a_picture_query_through_the_node(comfy, comfy_base):
    """The optional IMAGE input (issue 22): a stored garment's picture, weight 1, finds that
    garment first at cosine 1, with the image tower loaded under ComfyUI's memory management;
    weight 0 is the text's ranking. Mutation caught: the node not passing the image on."""
    import comfy.model_management as mm

    catalog = comfy_base / "models" / "fashion_rag" / "catalogs" / "demo"
    shutil.copyfile(next(catalog.rglob("top05.png")), comfy_base / "input" / "fr_query_top05.png")

    def run(**inputs) -> list[dict]:
        wf = workflow(text="a long dress", k=4, mode="image", **inputs)
        wf["4"] = {"class_type": "LoadImage", "inputs": {"image": "fr_query_top05.png"}}
        return comfy.run(wf)["2"]["fashion_rag_garments"]

    by_picture = run(image=["4", 0], image_weight=1.0)
    assert by_picture[0]["id"] == "top05" and by_picture[0]["score"] == pytest.approx(1.0, abs=1e-4)
    loaded = [lm.model.model for lm in mm.current_loaded_models if lm.model is not None]
    assert any(type(m).__name__ == "VisionTransformer" for m in loaded)
    assert run(image=["4", 0], image_weight=0.0) == run()


def test_bad_inputs_give_clear_errors(comfy):
    with pytest.raises(PromptFailed) as err:
        comfy.run(workflow(index="no_such_index"))
    assert err.value.kind == "validation"
    assert "No garment index named 'no_such_index'" in _error_text(err.value)
    assert "index build" in _error_text(err.value)

    with pytest.raises(PromptFailed) as err:
        comfy.run(workflow(k=0))
    assert err.value.kind == "validation" and "smaller than min of 1" in _error_text(err.value)

    with pytest.raises(PromptFailed) as err:
        comfy.run(workflow(text="   \n "))
    assert err.value.kind == "validation" and "text is empty" in _error_text(err.value)

    with pytest.raises(PromptFailed) as err:
        comfy.run(workflow(weights="missing_weights.safetensors"))
    assert err.value.kind == "validation"
    assert "open_clip_pytorch_model.bin" in _error_text(err.value) and "fashion_rag" in _error_text(err.value)

    with pytest.raises(PromptFailed) as err:
        comfy.run(workflow(pin_ids="not_an_id"))
    assert err.value.kind == "execution" and "'not_an_id'" in _error_text(err.value)


def test_other_weights_are_refused_naming_both(comfy, comfy_base):
    folder = comfy_base / "models" / "fashion_rag" / "retrieval"
    other = write_tiny_encoder_weights(folder / "zz_other_seed.safetensors", seed=7)
    try:
        with pytest.raises(PromptFailed) as err:
            comfy.run(workflow(weights=other.name))
        text = _error_text(err.value)
        assert err.value.kind == "execution"
        assert TINY_WEIGHTS_NAME in text and other.name in text and "rebuild" in text
    finally:
        other.unlink()


def test_an_index_built_from_a_model_folder_loads_with_its_weights_file(comfy, comfy_base, demo_source):
    """Issue 22: the loader's encoder_weights list shows a model folder's weights file, which
    stands for the folder when the index was built from one; the node ranks as the library does.
    Mutation caught: the loader building a plain-file encoder from it (refused: unknown architecture)."""
    from encoder_folders import write_model_folder

    from fashion_rag.retrieval.index import load_index
    from fashion_rag.retrieval.search import search

    models = comfy_base / "models" / "fashion_rag"
    folder = write_model_folder(models / "retrieval" / "zz-siglip-fashion", "siglip")
    index_dir = models / "indexes" / "zz_folder_shop"
    try:
        build_index(scan_catalog(demo_source), index_dir, GarmentEncoder(folder))
        listing = comfy.run(workflow(text="black long dress", k=5, mode="image", index=index_dir.name,
                                     weights="zz-siglip-fashion/open_clip_model.safetensors"))
        want = search(load_index(index_dir, GarmentEncoder(folder)), "black long dress", 5, mode="image")
        got = listing["2"]["fashion_rag_garments"]
        assert [g["id"] for g in got] == [h.id for h in want]
        np.testing.assert_allclose([g["score"] for g in got], [h.score for h in want], atol=1e-5)
    finally:
        shutil.rmtree(folder)
        shutil.rmtree(index_dir, ignore_errors=True)


def test_rebuilt_index_changes_the_fingerprint(comfy, comfy_base):
    """A new version swapped in (same name) must make ComfyUI reload the index."""
    node = comfy.nodes.NODE_CLASS_MAPPINGS[LOADER]
    indexes = comfy_base / "models" / "fashion_rag" / "indexes"
    catalog = scan_catalog(comfy_base / "models" / "fashion_rag" / "catalogs" / "demo")
    weights = comfy_base / "models" / "fashion_rag" / "retrieval" / TINY_WEIGHTS_NAME
    encoder = GarmentEncoder(weights, TINY_ARCH)
    try:
        build_index(catalog, indexes / "fp_test", encoder, index_type="flat")
        before = node.fingerprint_inputs(index="fp_test", encoder_weights=TINY_WEIGHTS_NAME)
        assert before[0] == resolve_version(indexes / "fp_test").version
        build_index(catalog, indexes / "fp_test", encoder, index_type="ivf")  # another version
        after = node.fingerprint_inputs(index="fp_test", encoder_weights=TINY_WEIGHTS_NAME)
        assert after != before and after[0] == resolve_version(indexes / "fp_test").version
        assert "fp_test" in comfy.pack.nodes.index_loader.index_names()
    finally:
        shutil.rmtree(indexes / "fp_test")


def test_server_lists_nodes_and_runs_the_workflow(comfy_server):
    """Mutation caught: the empty-text check dropped from search.request_problem (the former
    `min or empty` check passed on the k error alone; failed now: yes)."""
    info = comfy_server.get("/object_info")
    assert LOADER in info and RETRIEVE in info
    loader, retrieve = info[LOADER], info[RETRIEVE]
    assert loader["display_name"] == "Fashion-RAG Garment Index Loader"
    assert retrieve["display_name"] == "Fashion-RAG Text → Garment Retrieve"
    index_spec = loader["input"]["required"]["index"]
    options = index_spec[0] if isinstance(index_spec[0], list) else index_spec[1]["options"]
    assert "demo" in options
    required = retrieve["input"]["required"]
    assert list(required) == ["index", "text", "k", "category", "mode", "pin_ids", "exclude_ids"]
    assert required["k"][1]["min"] == 1 and required["k"][1]["max"] == 20 and required["k"][1]["default"] == 3
    for spec in [*loader["input"]["required"].values(), *required.values()]:
        assert spec[1].get("tooltip"), spec
    assert retrieve["output"] == ["IMAGE", "FASHION_RAG_GARMENTS", "STRING"]
    assert loader["output"] == ["FASHION_RAG_INDEX"]

    entry = comfy_server.run(workflow(text="green polka-dot long dress", k=2))
    garments = entry["outputs"]["2"]["fashion_rag_garments"]
    assert garments[0]["caption"] == "green polka-dot long dress" and len(garments) == 2
    assert len(entry["outputs"]["3"]["images"]) == 2

    status, body = comfy_server.post("/prompt", {"prompt": workflow(k=0, text=""), "client_id": "tests"})
    # The loader is an output node too (its summary), so ComfyUI answers 200 and runs only it,
    # reporting the retrieve node's errors, which the frontend shows on that node.
    assert status in (200, 400)
    errors = str(body["node_errors"]["2"]["errors"])
    # Both problems, each in its own words (either alone passed before).
    assert "smaller than min of 1" in errors and "The text is empty: describe the garment" in errors


def test_picture_batch_uses_its_first_image_and_the_top_category_output(comfy, comfy_base):
    """The IMAGE input's first picture is the query (top05 of [top05, dress03], weight 1: top05 at
    cosine 1), and the category output is the top garment's (pins dress03, top05: "dresses").
    Mutations caught: the batch's last picture used; the category of the last garment output."""
    catalog = comfy_base / "models" / "fashion_rag" / "catalogs" / "demo"
    for gid in ("top05", "dress03"):
        shutil.copyfile(next(catalog.rglob(f"{gid}.png")), comfy_base / "input" / f"fr_batch_{gid}.png")
    wf = workflow(text="a long dress", k=2, mode="image", image=["6", 0], image_weight=1.0)
    wf["4"] = {"class_type": "LoadImage", "inputs": {"image": "fr_batch_top05.png"}}
    wf["5"] = {"class_type": "LoadImage", "inputs": {"image": "fr_batch_dress03.png"}}
    wf["6"] = {"class_type": "ImageBatch", "inputs": {"image1": ["4", 0], "image2": ["5", 0]}}
    listing = comfy.run(wf)["2"]["fashion_rag_garments"]
    assert listing[0]["id"] == "top05" and listing[0]["score"] == pytest.approx(1.0, abs=1e-4)

    wf = workflow(k=2, pin_ids="dress03,top05")
    wf["4"] = {"class_type": "PreviewAny", "inputs": {"source": ["2", 2]}}
    out = comfy.run(wf)
    assert [g["id"] for g in out["2"]["fashion_rag_garments"]] == ["dress03", "top05"]
    assert list(out["4"]["text"]) == ["dresses"]


def test_bad_optional_and_id_inputs_are_refused_at_validation(comfy):
    """Refused before anything runs, as the frontend shows on the node: image_weight above 1, an
    exclude id of 257 characters (at most 256). Mutations caught: image_weight's max loosened to
    2; exclude_ids left out of validate_inputs (refused only at run time)."""
    with pytest.raises(PromptFailed) as err:
        comfy.run(workflow(image_weight=1.05))
    assert err.value.kind == "validation" and "bigger than max of 1" in _error_text(err.value)
    with pytest.raises(PromptFailed) as err:
        comfy.run(workflow(exclude_ids="top05," + "x" * 257))
    assert err.value.kind == "validation"
    assert "exclude_ids holds an id of 257 characters" in _error_text(err.value)


def test_loader_lists_only_index_folders_and_skips_unreadable_roots(comfy, comfy_base, tmp_path):
    """A plain folder in the indexes folder is no index: not listed, refused at validation; an
    extra indexes root that is a file (a typo in extra_model_paths.yaml) is skipped.
    Mutations caught: looks_like_index dropped from _find_in; only FileNotFoundError skipped."""
    import folder_paths

    from fashion_rag.model_files import INDEXES_KEY

    loader = comfy.pack.nodes.index_loader
    plain = comfy_base / "models" / "fashion_rag" / "indexes" / "zz_plain_folder"
    (plain / "images").mkdir(parents=True)
    not_a_dir = tmp_path / "indexes_root_file"
    not_a_dir.write_text("")
    folder_paths.add_model_folder_path(INDEXES_KEY, str(not_a_dir))
    try:
        names = loader.index_names()
        assert "demo" in names and "zz_plain_folder" not in names
        with pytest.raises(PromptFailed) as err:
            comfy.run(workflow(index="zz_plain_folder"))
        assert err.value.kind == "validation"
        assert "No garment index named 'zz_plain_folder'" in _error_text(err.value)
    finally:
        folder_paths.folder_names_and_paths[INDEXES_KEY][0].remove(str(not_a_dir))
        shutil.rmtree(plain)


def test_replaced_weights_and_a_rebuild_in_the_same_tick_reload(comfy, comfy_base):
    """The fingerprint carries the weights file's mtime (set here to literal times); a rebuilt
    index loads anew even where the folder's mtime did not move (a coarse-timestamp file system,
    two builds in one tick). Mutations caught: the weights mtime left out of fingerprint_inputs;
    the index version left out of the loaded-index cache key."""
    import os

    loader = comfy.pack.nodes.index_loader
    node = comfy.nodes.NODE_CLASS_MAPPINGS[LOADER]
    models = comfy_base / "models" / "fashion_rag"
    weights = models / "retrieval" / "zz_fp_weights.safetensors"
    shutil.copyfile(models / "retrieval" / TINY_WEIGHTS_NAME, weights)
    index_dir = models / "indexes" / "zz_tick"
    try:
        os.utime(weights, (1_700_000_000, 1_700_000_000))
        assert node.fingerprint_inputs(index="demo", encoder_weights=weights.name)[1] == 1_700_000_000.0
        os.utime(weights, (1_700_000_100.5, 1_700_000_100.5))
        assert node.fingerprint_inputs(index="demo", encoder_weights=weights.name)[1] == 1_700_000_100.5

        catalog = scan_catalog(models / "catalogs" / "demo")
        build_index(catalog, index_dir, GarmentEncoder(weights, TINY_ARCH), index_type="flat")
        first = loader.load_garment_index(str(index_dir), str(weights))
        st = os.stat(index_dir)
        build_index(catalog, index_dir, GarmentEncoder(weights, TINY_ARCH), index_type="ivf")
        os.utime(index_dir, ns=(st.st_atime_ns, st.st_mtime_ns))
        second = loader.load_garment_index(str(index_dir), str(weights))
        assert second.version == resolve_version(index_dir).version != first.version
    finally:
        shutil.rmtree(index_dir, ignore_errors=True)
        weights.unlink()


@pytest.fixture(autouse=True)
def _demo_present(demo_models):
    # Everything here needs the demo index in the shared models folder.
    assert Path(demo_models["index"], POINTER).is_file()
