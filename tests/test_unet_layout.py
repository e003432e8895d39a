"""The Fashion-RAG UNet layout: key conversion, strict loading, converter, and the MODEL it builds."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_inpaint_parity import load_tiny_model, pack_module, rel, tiny_unet

from fashion_rag.cli import main as cli
from fashion_rag.inpaint import unet_file as F
from fashion_rag.inpaint import unet_layout as U
from fashion_rag.weights import WeightFileError
from tiny_models import TINY_UNET

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def full_meta_sd() -> dict[str, torch.Tensor]:
    """diffusers' full-size Fashion-RAG UNet state dict on the meta device (shapes, no memory)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**U.FULL.diffusers_config()).state_dict()


@pytest.fixture(scope="module")
def tiny_sd() -> dict[str, torch.Tensor]:
    return tiny_unet().state_dict()


def shapes(sd) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def test_full_layout_is_diffusers_sd2_inpainting_with_27_channels(full_meta_sd):
    assert full_meta_sd["conv_in.weight"].shape == (320, 27, 3, 3)
    assert shapes(full_meta_sd) == U.FULL.diffusers_shapes()
    assert len(full_meta_sd) == 686
    assert U.layout_from_diffusers(full_meta_sd) == U.FULL
    n = sum(v.numel() for v in full_meta_sd.values())
    assert 860e6 < n < 870e6  # docs/method.md: ~866 M parameters


def test_full_conversion_matches_comfy_unet_model(comfy_runtime, full_meta_sd):
    """Our diffusers->LDM names and shapes == ComfyUI's UNetModel from the explicit SD2 config."""
    import comfy.ops
    import comfy.supported_models
    import comfy.utils
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    ldm = U.diffusers_to_ldm(full_meta_sd)
    config = comfy.supported_models.SD20(U.FULL.ldm_config()).unet_config
    comfy_unet = UNetModel(**config, device="meta", operations=comfy.ops.disable_weight_init)
    assert shapes(ldm) == shapes(comfy_unet.state_dict())
    assert len(ldm) == 686

    # Cross-check the mapping with ComfyUI's own table (a superset with optional keys).
    theirs = comfy.utils.unet_to_diffusers(config)
    ours = U.FULL.ldm_key_map()
    assert {k: theirs[k] for k in full_meta_sd} == ours


def test_ldm_config_equals_comfy_detection(comfy_runtime, full_meta_sd):
    """What ComfyUI would detect from the converted weights is our explicit config."""
    import comfy.model_detection

    detected = comfy.model_detection.detect_unet_config(U.diffusers_to_ldm(full_meta_sd), "")
    ours = U.FULL.ldm_config()
    assert {k: ours[k] for k in detected} == detected


def test_tiny_round_trip_and_layout_from_ldm(tiny_sd):
    ldm = U.diffusers_to_ldm(tiny_sd)
    assert U.layout_from_ldm(ldm) == TINY_UNET
    names = TINY_UNET.ldm_key_map()  # one-to-one: every LDM name comes from exactly one diffusers name
    assert len(set(names.values())) == len(names) == len(tiny_sd) == len(ldm)
    assert all(ldm[names[k]] is tiny_sd[k] for k in tiny_sd)  # renamed, not copied


