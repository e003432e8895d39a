"""FID/KID details the formula tests leave open (fashion_rag/evaluation/fid.py): KID's default
subset size, the test-set feature cache's refusals, its log line and progress, each against
numpy written out here or counts by hand."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest
from PIL import Image

from fashion_rag.evaluation.fid import FeatureCache, kernel_distance, load_inception, real_features
from fashion_rag.files import cached_sha256

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def _unbiased_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """clean-fid's polynomial MMD^2, k(a, b) = (a.b / d + 1)^3, on the whole sets (numpy, by hand)."""
    m, d = len(x), x.shape[1]
    k_xx, k_yy, k_xy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    off = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(off - 2 * k_xy.sum() / m**2)


def test_kid_subsets_are_whole_sets_up_to_1000_images():
    """120 images a side: clean-fid's subsets of min(n, 1000) rows are the whole sets (in some
    order), so KID is the whole sets' MMD exactly. Mutation caught: a default subset size of 100
    (KID averaged over random 100-row subsets)."""
    rng = np.random.default_rng(5)
    gen, real = rng.normal(size=(120, 4)), rng.normal(size=(120, 4)) * 1.3 + 0.2
    assert kernel_distance(gen, real) == pytest.approx(_unbiased_mmd(gen, real), rel=1e-9)


def test_a_cached_feature_that_is_not_finite_is_not_used(tmp_path):
    """Mutation caught: the cache's finiteness check dropped (a NaN feature file served as is)."""
    cache = FeatureCache(tmp_path, "ab" * 32)
    good = np.arange(2048) / 3.0 + 0.1  # off the float32 grid
    cache.put("1" * 64, good)
    bad = good.copy()
    bad[7] = np.nan
    cache.put("2" * 64, bad)
    bad[7] = np.inf
    cache.put("3" * 64, bad)
    np.testing.assert_array_equal(cache.get("1" * 64), good.astype(np.float32).astype(np.float64))
    assert cache.get("1" * 64).dtype == np.float64
    assert cache.get("2" * 64) is None and cache.get("3" * 64) is None and cache.get("4" * 64) is None


def test_cached_and_new_test_images_are_logged_counted_and_reported(tmp_path, metric_weights_dir, caplog):
    """One image cached, one cached as NaN (computed again), one new listed twice: 2 computed, the
    log line says 2 and 1 cached, progress ends at (2, 2). Mutations caught: the log's cached
    count being all paths; progress reporting the batch's start instead of its end; the NaN
    cache entry used."""
    net = load_inception(metric_weights_dir / INCEPTION_FILE)
    images = []
    for i in range(3):
        pixels = np.random.default_rng(40 + i).integers(0, 256, (30, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        images.append(tmp_path / f"{i}.png")
    cache = FeatureCache(tmp_path / "cache", cached_sha256(metric_weights_dir / INCEPTION_FILE))
    sha = [hashlib.sha256(p.read_bytes()).hexdigest() for p in images]
    stored = np.linspace(-1, 1, 2048) + 1e-9
    cache.put(sha[0], stored)
    cache.put(sha[1], np.full(2048, np.nan))
    calls: list[tuple[int, int]] = []
    with caplog.at_level(logging.INFO, logger="fashion_rag"):
        feats, computed = real_features(net, [*images, images[2]], cache,
                                        progress=lambda done, total: calls.append((done, total)))
    assert computed == 2 and calls == [(2, 2)]
    assert "computing the Inception features of 2 test images (1 cached)" in caplog.text
    assert feats.shape == (4, 2048) and np.isfinite(feats).all()
    np.testing.assert_array_equal(feats[0], stored.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(feats[2], feats[3])


def test_an_inception_file_without_batchnorm_counters_loads_the_same(tmp_path, metric_weights_dir):
    """BatchNorm's num_batches_tracked is a training counter: a file saved without it gives the same
    features. Mutation caught: the missing counters not filled in (the file refused)."""
    import torch

    full = torch.load(metric_weights_dir / INCEPTION_FILE, weights_only=True)
    counters = [k for k in full if k.endswith("num_batches_tracked")]
    assert counters
    torch.save({k: v for k, v in full.items() if k not in counters}, tmp_path / INCEPTION_FILE)
    x = torch.from_numpy(np.random.default_rng(8).uniform(0, 255, (1, 3, 299, 299)).astype(np.float32))
    with torch.inference_mode():
        expected = load_inception(metric_weights_dir / INCEPTION_FILE)(x)
        got = load_inception(tmp_path / INCEPTION_FILE)(x)
    assert torch.equal(got, expected)
