"""Random stand-ins for the evaluation's metric weight files, so tests and the quick run work offline.

`python -m tools.demo.metric_weights DIR` fills DIR with files of the published names and the
exact key layouts (keys, shapes, dtypes) of the real ones (fashion_rag/evaluation/metric_weights.py
says where each real file comes from), holding seeded random values: every loader and metric
runs for real, and the numbers mean nothing. The CLIP model is the demo's tiny OpenCLIP
(tools/demo/encoder.py), which says in its metadata that it is random; the real one is ViT-H-14.

The files (about 340 MB, mostly AlexNet's unused classifier) are generated once into the demo
cache (FASHION_RAG_CACHE, as tools/demo/weights.py) and linked into DIR.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from .encoder import write_tiny_encoder_weights
from .weights import _cache_dir, _remove_older, _sources, source_tag
from fashion_rag.evaluation.metric_weights import ALEXNET, CLIP, INCEPTION, LPIPS, MetricWeights
from fashion_rag.files import atomic_write

# The cached files carry the sha256 of their generators' code (this file, weights.py, the tiny encoder):
# a changed generator writes them anew, never read as the old ones by a warm cache.
TAG = source_tag([Path(__file__).resolve(), *_sources("tools.demo.encoder")])


def _random(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """He-scaled weights (activations keep their size through ReLU nets), BatchNorm as identity."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            out[name] = torch.tensor(0, dtype=torch.long)
        elif ".bn." in name and leaf in ("weight", "running_var"):
            out[name] = torch.ones(shape)
        elif leaf == "bias" or ".bn." in name:
            out[name] = torch.zeros(shape)
        else:
            out[name] = torch.randn(shape, generator=g) * math.sqrt(2.0 / math.prod(shape[1:]))
    return out


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def inception_state_dict(seed: int = 21) -> dict[str, torch.Tensor]:
    """torch-fidelity's weights-inception-2015-12-05 layout (566 tensors, fc included)."""
    from fashion_rag.evaluation.fid import inception_network

    with torch.device("meta"):
        shapes = _shapes(inception_network())
    return _random(shapes, seed)


def alexnet_state_dict(seed: int = 22) -> dict[str, torch.Tensor]:
    """torchvision's alexnet-owt layout (features.* and the classifier LPIPS does not use)."""
    from torchvision.models import alexnet

    with torch.device("meta"):
        shapes = _shapes(alexnet())
    return _random(shapes, seed)


def lpips_state_dict(seed: int = 23) -> dict[str, torch.Tensor]:
    """The lpips v0.1 alex.pth layout: lin0..lin4.model.1.weight [1, C, 1, 1], non-negative as trained."""
    g = torch.Generator().manual_seed(seed)
    return {f"lin{i}.model.1.weight": torch.rand((1, c, 1, 1), generator=g) * 0.1
            for i, c in enumerate((64, 192, 384, 256, 256))}


def _cached(name: str, make: Callable[[Path], object]) -> Path:
    path = _cache_dir() / f"{TAG}-{name}"
    if not path.exists():
        make(path)
        _remove_older(path.parent, path.name)
    return path


def _torch_file(make: Callable[[], dict[str, torch.Tensor]]) -> Callable[[Path], object]:
    return lambda path: atomic_write(path, lambda tmp: torch.save(make(), tmp))


def write_demo_metric_weights(folder: str | Path, paired: bool = True,
                              log: Callable[[str], None] = print) -> MetricWeights:
    """Link random metric weight files into `folder` (LPIPS's two only when `paired`); a real
    file already there is kept."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files: list[tuple[str, Callable[[Path], object]]] = [
        (INCEPTION.names[0], _torch_file(inception_state_dict)),
        (CLIP.names[0], lambda path: write_tiny_encoder_weights(path, seed=24)),
    ]
    if paired:
        files += [(ALEXNET.names[0], _torch_file(alexnet_state_dict)),
                  (LPIPS.names[0], _torch_file(lpips_state_dict))]
    paths: dict[str, Path] = {}
    for name, make in files:
        target = folder / name
        if target.exists() and not target.is_symlink():
            log(f"[fashion-rag] keeping your own {target}")
        else:
            cached = _cached(name, make)
            if not (target.is_symlink() and target.resolve() == cached.resolve()):
                target.unlink(missing_ok=True)
                target.symlink_to(cached)
        paths[name] = target
    return MetricWeights(inception=paths[INCEPTION.names[0]], clip=paths[CLIP.names[0]],
                         alexnet=paths.get(ALEXNET.names[0]), lpips=paths.get(LPIPS.names[0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo.metric_weights",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="the --metric-weights folder to fill")
    parser.add_argument("--unpaired", action="store_true", help="leave out LPIPS's two files")
    args = parser.parse_args(argv)
    weights = write_demo_metric_weights(args.folder, paired=not args.unpaired)
    print(f"[fashion-rag] RANDOM demo metric weights in {args.folder}: "
          + ", ".join(p.name for p in (weights.inception, weights.alexnet, weights.lpips, weights.clip) if p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
