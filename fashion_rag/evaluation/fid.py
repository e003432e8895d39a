"""FID and KID as the reference computes them: clean-fid's "clean" mode on Inception-v3 features.

Per image (clean-fid 0.1.35, which the reference vendors): the file decoded to 8-bit RGB, each
channel resized to 299x299 as a float image with PIL's bicubic filter (no rounding after), then
the TensorFlow FID Inception network, whose 2048 pool features are the image's features. The
network is torch-fidelity's port of it (the same graph clean-fid runs as TorchScript, which the
pack never loads), built here from torch-fidelity's blocks and filled from its weights file.

    FID = |mu_g - mu_r|^2 + tr(S_g) + tr(S_r) - 2 tr((S_g S_r)^(1/2))
        means and (n-1)-normalised covariances of the generated and real features.
    KID = mean over 100 random subsets of m = min(n_g, n_r, 1000) rows per side (without
        replacement) of the unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3.

The real (test-set) features are cached per image, keyed by the image's sha256 and the
network's, so they are computed once however often a run is rescored; a changed image is
recomputed.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..files import MAX_IMAGE_BYTES, UnreadableFileError, atomic_write, read_regular
from ..logs import log
from .metric_weights import INCEPTION, check_keys, load_weights

FEATURES = 2048
CLEAN_SIZE = 299
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # clean-fid's kernel_distance defaults
CACHE_VERSION = "clean-v1"  # what a cached feature depends on besides the two hashes
_CACHE_BYTES = 64 << 10  # a cached feature file is 8 KiB

Progress = Callable[[int, int], None]


def inception_network() -> torch.nn.Module:
    """torch-fidelity's FID Inception-v3, with its weights file's state-dict keys, not loaded."""
    from torch_fidelity.feature_extractor_inceptionv3 import (
        BasicConv2d,
        InceptionA,
        InceptionB,
        InceptionC,
        InceptionD,
        InceptionE_1,
        InceptionE_2,
    )

    # torch-fidelity's own class downloads or unpickles (weights_only=False) in its __init__,
    # and takes only 8-bit input that it resizes itself; clean mode feeds float 299x299 input.
    layers = [
        ("Conv2d_1a_3x3", BasicConv2d(3, 32, kernel_size=3, stride=2)),
        ("Conv2d_2a_3x3", BasicConv2d(32, 32, kernel_size=3)),
        ("Conv2d_2b_3x3", BasicConv2d(32, 64, kernel_size=3, padding=1)),
        ("MaxPool_1", torch.nn.MaxPool2d(kernel_size=3, stride=2)),
        ("Conv2d_3b_1x1", BasicConv2d(64, 80, kernel_size=1)),
        ("Conv2d_4a_3x3", BasicConv2d(80, 192, kernel_size=3)),
        ("MaxPool_2", torch.nn.MaxPool2d(kernel_size=3, stride=2)),
        ("Mixed_5b", InceptionA(192, pool_features=32)),
        ("Mixed_5c", InceptionA(256, pool_features=64)),
        ("Mixed_5d", InceptionA(288, pool_features=64)),
        ("Mixed_6a", InceptionB(288)),
        ("Mixed_6b", InceptionC(768, channels_7x7=128)),
        ("Mixed_6c", InceptionC(768, channels_7x7=160)),
        ("Mixed_6d", InceptionC(768, channels_7x7=160)),
        ("Mixed_6e", InceptionC(768, channels_7x7=192)),
        ("Mixed_7a", InceptionD(768)),
        ("Mixed_7b", InceptionE_1(1280)),
        ("Mixed_7c", InceptionE_2(2048)),
        ("AvgPool", torch.nn.AdaptiveAvgPool2d(output_size=(1, 1))),
    ]
    return _PoolFeatures(layers)


class _PoolFeatures(torch.nn.Module):
    def __init__(self, layers: list[tuple[str, torch.nn.Module]]) -> None:
        super().__init__()
        self.order = [name for name, _ in layers]
        for name, layer in layers:
            self.add_module(name, layer)
        self.fc = torch.nn.Linear(FEATURES, 1008)  # in the weights file; FID does not use it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, 299, 299] float in [0, 255] -> [N, 2048] pool features (clean-fid's layers call)."""
        x = (x - 128) / 128
        for name in self.order:
            x = getattr(self, name)(x)
        return torch.flatten(x, 1)


def inception_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The Inception weights file's tensors, checked against the network's keys and shapes."""
    sd = load_weights(INCEPTION, path)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in inception_network().state_dict().items()}
    # BatchNorm's batch counter is a training statistic: a file saved without it loads the same.
    for key in expected:
        if key.endswith("num_batches_tracked"):
            sd.setdefault(key, torch.tensor(0, dtype=torch.long))
    check_keys(INCEPTION, path, sd, expected)
    return sd


def load_inception(path: Path, device: str = "cpu") -> torch.nn.Module:
    with torch.device("meta"):  # no random initialisation of weights about to be replaced
        net = inception_network()
    net.load_state_dict(inception_state_dict(path), assign=True)
    return net.eval().requires_grad_(False).to(device)


def read_bytes(path: Path, what: str) -> bytes:
    try:
        return read_regular(path, MAX_IMAGE_BYTES, what)
    except (OSError, UnreadableFileError) as exc:
        raise ValueError(f"{what} {path} cannot be read ({exc})") from None


def decode_rgb(data: bytes, path: Path, what: str) -> np.ndarray:
    """An image file's pixels as [H, W, 3] uint8 RGB (PIL's convert, as clean-fid reads them)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.array(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what} {path} is not a readable image ({exc})") from None


def read_rgb(path: Path, what: str) -> np.ndarray:
    return decode_rgb(read_bytes(path, what), path, what)


