"""The weight files the evaluation metrics need, found in one local folder (--metric-weights DIR).

Nothing is ever downloaded: clean-fid, torch-fidelity, torchmetrics and lpips all fetch their
networks on first use, so the pack builds each network itself and fills it from the files here,
read as plain tensors (weights_only / safetensors, never unpickled code, never TorchScript).
Each file is the one its project publishes, under its published name, so it loads unchanged;
`python -m tools.demo.metric_weights DIR` writes random files of the same layouts for tests.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files import cached_sha256
from ..weights import WeightFileError, check_state_dict, read_state_dict

DEMO_COMMAND = "python -m tools.demo.metric_weights"


class MetricWeightsError(WeightFileError):
    """A metric weights file missing or unusable, with what to do about it."""


# import name -> pip name: the libraries whose metric code the evaluation runs
METRIC_PACKAGES = {"cleanfid": "clean-fid", "torch_fidelity": "torch-fidelity",
                   "torchmetrics": "torchmetrics", "scipy": "scipy"}


def require_metric_packages() -> None:
    """ValueError with the pip command when a library the metrics run on is not installed (looked
    up, not imported: importing them takes seconds)."""
    missing = []
    for module, pip_name in METRIC_PACKAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(pip_name)
    if missing:
        raise ValueError(f"The evaluation metrics need the Python packages {', '.join(missing)}, which "
                         f"are not installed: pip install {' '.join(missing)}")


@dataclass(frozen=True)
class MetricFile:
    field: str  # the MetricWeights field it fills
    names: tuple[str, ...]  # accepted file names, the published one first
    role: str
    source: str
    licence: str

    def where_to_get(self) -> str:
        other = f" (or {', '.join(self.names[1:])} from the same place)" if len(self.names) > 1 else ""
        return f"{self.names[0]}{other} from {self.source} (licence: {self.licence})"


INCEPTION = MetricFile(
    "inception", ("weights-inception-2015-12-05-6726825d.pth",),
    "FID/KID Inception-v3 (the TensorFlow FID network as torch-fidelity converted it)",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    "Apache-2.0",
)
ALEXNET = MetricFile(
    "alexnet", ("alexnet-owt-7be5be79.pth",), "LPIPS backbone (torchvision's ImageNet AlexNet)",
    "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "BSD-3-Clause",
)
LPIPS = MetricFile(
    "lpips", ("alex.pth",), "LPIPS linear layers (v0.1, AlexNet)",
    "the lpips package (lpips/weights/v0.1/alex.pth in `pip download lpips`; torchmetrics ships the same "
    "file as torchmetrics/functional/image/lpips_models/alex.pth)",
    "BSD-2-Clause",
)
CLIP = MetricFile(
    "clip", ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
    "CLIP-T / CLIP-I model (OpenCLIP ViT-H-14, laion2b_s32b_b79k)",
    "the Hugging Face hub repository laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "MIT",
)
CLIP_ARCH, CLIP_TAG = "ViT-H-14", "laion2b_s32b_b79k"  # the model the reference's CLIPScore loads


@dataclass(frozen=True)
class MetricWeights:
    """The files in --metric-weights DIR."""

    inception: Path  # FID/KID Inception-v3 (torch-fidelity's weights-inception-2015-12-05 state dict)
    lpips: Path | None  # LPIPS linear layers (alex.pth, v0.1); None: unpaired runs need none
    clip: Path  # the CLIP model CLIP-T / CLIP-I are scored with (OpenCLIP ViT-H-14 laion2b_s32b_b79k)
    alexnet: Path | None = None  # LPIPS backbone (torchvision's AlexNet state dict); None when lpips is

    def sha256(self) -> dict[str, str]:
        """Each file's name and sha256, for the report's settings."""
        files = {"inception": self.inception, "alexnet": self.alexnet, "lpips": self.lpips, "clip": self.clip}
        return {f"metric weights: {key}": f"{path.name} sha256 {cached_sha256(path)}"
                for key, path in files.items() if path is not None}


def _missing(spec: MetricFile, folder: Path) -> MetricWeightsError:
    return MetricWeightsError(
        f"The {spec.role} file {spec.names[0]} is not in the metric weights folder {folder}. Put "
        f"{spec.where_to_get()} there; for a test run without the real files, `{DEMO_COMMAND} {folder}` "
        "writes random ones of the same layouts."
    )


def _find(spec: MetricFile, folder: Path) -> Path:
    for name in spec.names:
        path = folder / name
        if path.is_file():
            return path
    raise _missing(spec, folder)


def find_metric_weights(folder: Path, paired: bool) -> MetricWeights:
    """The metric weight files in `folder`, their layouts checked (cheap: the files are mapped,
    not read), so a missing or wrong file fails before any generation. Unpaired runs need no
    LPIPS files. Raises MetricWeightsError naming the file, the folder and where it comes from,
    or ValueError naming the metric libraries that are not installed."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise MetricWeightsError(
            f"The metric weights folder {folder} does not exist. Create it and put the metric weight files "
            f"in it ({INCEPTION.names[0]}, {CLIP.names[0]}"
            + (f", {ALEXNET.names[0]}, {LPIPS.names[0]}" if paired else "")
            + f"; see docs/metrics.md for where each comes from), or write random demo ones with "
            f"`{DEMO_COMMAND} {folder}`."
        )
    inception = _find(INCEPTION, folder)
    clip = _find(CLIP, folder)
    require_metric_packages()
    alexnet = _find(ALEXNET, folder) if paired else None
    lpips = _find(LPIPS, folder) if paired else None
    # Imported here: the networks' layouts come from torch-fidelity and torchmetrics.
    from .fid import inception_state_dict
    from .perceptual import lpips_state_dict

    inception_state_dict(inception)
    if alexnet is not None and lpips is not None:
        lpips_state_dict(alexnet, lpips)
    return MetricWeights(inception=inception, lpips=lpips, clip=clip, alexnet=alexnet)


def load_weights(spec: MetricFile, path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors (plain tensors only, memory-mapped), or MetricWeightsError naming it."""
    try:
        return read_state_dict(path, f"the {spec.role}")
    except (WeightFileError, OSError) as exc:
        raise MetricWeightsError(f"{exc} Expected {spec.where_to_get()}.") from None


def check_keys(spec: MetricFile, path: Path, sd: dict[str, torch.Tensor],
               expected: dict[str, tuple[int, ...]]) -> None:
    """Exactly the expected keys and shapes, or MetricWeightsError naming the file and each problem."""
    check_state_dict(sd, expected, source=str(path), what=f"the {spec.role}",
                     advice=f"Expected {spec.where_to_get()}.", error=MetricWeightsError)