@pytest.mark.parametrize("layout", [
    U.UNetLayout(in_channels=9, block_out_channels=(320,), layers_per_block=1, attention_levels=(True,)),
    U.UNetLayout(block_out_channels=(64, 64, 128), layers_per_block=2, attention_levels=(False, True, True),
                 transformer_depth=2, cross_attention_dim=32, use_linear_projection=False),
    # The middle block (96 wide) narrows the heads to 32 though the only attention level is 64 wide.
    U.UNetLayout(block_out_channels=(32, 64, 96), layers_per_block=1, attention_levels=(False, True, False),
                 cross_attention_dim=32, head_channels=32),
])
def test_other_layouts_match_diffusers(layout):
    """Both namings of other layouts read back as the layout diffusers built them from.

    Mutation caught: layout_from_ldm always reading use_linear_projection=True; the middle block's
    width left out of the head-width choice."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        sd = UNet2DConditionModel(**layout.diffusers_config()).state_dict()
    assert shapes(sd) == layout.diffusers_shapes()
    assert U.layout_from_diffusers(sd) == layout
    assert U.layout_from_ldm(U.diffusers_to_ldm(sd)) == layout


@pytest.mark.parametrize("widths,heads,match", [
    ((48,), 16, "multiple of 32"),  # GroupNorm(32, 48) cannot be built
    ((64, 96), 32, "multiple of 32 and of the first one"),  # channel_mult 1.5
    ((96,), 64, "do not split into 64-wide heads"),
])
def test_layouts_comfy_cannot_build_are_refused(widths, heads, match):
    """Widths ComfyUI's UNetModel cannot hold (GroupNorm of 32 groups, whole channel multipliers,
    whole heads) are refused when the layout is made.

    Mutation caught: the multiple-of-32 check dropped; the head-width check dropped."""
    if widths[-1] % 32:
        with pytest.raises(ValueError):  # what ComfyUI's UNetModel would hit
            torch.nn.GroupNorm(32, widths[-1])
    with pytest.raises(ValueError, match=match):
        U.UNetLayout(block_out_channels=widths, attention_levels=(True,) * len(widths), head_channels=heads)


def test_levels_with_different_res_block_counts_are_refused():
    """A down level with fewer res blocks than the others is not an SD-style UNet.

    Mutation caught: the one-res-block-count check in _layout dropped (one count taken at random)."""
    from diffusers import UNet2DConditionModel

    config = U.UNetLayout(block_out_channels=(64, 128), layers_per_block=2, attention_levels=(True, False),
                          cross_attention_dim=32).diffusers_config()
    with torch.device("meta"):
        sd = UNet2DConditionModel(**config).state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith("down_blocks.1.resnets.1.")}
    with pytest.raises(U.UNetFileError, match=r"different numbers of res blocks \[1, 2\]"):
        U.layout_from_diffusers(sd, "odd.pth")


def test_diffusers_to_ldm_checks_keys_and_shapes_itself(tiny_sd):
    """diffusers_to_ldm on a state dict with an extra key or a wrong shape says so (UNetFileError),
    rather than a KeyError or a silently renamed wrong tensor.

    Mutation caught: check_layout dropped from diffusers_to_ldm."""
    with pytest.raises(U.UNetFileError, match="unexpected keys: extra.weight"):
        U.diffusers_to_ldm({**tiny_sd, "extra.weight": torch.zeros(1)}, U.layout_from_diffusers(tiny_sd))
    with pytest.raises(U.UNetFileError, match=r"conv_out.bias \(5,\) \(expected \(4,\)\)"):
        U.diffusers_to_ldm({**tiny_sd, "conv_out.bias": torch.zeros(5)})


def _save(sd, path):
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path


@pytest.mark.parametrize("form", ["pth", "module_pth", "diffusers_safetensors", "ldm_safetensors",
                                  "checkpoint_safetensors", "wrapped_pth"])
def test_load_any_supported_form(tmp_path, tiny_sd, form):
    ldm = U.diffusers_to_ldm(tiny_sd)
    sd, name = {
        "pth": (tiny_sd, "u.pth"),
        "module_pth": ({f"module.{k}": v for k, v in tiny_sd.items()}, "u.pth"),
        "diffusers_safetensors": (tiny_sd, "u.safetensors"),
        "ldm_safetensors": (ldm, "u.safetensors"),
        "checkpoint_safetensors": ({**{f"model.diffusion_model.{k}": v for k, v in ldm.items()},
                                    "first_stage_model.decoder.conv_in.weight": torch.zeros(1)},
                                   "c.safetensors"),
        "wrapped_pth": ({"state_dict": tiny_sd, "step": torch.tensor(120000)}, "u.pth"),
    }[form]
    loaded, layout = F.load_unet_state_dict(_save(sd, tmp_path / name))
    assert layout == TINY_UNET
    assert loaded.keys() == ldm.keys()
    assert all(torch.equal(loaded[k], ldm[k]) for k in ldm)


@pytest.mark.parametrize("channels,hint", [(9, "stock Stable Diffusion inpainting"), (4, "text-to-image")])
def test_wrong_input_channels_say_what_to_get(tmp_path, channels, hint):
    layout = U.UNetLayout(in_channels=channels, block_out_channels=(64,), layers_per_block=1,
                          attention_levels=(True,), cross_attention_dim=32)
    sd = {k: torch.zeros(s) for k, s in layout.diffusers_shapes().items()}
    path = _save(sd, tmp_path / "sd2_inpainting.safetensors")
    with pytest.raises(U.UNetFileError) as err:
        F.load_unet_state_dict(path)
    msg = str(err.value)
    for part in (str(path), f"takes {channels} input channels", "not the Fashion-RAG UNet", hint,
                 "unet_120000.pth", "furio19/fashion-rag", "CC BY-NC 4.0"):
        assert part in msg


@pytest.mark.parametrize("naming,channels", [("diffusers", 28), ("ldm", 9), ("ldm", 28)])
def test_wrong_input_channels_in_either_naming_are_refused(tmp_path, naming, channels):
    """More channels than 27 are refused as well as fewer, and an LDM-layout file is checked too.

    Mutation caught: `in_channels == expected` loosened to `>=`; the channel check only on diffusers
    files."""
    layout = U.UNetLayout(in_channels=channels, block_out_channels=(64,), layers_per_block=1,
                          attention_levels=(True,), cross_attention_dim=32)
    sd = {k: torch.zeros(s) for k, s in layout.diffusers_shapes().items()}
    if naming == "ldm":
        sd = {f"model.diffusion_model.{k}": v for k, v in U.diffusers_to_ldm(sd, layout).items()}
    path = _save(sd, tmp_path / "other.safetensors")
    with pytest.raises(U.UNetFileError, match=f"takes {channels} input channels, so it is not"):
        F.load_unet_state_dict(path)
    assert F.load_unet_state_dict(path, in_channels=None)[1].in_channels == channels


def test_missing_unexpected_and_wrong_shapes_are_named(tmp_path, tiny_sd):
    sd = dict(tiny_sd)
    sd.pop("mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight")
    sd["mid_block.extra.weight"] = torch.zeros(3)
    sd["conv_out.bias"] = torch.zeros(5)
    path = _save(sd, tmp_path / "broken.pth")
    with pytest.raises(U.UNetFileError) as err:
        F.load_unet_state_dict(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "missing keys: mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight" in msg
    assert "unexpected keys: mid_block.extra.weight" in msg
    assert "conv_out.bias (5,) (expected (4,))" in msg


def test_pickled_objects_and_non_unets_are_refused(tmp_path):
    bad = tmp_path / "pickled.pth"
    torch.save({"weights": torch.nn.Linear(2, 2)}, bad)  # a module: needs unpickling code
    with pytest.raises(WeightFileError, match="weights_only") as err:
        F.load_unet_state_dict(bad)
    assert "Unsupported global" in str(err.value) and "weights_only=False" not in str(err.value)
    other = _save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(U.UNetFileError, match="not a UNet state dict"):
        F.load_unet_state_dict(other)
    with pytest.raises(FileNotFoundError):
        F.load_unet_state_dict(tmp_path / "nope.pth")


def test_convert_cli_round_trip(tmp_path, tiny_sd, capsys):
    src = _save(tiny_sd, tmp_path / "unet_120000.pth")
    out = tmp_path / "unet" / "fashion_rag_unet.safetensors"
    assert cli(["convert-unet", str(src), str(out), "--dtype", "fp32"]) == 0
    converted = load_file(str(out))
    expected = U.diffusers_to_ldm(tiny_sd)
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[k], expected[k]) for k in expected)
    reloaded, layout = F.load_unet_state_dict(out)  # the converted file loads like the original
    assert layout == TINY_UNET and reloaded.keys() == expected.keys()
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left behind

    assert cli(["convert-unet", str(src), str(out)]) == 1  # exists: refuse without --force
    assert "--force" in capsys.readouterr().err
    assert cli(["convert-unet", str(src), str(out), "--force"]) == 0  # default fp16
    assert all(v.dtype == torch.float16 for v in load_file(str(out)).values())
    assert cli(["convert-unet", str(src), str(tmp_path / "x.ckpt")]) == 1


def test_loaded_model_matches_diffusers_forward(comfy_runtime, tmp_path):
    """Parity 3: the MODEL our loader builds vs diffusers' UNet2DConditionModel, same weights."""
    unet = tiny_unet(seed=5)
    model = load_tiny_model(comfy_runtime, unet, tmp_path)
    inpaint = pack_module(comfy_runtime, "nodes.inpaint")
    assert inpaint.unet_in_channels(model) == 27
    assert model.model.model_type.name == "EPS"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 27, 8, 6, generator=g)
    t = torch.tensor([981.0, 21.0])
    ctx = torch.randn(2, 5, TINY_UNET.cross_attention_dim, generator=g)
    with torch.no_grad():
        ours = model.model.diffusion_model(x, t, context=ctx)
        theirs = unet(x, t, encoder_hidden_states=ctx).sample
    err = rel(ours, theirs)
    print(f"\nloader UNet vs diffusers UNet2DConditionModel: rel {err:.2e}")
    assert err < 1e-5


