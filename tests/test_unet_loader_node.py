"""'Fashion-RAG UNet Loader' details the layout tests leave out: the weight_dtype choices, files
dropped where the stock UNETLoader looks, the cache and change detection, and the concat check
(mutation pass)."""

from __future__ import annotations

import os

import pytest
import torch
from test_inpaint_parity import pack_module, tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def alt_folder(comfy_runtime, tmp_path_factory):
    """A tiny Fashion-RAG UNet (.pth) in an extra 'diffusion_models' folder, the stock UNETLoader's."""
    import folder_paths

    folder = tmp_path_factory.mktemp("diffusion_models")
    torch.save(tiny_unet(seed=3).state_dict(), folder / "fr_alt_unet.pth")
    folder_paths.add_model_folder_path("diffusion_models", str(folder))
    try:
        yield folder
    finally:  # leave the folder list and its cache as other tests expect them
        folder_paths.folder_names_and_paths["diffusion_models"][0].remove(str(folder))
        folder_paths.filename_list_cache.pop("diffusion_models", None)


def test_a_file_in_diffusion_models_is_listed_and_loaded_from_there(comfy_runtime, alt_folder):
    """A file in models/diffusion_models/ is offered as 'diffusion_models/<name>' and that name
    resolves to the file in that folder (not to one in models/fashion_rag/unet/).
    Mutations caught: the 'diffusion_models/' prefix left off the listed names; the prefixed name
    looked up in the pack's own UNet folder."""
    loader = pack_module(comfy_runtime, "nodes.unet_loader")
    assert "diffusion_models/fr_alt_unet.pth" in loader.unet_files()
    assert loader.resolve("diffusion_models/fr_alt_unet.pth") == str(alt_folder / "fr_alt_unet.pth")
    assert loader.FashionRAGUNetLoader.validate_inputs("diffusion_models/fr_alt_unet.pth", "default") is True


@pytest.mark.parametrize("choice,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16),
                                          ("fp32", torch.float32)])
def test_weight_dtype_choice_sets_the_weights_dtype(comfy_runtime, alt_folder, choice, dtype):
    """Each weight_dtype choice stores the UNet's weights in that torch dtype; choosing another
    for the same file gives a model of the new dtype, not the cached one of the old.
    Mutations caught: fp16 mapped to bfloat16; bf16 mapped to float16; the cache keyed on the
    file alone (a second dtype returns the first model)."""
    loader = pack_module(comfy_runtime, "nodes.unet_loader")
    name = "diffusion_models/fr_alt_unet.pth"
    model = loader.FashionRAGUNetLoader.execute(name, choice)[0]
    assert model.model.diffusion_model.input_blocks[0][0].weight.dtype == dtype
    other = "fp32" if choice != "fp32" else "fp16"
    again = loader.FashionRAGUNetLoader.execute(name, other)[0]
    assert again is not model
    assert again.model.diffusion_model.input_blocks[0][0].weight.dtype != dtype


def test_a_rewritten_file_of_the_same_size_changes_the_fingerprint(comfy_runtime, alt_folder):
    """Replacing the file with one of the same size but a newer modification time makes the node
    run again (its fingerprint changes); the same file and choice keep the same fingerprint.
    Mutation caught: the modification time left out of the fingerprint."""
    loader = pack_module(comfy_runtime, "nodes.unet_loader")
    name, path = "diffusion_models/fr_alt_unet.pth", alt_folder / "fr_alt_unet.pth"
    before = loader.FashionRAGUNetLoader.fingerprint_inputs(name, "default")
    assert loader.FashionRAGUNetLoader.fingerprint_inputs(name, "default") == before
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert os.stat(path).st_size == st.st_size
    assert loader.FashionRAGUNetLoader.fingerprint_inputs(name, "default") != before


@pytest.mark.parametrize("channels", [0, 9, 22, 24])
def test_concat_of_any_other_width_is_refused_before_the_unet(comfy_runtime, channels):
    """The APPLY_MODEL wrapper lets exactly 23 concat channels (1 mask + 4 masked latent + 18
    pose) through and names any other count, too few or too many, before the UNet's conv sees it.
    Mutation caught: only too few channels refused (`<` instead of `!=`)."""
    loader = pack_module(comfy_runtime, "nodes.unet_loader")
    x, t = torch.zeros(1, 4, 8, 8), torch.zeros(1)

    def executor(*args, **kwargs):
        return "ran"

    assert loader._check_concat(executor, x, t, torch.zeros(1, 23, 8, 8)) == "ran"
    concat = None if channels == 0 else torch.zeros(1, channels, 8, 8)
    with pytest.raises(ValueError, match=rf"needs 23 extra input channels .* gives {channels}\. Feed the "
                                         r"sampler through 'Fashion-RAG Inpaint Conditioning'"):
        loader._check_concat(executor, x, t, concat)