def clean_input(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 -> [3, 299, 299] float32 in [0, 255]: clean-fid's "clean" resize."""
    from cleanfid.resize import build_resizer

    return build_resizer("clean")(rgb).transpose(2, 0, 1)


@torch.inference_mode()
def inception_features(net: torch.nn.Module, paths: Sequence[Path], what: str, batch_size: int = 32,
                       progress: Progress | None = None) -> np.ndarray:
    """[N, 2048] float64 features of image files, read a batch at a time (a test set decoded
    whole would take gigabytes)."""
    device = next(net.parameters()).device
    out = np.zeros((len(paths), FEATURES), dtype=np.float64)
    for start in range(0, len(paths), batch_size):
        batch = np.stack([clean_input(read_rgb(p, what)) for p in paths[start : start + batch_size]])
        out[start : start + len(batch)] = net(torch.from_numpy(batch).to(device)).double().cpu().numpy()
        if progress:
            progress(start + len(batch), len(paths))
    return out


class FeatureCache:
    """Inception features of real images, one .npy per image, keyed by image and network sha256."""

    def __init__(self, cache_dir: Path, network_sha256: str) -> None:
        self.root = Path(cache_dir) / f"inception-{network_sha256[:16]}-{CACHE_VERSION}"

    def _path(self, image_sha256: str) -> Path:
        return self.root / image_sha256[:2] / f"{image_sha256}.npy"

    def get(self, image_sha256: str) -> np.ndarray | None:
        path = self._path(image_sha256)
        try:
            data = read_regular(path, _CACHE_BYTES, "cached features")
            feat = np.load(io.BytesIO(data), allow_pickle=False)
        except (OSError, ValueError, EOFError):  # absent, unreadable or damaged: computed again
            return None
        if feat.shape != (FEATURES,) or not np.isfinite(feat).all():
            return None
        return feat.astype(np.float64)

    def put(self, image_sha256: str, feat: np.ndarray) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.save(f, feat.astype(np.float32), allow_pickle=False)

        atomic_write(self._path(image_sha256), write)


def real_features(net: torch.nn.Module, paths: Sequence[Path], cache: FeatureCache,
                  progress: Progress | None = None) -> tuple[np.ndarray, int]:
    """[N, 2048] features of the real images, from the cache where it has them; and how many
    were computed. Duplicate paths are read once."""
    hashes: list[str] = []
    todo: dict[str, Path] = {}
    known: dict[str, np.ndarray] = {}
    for path in paths:
        sha = hashlib.sha256(read_bytes(path, "test image")).hexdigest()
        hashes.append(sha)
        if sha in known or sha in todo:
            continue
        cached = cache.get(sha)
        if cached is not None:
            known[sha] = cached
        else:
            todo[sha] = path
    if todo:
        log.info("FID/KID: computing the Inception features of %d test images (%d cached)",
                 len(todo), len(known))
        feats = inception_features(net, list(todo.values()), "test image", progress=progress)
        for sha, feat in zip(todo, feats, strict=True):
            cache.put(sha, feat)
            known[sha] = feat.astype(np.float32).astype(np.float64)  # as read back from the cache
    return np.stack([known[h] for h in hashes]) if hashes else np.zeros((0, FEATURES)), len(todo)


def frechet_distance(gen: np.ndarray, real: np.ndarray) -> float | None:
    """FID of two feature sets [n, d] (None with fewer than 2 rows on a side: no covariance).

    tr((S_g S_r)^(1/2)) is the sum of the square roots of S_g S_r's eigenvalues, which are those
    of (A_g A_r^T)(A_g A_r^T)^T / ((n_g-1)(n_r-1)) for the centred features A: the nuclear norm
    of the small n_g x n_r matrix A_g A_r^T. With fewer images than dimensions (a category of
    Dress Code's test set has 1,800 for 2,048 features) the covariances are singular, and this
    is exact where the d x d matrix square root is ill-conditioned (and cheaper when a side is
    small, as in a --limit run).
    """
    if len(gen) < 2 or len(real) < 2:
        return None
    gen, real = np.asarray(gen, np.float64), np.asarray(real, np.float64)
    a_g, a_r = gen - gen.mean(0), real - real.mean(0)
    c_g, c_r = len(gen) - 1, len(real) - 1
    diff = gen.mean(0) - real.mean(0)
    traces = (a_g**2).sum() / c_g + (a_r**2).sum() / c_r
    if min(len(gen), len(real)) <= gen.shape[1]:
        cross = np.linalg.svd(a_g @ a_r.T, compute_uv=False).sum() / math.sqrt(c_g * c_r)
    else:
        from scipy.linalg import sqrtm

        cross = np.trace(sqrtm((a_g.T @ a_g / c_g) @ (a_r.T @ a_r / c_r))).real
    return float(diff @ diff + traces - 2 * cross)


def kernel_distance(gen: np.ndarray, real: np.ndarray, subsets: int = KID_SUBSETS,
                    subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> float | None:
    """KID of two feature sets (None with fewer than 2 rows on a side: the unbiased estimate
    divides by m - 1). clean-fid's draws use numpy's global generator, unseeded; a seeded one
    here makes a report reproducible."""
    m = min(len(gen), len(real), subset_size)
    if m < 2:
        return None
    gen, real = np.asarray(gen, np.float64), np.asarray(real, np.float64)
    d = gen.shape[1]
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(subsets):
        x = gen[rng.choice(len(gen), m, replace=False)]
        y = real[rng.choice(len(real), m, replace=False)]
        k_xx, k_yy, k_xy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        within = k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)
        total += within / (m * (m - 1)) - 2 * k_xy.sum() / (m * m)
    return float(total / subsets)
