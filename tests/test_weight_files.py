"""Weight files at the edges of fashion_rag/weights.py: training wrappers, DataParallel prefixes,
file suffixes in capitals, the listing of many bad keys, and meta-device construction that keeps
tied parameters tied. Expected values are literals.
Mutations caught (each planted and seen failing here; all passed the suite before): a wrapper of 4
keys no longer unwrapped (bound `<= 3`); the `module.` prefix stripped when only some keys have
it; ".SAFETENSORS" read as a torch file; the "(N in all)" count dropped from a long key listing;
materialize() giving each user of a shared parameter its own copy; parameters_on_meta() replacing a
parameter that is already meta (a weight tied during construction came apart)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from fashion_rag.weights import (
    WeightFileError,
    check_state_dict,
    materialize,
    parameters_on_meta,
    read_state_dict,
    strip_prefix,
)

SD = {"a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([0.5])}


def test_training_wrappers_of_up_to_4_keys_are_unwrapped(tmp_path):
    four = {"state_dict": dict(SD), "epoch": 3, "step": 10, "lr": 0.1}
    torch.save(four, tmp_path / "four.pth")
    got = read_state_dict(tmp_path / "four.pth")
    assert list(got) == ["a.weight", "b"] and torch.equal(got["a.weight"], SD["a.weight"])
    torch.save({**four, "best": 1.0}, tmp_path / "five.pth")  # more: not a training wrapper of ours
    with pytest.raises(WeightFileError, match="holds no state dict of tensors"):
        read_state_dict(tmp_path / "five.pth")
    torch.save({"model": {f"module.{k}": v for k, v in SD.items()}}, tmp_path / "dp.pth")
    assert list(read_state_dict(tmp_path / "dp.pth")) == ["a.weight", "b"]


def test_a_prefix_is_stripped_only_when_every_key_has_it():
    assert list(strip_prefix({"module.x": SD["b"], "module.y": SD["b"]}, "module.")) == ["x", "y"]
    assert list(strip_prefix({"module.x": SD["b"], "y": SD["b"]}, "module.")) == ["module.x", "y"]
    assert strip_prefix({}, "module.") == {}


def test_a_capitalised_safetensors_suffix_is_read_as_safetensors(tmp_path):
    save_file(SD, tmp_path / "W.SAFETENSORS")
    got = read_state_dict(tmp_path / "W.SAFETENSORS")
    assert torch.equal(got["b"], SD["b"])


def test_a_long_key_listing_says_how_many_in_all():
    expected = {f"k{i:02d}": (1,) for i in range(13)}
    with pytest.raises(WeightFileError) as err:
        check_state_dict({}, expected, "f.pth", "a test model")
    message = str(err.value)
    assert message.startswith("f.pth is not a test model: missing keys: k00, k01,")
    assert "k11, ... (13 in all)." in message and "k12" not in message
    with pytest.raises(WeightFileError, match=r"missing keys: k00, k01, k02, k03, k04, k05, k06, k07, "
                                              r"k08, k09, k10, k11\. The file"):
        check_state_dict({}, {k: v for k, v in expected.items() if k != "k12"}, "f.pth", "a test model")


def test_tied_parameters_stay_tied_on_meta_and_after_materialize():
    with parameters_on_meta():
        a = torch.nn.Linear(3, 2)
        b = torch.nn.Module()
        b.weight = a.weight  # tied while built: registered a second time, already on meta
    assert a.weight.is_meta and b.weight is a.weight
    holder = torch.nn.ModuleDict({"a": a, "b": b})
    materialize(holder)
    assert not a.weight.is_meta and a.weight.shape == (2, 3)
    assert b.weight is a.weight and a.bias.shape == (2,)


def test_a_folder_or_a_pipe_in_place_of_a_weight_file_says_so(tmp_path, capsys):
    """A folder given where a weight file belongs (`convert-unet models/unet/ out.safetensors`) was
    "no such file", sending the user to look for a file that is there; a FIFO likewise. Now each
    says what it is, in one line, exit 1 from convert-unet; a missing file stays "no such file"."""
    import os

    from fashion_rag.cli import main

    (tmp_path / "unet").mkdir()
    with pytest.raises(WeightFileError, match=r"unet: a folder, not a weight file \(a UNet\): give the file"):
        read_state_dict(tmp_path / "unet", "a UNet")
    os.mkfifo(tmp_path / "pipe.pth")
    with pytest.raises(WeightFileError, match=r"pipe.pth: not a regular file \(a pipe or a device\)"):
        read_state_dict(tmp_path / "pipe.pth")
    with pytest.raises(FileNotFoundError, match="gone.pth: no such file"):
        read_state_dict(tmp_path / "gone.pth")
    assert main(["convert-unet", str(tmp_path / "unet"), str(tmp_path / "out.safetensors")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("convert-unet: ") and "a folder, not a weight file" in err
    assert not (tmp_path / "out.safetensors").exists()
