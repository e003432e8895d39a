"""Reading weight files without running pickled code, and checking their keys and shapes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

_WRAPPERS = ("state_dict", "model")  # training scripts wrap the weights in these


class WeightFileError(ValueError):
    """A weight file that cannot be used, with a message that says what to do."""


def read_state_dict(path: str | os.PathLike, what: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file or of a .pth/.pt/.bin plain state dict.

    Torch files are read with weights_only=True (memory-mapped where possible, so a 3.4 GB
    file is not held twice): a file that needs unpickling code is refused. A training wrapper
    ({"state_dict": ...}) and a DataParallel `module.` prefix are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise WeightFileError(f"{path}: not a readable safetensors file ({exc})") from None
    else:
        try:
            try:
                sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:  # old (non-zip) torch files cannot be mapped
                if "mmap" not in str(exc):
                    raise
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            # Not torch's own advice (it suggests weights_only=False, i.e. running the pickle).
            detail = str(exc).split("WeightsUnpickler error:")[-1].strip().split("\n")[0][:300]
            raise WeightFileError(
                f"{path}: cannot be read as a plain torch state dict with weights_only=True ({detail}). "
                "Only tensors are loaded, never pickled code; re-save it as a state dict or safetensors."
            ) from None
        for wrapper in _WRAPPERS:
            if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict) and len(sd) <= 4:
                sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightFileError(f"{path}: holds no state dict of tensors, so it is not {what}")
    return strip_prefix(sd, "module.")


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop `prefix` when every key has it."""
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return dict(sd)


def _listing(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(sorted(items)[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def check_state_dict(sd: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]],
                     source: str, what: str, advice: str = "",
                     error: type[WeightFileError] = WeightFileError) -> None:
    """Every expected key present with its shape and nothing else, or `error` naming each
    missing, unexpected and mis-shaped key, then `advice`."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {tuple(expected[k])})"
             for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k])]
    problems = [f"{title}: {_listing(keys)}" for title, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if keys]
    if problems:
        raise error(f"{source} is not {what}: " + "; ".join(problems)
                    + f". The file may be truncated or of another model. {advice}".rstrip())
