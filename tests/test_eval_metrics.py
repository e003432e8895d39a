"""The evaluation's image metrics, each against an independent computation.

FID against the textbook formula with scipy's sqrtm, KID against the unbiased MMD written out,
the Inception input against clean-fid's own dataset reader and the network against
torch-fidelity's own class, SSIM against scikit-image, LPIPS against the lpips package (the
same random weight files loaded by both), the weight files' layouts against torchvision,
torch-fidelity and lpips, and the test-set feature cache by counting forward passes.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from fashion_rag.evaluation.fid import (
    FeatureCache,
    clean_input,
    frechet_distance,
    inception_features,
    kernel_distance,
    load_inception,
    read_rgb,
    real_features,
)
from fashion_rag.evaluation.metric_weights import MetricWeightsError, find_metric_weights
from fashion_rag.evaluation.perceptual import load_lpips, lpips_distance, paired_pixels, ssim
from fashion_rag.files import cached_sha256

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LPIPS_FILE = "alex.pth"
CLIP_FILE = "open_clip_model.safetensors"


@pytest.fixture(scope="module")
def inception(metric_weights_dir):
    return load_inception(metric_weights_dir / INCEPTION_FILE)


def _image(path: Path, seed: int, size=(40, 30), mode="RGB") -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def _textbook_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s_a @ s_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(root).real)


# (generated, real, dimensions): more images than dimensions (sqrtm path), fewer (nuclear norm path)
@pytest.mark.parametrize("n_gen,n_real,dim", [(40, 30, 5), (6, 9, 16), (7, 5, 7)])
def test_fid_equals_the_textbook_formula(n_gen, n_real, dim):
    rng = np.random.default_rng(dim)
    gen = rng.normal(size=(n_gen, dim)) * rng.uniform(0.5, 2, dim)
    real = rng.normal(size=(n_real, dim)) + 0.7
    assert frechet_distance(gen, real) == pytest.approx(_textbook_fid(gen, real), rel=1e-6)
    assert frechet_distance(gen, gen) == pytest.approx(0, abs=1e-9)


def test_fid_and_kid_need_two_images_a_side():
    one, three = np.ones((1, 4)), np.arange(12.0).reshape(3, 4)
    assert frechet_distance(one, three) is None and frechet_distance(three, one) is None
    assert kernel_distance(one, three) is None and kernel_distance(three, one) is None


def _mmd(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, element by element."""
    m, d = len(x), x.shape[1]

    def k(a, b):
        return (float(a @ b) / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_equals_the_unbiased_polynomial_mmd():
    rng = np.random.default_rng(1)
    gen, real = rng.normal(size=(7, 6)), rng.normal(size=(7, 6)) + 0.4
    # Equal sizes under 1000: every subset is the whole set, so every draw gives this MMD.
    assert kernel_distance(gen, real) == pytest.approx(_mmd(gen, real), rel=1e-9)


def test_kid_with_more_real_images_averages_subsets_of_them():
    rng = np.random.default_rng(2)
    gen, real = rng.normal(size=(4, 3)), rng.normal(size=(6, 3)) + 0.3
    each = [_mmd(gen, real[list(rows)]) for rows in itertools.combinations(range(6), 4)]
    kid = kernel_distance(gen, real)
    assert min(each) <= kid <= max(each)
    assert kid == kernel_distance(gen, real)  # seeded: a report is reproducible
    assert kid != pytest.approx(_mmd(gen, real[:4]), rel=1e-6)  # not one fixed subset


def test_inception_input_is_clean_fids_own(tmp_path):
    from cleanfid.utils import ResizeDataset

    files = [_image(tmp_path / "rgb.png", 0), _image(tmp_path / "grey.jpg", 1, mode="L"),
             _image(tmp_path / "rgba.png", 2, size=(33, 50), mode="RGBA")]
    expected = ResizeDataset([str(f) for f in files], mode="clean")
    for i, f in enumerate(files):
        ours = clean_input(read_rgb(f, "image"))
        assert ours.dtype == np.float32 and ours.shape == (3, 299, 299)
        np.testing.assert_array_equal(ours, expected[i].numpy())


def test_inception_network_is_torch_fidelitys(metric_weights_dir, inception):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # torch-fidelity's own class loads the demo file strictly (so it has the real layout) ...
    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                         feature_extractor_weights_path=str(
                                             metric_weights_dir / INCEPTION_FILE))
    x = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (2, 3, 299, 299), dtype=np.uint8))
    with torch.inference_mode():
        expected = theirs(x)[0]
        ours = inception(x.float())
    # ... and gives the same features (at 299x299 its resize is the identity).
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_test_set_features_are_computed_once_and_again_for_a_changed_image(tmp_path, metric_weights_dir,
                                                                           inception):
    images = [_image(tmp_path / f"{i}_0.jpg", 10 + i) for i in range(3)]
    forwards: list[int] = []
    hook = inception.register_forward_hook(lambda _m, args, _o: forwards.append(args[0].shape[0]))
    try:
        cache = FeatureCache(tmp_path / "cache", cached_sha256(metric_weights_dir / INCEPTION_FILE))
        first, computed = real_features(inception, images, cache)
        assert (computed, sum(forwards)) == (3, 3)
        np.testing.assert_allclose(first, inception_features(inception, images, "image"), rtol=1e-6)
        forwards.clear()

        again, computed = real_features(inception, images, cache)
        assert (computed, sum(forwards)) == (0, 0)
        np.testing.assert_array_equal(again, first)
        # Other Inception weights in the same cache folder: nothing of the first network's is reused
        # (mutation caught: the cache keyed by the image alone).
        _, computed = real_features(inception, images, FeatureCache(tmp_path / "cache", "0" * 64))
        assert (computed, sum(forwards)) == (3, 3)
        forwards.clear()

        _image(images[1], 99)  # new pixels under the same name
        changed, computed = real_features(inception, images, cache)
        assert (computed, sum(forwards)) == (1, 1)
        np.testing.assert_array_equal(changed[[0, 2]], first[[0, 2]])
        assert not np.allclose(changed[1], first[1])

        sha = hashlib.sha256(images[0].read_bytes()).hexdigest()
        (damaged,) = cache.root.rglob(f"{sha}.npy")
        damaged.write_bytes(b"not an array")
        forwards.clear()
        _, computed = real_features(inception, images, cache)
        assert (computed, sum(forwards)) == (1, 1)
        np.save(damaged, np.zeros(3, dtype=np.float32))  # a readable array, of the wrong shape
        forwards.clear()
        repaired, computed = real_features(inception, images, cache)
        assert (computed, sum(forwards)) == (1, 1)
        np.testing.assert_array_equal(repaired[0], first[0])
    finally:
        hook.remove()


