"""find_metric_weights beyond test_eval_metrics: which of the accepted CLIP file names is taken,
what the messages for a missing CLIP file or folder list, the LPIPS files' layouts checked up
front, the settings' digests of an unpaired run, and a metric library Python cannot look up.
Names, sources and digests are literals from docs/metrics.md and hashlib, not the pack's
constants.
"""

from __future__ import annotations

import hashlib
import sys
import types
from pathlib import Path

import pytest
import torch

from fashion_rag.evaluation.metric_weights import MetricWeightsError, find_metric_weights

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LPIPS_FILE = "alex.pth"
CLIP_FILE = "open_clip_model.safetensors"
CLIP_BIN = "open_clip_pytorch_model.bin"


def _folder(tmp_path: Path, metric_weights_dir: Path,
            names=(INCEPTION_FILE, ALEXNET_FILE, LPIPS_FILE)) -> Path:
    folder = tmp_path / "weights"
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).symlink_to(metric_weights_dir / name)
    return folder


def test_a_missing_clip_file_names_both_accepted_names_and_the_source(tmp_path, metric_weights_dir):
    """Mutation caught: the other accepted names left out of the message (`len(names) > 2`); the
    message's first name taken from the end of the list."""
    folder = _folder(tmp_path, metric_weights_dir)
    with pytest.raises(MetricWeightsError) as err:
        find_metric_weights(folder, paired=False)
    assert (f"The CLIP-T / CLIP-I model (OpenCLIP ViT-H-14, laion2b_s32b_b79k) file {CLIP_FILE} is not in "
            f"the metric weights folder {folder}. Put {CLIP_FILE} (or {CLIP_BIN} from the same place) from "
            "the Hugging Face hub repository laion/CLIP-ViT-H-14-laion2B-s32B-b79K (licence: MIT) there"
            ) in str(err.value)


def test_the_published_clip_name_comes_first_and_a_folder_of_that_name_is_no_file(
        tmp_path, metric_weights_dir):
    """Both CLIP names present: the published one (.safetensors) is taken; a folder under that
    name is skipped for the .bin file.
    Mutation caught: the names tried in reverse order; a path taken if it exists (a folder)."""
    folder = _folder(tmp_path, metric_weights_dir)
    (folder / CLIP_FILE).symlink_to(metric_weights_dir / CLIP_FILE)
    (folder / CLIP_BIN).symlink_to(metric_weights_dir / CLIP_FILE)
    assert find_metric_weights(folder, paired=True).clip == folder / CLIP_FILE
    (folder / CLIP_FILE).unlink()
    (folder / CLIP_FILE).mkdir()
    assert find_metric_weights(folder, paired=True).clip == folder / CLIP_BIN


def test_a_missing_folder_lists_the_files_the_run_needs(tmp_path):
    """Mutation caught: the LPIPS files listed for unpaired runs instead of paired ones."""
    listed = {}
    for paired in (False, True):
        with pytest.raises(MetricWeightsError) as err:
            find_metric_weights(tmp_path / "nowhere", paired=paired)
        listed[paired] = str(err.value)
    for paired, message in listed.items():
        assert INCEPTION_FILE in message and CLIP_FILE in message
        assert (ALEXNET_FILE in message, f", {LPIPS_FILE}" in message) == (paired, paired), message


def test_wrong_lpips_files_are_refused_before_any_run(tmp_path, metric_weights_dir):
    """An alex.pth lacking a layer and an AlexNet file lacking one are named, with the key, when
    the files are found (paired), not hours later when LPIPS is loaded.
    Mutation caught: the LPIPS files' layout check dropped from find_metric_weights."""
    for name, key in ((LPIPS_FILE, "lin3.model.1.weight"), (ALEXNET_FILE, "features.8.bias")):
        every = (INCEPTION_FILE, ALEXNET_FILE, LPIPS_FILE, CLIP_FILE)
        folder = _folder(tmp_path / name, metric_weights_dir, names=every)
        sd = torch.load(metric_weights_dir / name, weights_only=True)
        del sd[key]
        (folder / name).unlink()
        torch.save(sd, folder / name)
        with pytest.raises(MetricWeightsError) as err:
            find_metric_weights(folder, paired=True)
        assert name in str(err.value) and key in str(err.value)
        find_metric_weights(folder, paired=False)  # unpaired: the LPIPS files are not read


def test_an_unpaired_runs_settings_list_its_two_files_digests(tmp_path, metric_weights_dir):
    """Mutation caught: the files an unpaired run has none of (None) not left out (a crash)."""
    folder = _folder(tmp_path, metric_weights_dir, names=(INCEPTION_FILE, CLIP_FILE))
    settings = find_metric_weights(folder, paired=False).sha256()
    expected = {f"{name} sha256 {hashlib.sha256((metric_weights_dir / name).read_bytes()).hexdigest()}"
                for name in (INCEPTION_FILE, CLIP_FILE)}
    assert len(settings) == 2 and set(settings.values()) == expected


def test_a_metric_library_python_cannot_look_up_is_named(metric_weights_dir, monkeypatch):
    """A module in sys.modules without a spec (find_spec raises ValueError) counts as missing,
    named with its pip command, as a missing one.
    Mutation caught: only ImportError caught around find_spec (the ValueError escapes)."""
    monkeypatch.setitem(sys.modules, "scipy", types.ModuleType("scipy"))  # no __spec__ (restored after)
    with pytest.raises(ValueError) as err:
        find_metric_weights(metric_weights_dir, paired=False)
    assert str(err.value) == ("The evaluation metrics need the Python packages scipy, which are not "
                              "installed: pip install scipy")
