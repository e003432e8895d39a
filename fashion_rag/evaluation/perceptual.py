"""LPIPS and SSIM of a generated image against its ground truth (paired runs), as the reference
computes them: torchmetrics' LearnedPerceptualImagePatchSimilarity(net_type="alex",
normalize=True) and StructuralSimilarityIndexMeasure(data_range=1.0) (an 11x11 Gaussian window
of sigma 1.5, k1 0.01, k2 0.03, the 5-pixel border left out as in its version 0.11.4), each the
mean over the images of the per-image value.

Sizes: the reference compares at its generation size (512x384): the generated image as saved,
the ground-truth photo resized to it with PIL's default filter for RGB (bicubic). Here the
ground truth is resized to whatever size the image was generated at.

The LPIPS network is torchmetrics' own, built without its download (random backbone, no
linear layers) and filled from two local files: torchvision's AlexNet (its `features` layers)
and the lpips v0.1 linear layers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .fid import read_rgb
from .metric_weights import ALEXNET, LPIPS, check_keys, load_weights

SSIM_BORDER = 5  # (11 - 1) / 2: the Gaussian window of sigma 1.5 has int(3.5 * 1.5 + 0.5) * 2 + 1 taps


def lpips_network() -> torch.nn.Module:
    """torchmetrics' LPIPS (AlexNet, dropout layers as in the published linear layers), unloaded."""
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    # pretrained=False: no linear layers read from torchmetrics' own file; pnet_rand=True: no
    # torchvision download of the backbone. Both come from the metric weights folder.
    return _NoTrainLpips(pretrained=False, net="alex", pnet_rand=True)


def _backbone_key(key: str) -> str:
    """LPIPS's key of an AlexNet layer -> torchvision's: LPIPS cuts `features` into slices that
    keep the layers' indices, so net.slice2.3.weight is features.3.weight."""
    _, _, rest = key.split(".", 2)
    return f"features.{rest}"


def lpips_state_dict(alexnet: Path, lpips: Path) -> dict[str, torch.Tensor]:
    """The LPIPS network's tensors from the two files, each checked against its layout."""
    with torch.device("meta"):
        net = lpips_network()
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    backbone = {_backbone_key(k): k for k in shapes if k.startswith("net.")}
    # torchvision's file also holds the classifier, which LPIPS does not use.
    tv = {k: v for k, v in load_weights(ALEXNET, alexnet).items() if k.startswith("features.")}
    check_keys(ALEXNET, alexnet, tv, {k: shapes[ours] for k, ours in backbone.items()})
    lins = load_weights(LPIPS, lpips)
    # The module lists its linear layers twice (lin0..lin4 and lins.0..4, the same tensors);
    # the published file holds lin0..lin4.
    check_keys(LPIPS, lpips, lins, {k: s for k, s in shapes.items() if k.startswith("lin") and
                                    not k.startswith("lins.")})
    return {**{ours: tv[k] for k, ours in backbone.items()}, **lins}


def load_lpips(alexnet: Path, lpips: Path, device: str = "cpu") -> torch.nn.Module:
    with torch.device("meta"):  # no random initialisation of AlexNet (and its unused classifier)
        net = lpips_network()
    net.scaling_layer = type(net.scaling_layer)()  # its constants are no weights: made for real
    missing, unexpected = net.load_state_dict(lpips_state_dict(alexnet, lpips), strict=False, assign=True)
    # lins.<i> are the same modules as lin<i>, so they are filled too
    assert not unexpected and all(k.startswith("lins.") for k in missing), (missing, unexpected)
    return net.eval().to(device)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """[H, W, 3] uint8 -> [1, 3, H, W] float32 in [0, 1] (torchvision's ToTensor)."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0


def paired_pixels(generated: Path, target: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The generated image and its ground truth resized to it (bicubic), [1, 3, H, W] in [0, 1]."""
    gen = read_rgb(generated, "generated image")
    with Image.fromarray(read_rgb(target, "ground-truth image")) as img:
        truth = np.array(img.resize((gen.shape[1], gen.shape[0]), Image.Resampling.BICUBIC))
    return to_tensor(gen), to_tensor(truth)


@torch.inference_mode()
def lpips_distance(net: torch.nn.Module, gen: torch.Tensor, truth: torch.Tensor) -> float:
    """LPIPS of two [1, 3, H, W] images in [0, 1] (torchmetrics' normalize=True: mapped to [-1, 1])."""
    device = next(net.parameters()).device
    return float(net(gen.to(device), truth.to(device), normalize=True).item())


def ssim(gen: torch.Tensor, truth: torch.Tensor) -> float:
    """SSIM of two [1, 3, H, W] images in [0, 1]: data range 1, a Gaussian window of sigma 1.5
    (11 taps), averaged over the pixels whose window lies inside the image.

    The reference's torchmetrics (0.11.4) leaves out the 5-pixel border, as scikit-image does;
    torchmetrics 1.x averages over the whole reflect-padded image instead, so its full SSIM map
    is cropped here.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _, full = structural_similarity_index_measure(gen, truth, data_range=1.0, return_full_image=True)
    if min(full.shape[-2:]) <= 2 * SSIM_BORDER:
        raise ValueError(f"SSIM needs images larger than {2 * SSIM_BORDER}x{2 * SSIM_BORDER} pixels")
    return float(full[..., SSIM_BORDER:-SSIM_BORDER, SSIM_BORDER:-SSIM_BORDER].mean())