def test_ssim_equals_scikit_image(tmp_path):
    from skimage.metrics import structural_similarity

    gen = _image(tmp_path / "gen.png", 5, size=(48, 36))
    noisy = np.asarray(Image.open(gen)).astype(int) + np.random.default_rng(6).integers(-60, 60, (48, 36, 3))
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).resize((72, 96)).save(tmp_path / "truth.jpg")
    a, b = paired_pixels(gen, tmp_path / "truth.jpg")
    # the reference's ground truth: PIL's resize to the generated size with its default filter
    truth = np.asarray(Image.open(tmp_path / "truth.jpg").convert("RGB").resize((36, 48))) / 255.0
    np.testing.assert_allclose(b[0].permute(1, 2, 0).numpy(), truth, atol=1e-6)
    expected = structural_similarity(np.asarray(Image.open(gen)) / 255.0, truth, channel_axis=2,
                                     gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=1.0)
    assert 0.05 < expected < 0.95
    assert ssim(a, b) == pytest.approx(expected, abs=2e-6)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-6)


def test_lpips_equals_the_lpips_package(tmp_path, metric_weights_dir):
    import lpips
    import torchvision

    ours = load_lpips(metric_weights_dir / ALEXNET_FILE, metric_weights_dir / LPIPS_FILE)
    theirs = lpips.LPIPS(net="alex", pnet_rand=True, model_path=str(metric_weights_dir / LPIPS_FILE),
                         verbose=False)
    alexnet = torchvision.models.alexnet()
    # strict: the real layout
    alexnet.load_state_dict(torch.load(metric_weights_dir / ALEXNET_FILE, weights_only=True))
    for block in range(1, 6):
        for index, layer in getattr(theirs.net, f"slice{block}").named_children():
            layer.load_state_dict(alexnet.features[int(index)].state_dict())
    a, b = paired_pixels(_image(tmp_path / "gen.png", 7, size=(64, 48)), _image(tmp_path / "t.png", 8))
    with torch.inference_mode():
        expected = float(theirs(a, b, normalize=True))
    assert expected > 1e-4
    assert lpips_distance(ours, a, b) == pytest.approx(expected, rel=1e-5)
    assert lpips_distance(ours, a, a) == 0.0


def test_demo_files_have_the_published_layouts(tmp_path, metric_weights_dir):
    import lpips
    import torchvision

    assert sorted(p.name for p in metric_weights_dir.iterdir()) == sorted(
        [INCEPTION_FILE, ALEXNET_FILE, LPIPS_FILE, CLIP_FILE])
    alexnet_sd = torch.load(metric_weights_dir / ALEXNET_FILE, weights_only=True)
    torchvision.models.alexnet().load_state_dict(alexnet_sd)
    # The lpips package carries the published alex.pth itself (an old torch file saved on a GPU).
    published = Path(lpips.__file__).parent / "weights" / "v0.1" / LPIPS_FILE
    real = torch.load(published, weights_only=True, map_location="cpu")
    demo = torch.load(metric_weights_dir / LPIPS_FILE, weights_only=True)
    assert {k: v.shape for k, v in demo.items()} == {k: v.shape for k, v in real.items()}
    folder = tmp_path / "published_lpips"
    shutil.copytree(metric_weights_dir, folder, symlinks=True)
    (folder / LPIPS_FILE).unlink()
    shutil.copy(published, folder / LPIPS_FILE)
    net = load_lpips(folder / ALEXNET_FILE, find_metric_weights(folder, paired=True).lpips)
    torch.testing.assert_close(net.lin2.model[1].weight, real["lin2.model.1.weight"])
    weights = find_metric_weights(metric_weights_dir, paired=True)
    assert (weights.inception.name, weights.alexnet.name, weights.lpips.name, weights.clip.name) == (
        INCEPTION_FILE, ALEXNET_FILE, LPIPS_FILE, CLIP_FILE)
    settings = weights.sha256()
    for name in (INCEPTION_FILE, ALEXNET_FILE, LPIPS_FILE, CLIP_FILE):
        digest = hashlib.sha256((metric_weights_dir / name).read_bytes()).hexdigest()
        assert sum(v == f"{name} sha256 {digest}" for v in settings.values()) == 1