def test_loader_node_messages_and_cache(comfy_runtime, tmp_path):
    import folder_paths

    loader = pack_module(comfy_runtime, "nodes.unet_loader")
    msg = loader.FashionRAGUNetLoader.validate_inputs("unet_120000.pth")
    for part in ("'unet_120000.pth' was not found", "models/fashion_rag/unet/",
                 "furio19/fashion-rag", "CC BY-NC 4.0", "convert-unet"):
        assert part in msg

    folder = tmp_path / "unets"
    folder.mkdir()
    torch.save(tiny_unet(seed=6).state_dict(), folder / "mine.pth")
    bad = U.UNetLayout(in_channels=9, block_out_channels=(64,), layers_per_block=1,
                       attention_levels=(True,), cross_attention_dim=32)
    torch.save({k: torch.zeros(s) for k, s in bad.diffusers_shapes().items()}, folder / "sd_inpaint.pth")
    folder_paths.add_model_folder_path("fashion_rag_unet", str(folder))
    try:
        assert loader.FashionRAGUNetLoader.validate_inputs("mine.pth") is True

        first = loader.FashionRAGUNetLoader.execute("mine.pth", "fp32")[0]
        assert loader.FashionRAGUNetLoader.execute("mine.pth", "fp32")[0] is first  # cached
        assert first.model.diffusion_model.input_blocks[0][0].weight.dtype == torch.float32
        with pytest.raises(ValueError, match="not the Fashion-RAG UNet"):
            loader.FashionRAGUNetLoader.execute("sd_inpaint.pth", "default")

        # In a real prompt, through ComfyUI's validation and executor.
        prompt = {
            "1": {"class_type": "FashionRAGUNetLoader",
                  "inputs": {"unet_name": "mine.pth", "weight_dtype": "default"}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
        }
        assert "2" in comfy_runtime.run(prompt)
        prompt["1"]["inputs"]["unet_name"] = "unet_120000.pth"
        from fashion_rag.cli.comfy_server import PromptFailed

        with pytest.raises(PromptFailed, match="furio19/fashion-rag"):
            comfy_runtime.run(prompt)
    finally:  # leave the folder list and its cache as other tests expect them
        folder_paths.folder_names_and_paths["fashion_rag_unet"][0].remove(str(folder))
        folder_paths.filename_list_cache.pop("fashion_rag_unet", None)


def test_convert_cli_bf16_and_its_messages(tmp_path, tiny_sd, capsys):
    """--dtype bf16 writes bfloat16 tensors, equal to the converted state dict cast by torch; a
    refused output is one "convert-unet: ..." line naming the file and the fix, exit code 1.
    Mutations caught: bf16 mapped to float16; the "convert-unet:" prefix dropped; an error exit
    code other than 1."""
    src = _save(tiny_sd, tmp_path / "unet_120000.pth")
    out = tmp_path / "unet_bf16.safetensors"
    assert cli(["convert-unet", str(src), str(out), "--dtype", "bf16"]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    converted = load_file(str(out))
    expected = U.diffusers_to_ldm(tiny_sd)
    assert converted.keys() == expected.keys()
    assert all(v.dtype == torch.bfloat16 and torch.equal(v, expected[k].to(torch.bfloat16))
               for k, v in converted.items())
    assert cli(["convert-unet", str(src), str(out)]) == 1
    assert capsys.readouterr().err == f"convert-unet: {out} exists; pass overwrite (--force) to replace it\n"
    assert cli(["convert-unet", str(src), str(tmp_path / "x.ckpt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("convert-unet: ") and "x.ckpt" in err and ".safetensors" in err, err