@pytest.mark.parametrize("name,source", [
    (INCEPTION_FILE, "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE),
    (CLIP_FILE, "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
    (ALEXNET_FILE, "https://download.pytorch.org/models/" + ALEXNET_FILE),
    (LPIPS_FILE, "lpips/weights/v0.1/alex.pth"),
])
def test_a_missing_weight_file_is_named_with_its_folder_and_source(tmp_path, metric_weights_dir, name,
                                                                   source):
    folder = tmp_path / "weights"
    shutil.copytree(metric_weights_dir, folder, symlinks=True)
    (folder / name).unlink()
    with pytest.raises(MetricWeightsError) as err:
        find_metric_weights(folder, paired=True)
    message = str(err.value)
    assert name in message and str(folder) in message and source in message
    assert "\n" not in message


def test_unpaired_runs_need_no_lpips_files(tmp_path, metric_weights_dir):
    folder = tmp_path / "weights"
    folder.mkdir()
    for name in (INCEPTION_FILE, CLIP_FILE):
        (folder / name).symlink_to(metric_weights_dir / name)
    weights = find_metric_weights(folder, paired=False)
    assert weights.lpips is None and weights.alexnet is None
    with pytest.raises(MetricWeightsError, match=ALEXNET_FILE):
        find_metric_weights(folder, paired=True)


def test_a_missing_folder_or_a_wrong_file_says_so(tmp_path, metric_weights_dir):
    with pytest.raises(MetricWeightsError) as err:
        find_metric_weights(tmp_path / "nowhere", paired=False)
    assert str(tmp_path / "nowhere") in str(err.value) and "does not exist" in str(err.value)
    folder = tmp_path / "weights"
    shutil.copytree(metric_weights_dir, folder, symlinks=True)
    sd = torch.load(metric_weights_dir / INCEPTION_FILE, weights_only=True)
    del sd["Mixed_7c.branch_pool.conv.weight"]
    (folder / INCEPTION_FILE).unlink()
    torch.save(sd, folder / INCEPTION_FILE)
    with pytest.raises(MetricWeightsError) as err:
        find_metric_weights(folder, paired=False)
    assert INCEPTION_FILE in str(err.value) and "Mixed_7c.branch_pool.conv.weight" in str(err.value)


def test_a_missing_metric_library_is_named_with_its_pip_command(tmp_path, metric_weights_dir):
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(textwrap.dedent("""
        import importlib.abc, sys
        class _NoCleanFid(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "cleanfid":
                    raise ModuleNotFoundError("No module named 'cleanfid'", name="cleanfid")
        sys.meta_path.insert(0, _NoCleanFid())
    """))
    code = ("import sys; from pathlib import Path; "
            "from fashion_rag.evaluation.metric_weights import find_metric_weights\n"
            "try:\n    find_metric_weights(Path(sys.argv[1]), paired=False)\n"
            "except ValueError as exc:\n    print(exc); sys.exit(2)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(block), str(Path(__file__).parents[1])]))
    run = subprocess.run([sys.executable, "-c", code, str(metric_weights_dir)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stdout.strip() == ("The evaluation metrics need the Python packages clean-fid, which "
                                  "are not installed: pip install clean-fid")


def test_ssim_at_the_smallest_size_equals_scikit_image_and_smaller_is_refused():
    """11x11 images (off the 8-bit grid) leave one pixel whose window lies inside: SSIM is
    scikit-image's there; at 10x10 no window fits and SSIM is refused, not a mean of nothing.
    Mutation caught: the size check at < instead of <= (10x10 gave nan)."""
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(11)
    a, b = rng.random((11, 11, 3)), rng.random((11, 11, 3))

    def tensor(x):
        return torch.from_numpy(x).permute(2, 0, 1)[None].float()

    expected = structural_similarity(a.astype(np.float32), b.astype(np.float32), channel_axis=2,
                                     gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=1.0)
    assert ssim(tensor(a), tensor(b)) == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="SSIM needs images larger than 10x10 pixels"):
        ssim(tensor(a[:10, :10]), tensor(b[:10, :10]))
