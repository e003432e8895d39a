"""Reading weight files without running pickled code, checking their keys and shapes, and
copying them into a model without holding the file and the model whole at the same time."""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

_WRAPPERS = ("state_dict", "model")  # training scripts wrap the weights in these
_MADV_DONTNEED = 4  # Linux


class WeightFileError(ValueError):
    """A weight file that cannot be used, with a message that says what to do."""


def read_state_dict(path: str | os.PathLike, what: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file or of a .pth/.pt/.bin plain state dict.

    Torch files are read with weights_only=True: a file that needs unpickling code is refused.
    Both kinds are memory-mapped where possible: a tensor's bytes are read when first used, and
    the file's pages are page cache the kernel can reclaim, not memory of the process of its own
    (load_in_parts gives them back as it copies). A training wrapper ({"state_dict": ...}) and a
    DataParallel `module.` prefix are removed.
    """
    path = Path(path)
    if not path.is_file():
        if path.is_dir():  # "no such file" would send the user looking for a file that is there
            raise WeightFileError(f"{path}: a folder, not a weight file ({what}): give the file inside it")
        if path.exists():
            raise WeightFileError(f"{path}: not a regular file (a pipe or a device), not {what}: "
                                  "give the file itself")
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


class FilePages:
    """Gives back the resident pages of a memory-mapped weights file once tensors read from it
    have been copied (Linux). A mapped file's pages otherwise stay in the process's memory until
    its last tensor is gone, so a model filled from it tensor by tensor would end up holding the
    whole file and the whole model. The pages stay valid: touched again, they are read back from
    the page cache or the file. Only pages inside a private mapping of this very file are
    released (never anonymous memory, whose pages would read back as zeros); elsewhere, or for
    tensors that are not mapped from it, nothing happens."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.ranges: list[tuple[int, int]] = []
        self._madvise = None
        if not sys.platform.startswith("linux"):
            return
        real = os.path.realpath(path)
        try:
            lines = Path("/proc/self/maps").read_text().splitlines()
            madvise = ctypes.CDLL(None, use_errno=True).madvise
        except (OSError, AttributeError):
            return
        for line in lines:  # "start-end perms offset dev inode path"
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5] == real and parts[1].endswith("p"):
                start, end = (int(x, 16) for x in parts[0].split("-"))
                self.ranges.append((start, end))
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self._madvise = madvise

    def release(self, tensors: Iterable[torch.Tensor]) -> None:
        """Drop the pages of `tensors` (which must not have been modified in place)."""
        if self._madvise is None or not self.ranges:
            return
        page = mmap.PAGESIZE
        for t in tensors:
            begin, end = t.data_ptr(), t.data_ptr() + t.nbytes
            if any(lo <= begin and end <= hi for lo, hi in self.ranges):
                first, last = -(-begin // page) * page, end // page * page  # whole pages inside only
                if last > first:
                    self._madvise(first, last - first, _MADV_DONTNEED)


def load_in_parts(module: torch.nn.Module, sd: dict[str, torch.Tensor],
                  source: str | os.PathLike | None = None) -> tuple[list[str], list[str]]:
    """`module.load_state_dict(sd, strict=False)`, giving the file's pages back block by block.

    One load_state_dict call with the whole dict, so every module's own loading hook sees what
    the stock loaders show it (ComfyUI's CLIP vision model drops its projection when the dict it
    is given lacks one: loading a part at a time would drop it). When `sd` is memory-mapped from
    `source`, a hook after each block (the keys' names up to their first number:
    `input_blocks.4`, `vision_model.encoder.layers.7`) gives that block's file pages back once
    copied (FilePages): the file and the model overlap by one block (a few percent of a UNet)
    instead of being both whole in memory. `sd` is emptied. Returns (missing, unexpected) keys.
    """
    pages = FilePages(source) if source is not None else None
    hooks = []
    if pages is not None and pages.ranges:
        modules = dict(module.named_modules())
        owned: dict[str, list[torch.Tensor]] = {}
        for key, tensor in sd.items():
            owned.setdefault(_owner(_block_of(key), modules), []).append(tensor)
        for name, tensors in owned.items():
            if name:  # the root's own keys are given back after the load
                hooks.append(modules[name].register_load_state_dict_post_hook(
                    lambda _module, _keys, tensors=tensors: pages.release(tensors)))
    try:
        result = module.load_state_dict(sd, strict=False)
    finally:
        for hook in hooks:
            hook.remove()
    if pages is not None:
        pages.release(sd.values())
    sd.clear()
    return sorted(result.missing_keys), list(result.unexpected_keys)


def _owner(block: str, modules: Mapping[str, torch.nn.Module]) -> str:
    """The deepest module whose name `block` starts with ("" for the root)."""
    while block and block not in modules:
        block = block.rpartition(".")[0]
    return block


def _block_of(key: str) -> str:
    """`input_blocks.4.1.proj.weight` -> `input_blocks.4`; a name without a number: its first two parts."""
    parts = key.split(".")
    number = next((i for i, part in enumerate(parts[:-1]) if part.isdigit()), None)
    return ".".join(parts[:number + 1] if number is not None else parts[:2])


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device: no memory and no random
    initialisation for weights that a file will fill. Buffers stay real, since some are
    computed rather than loaded (a text transformer's causal mask). torch's registration hook
    is process-wide, so another thread building a module meanwhile would get meta parameters
    too: keep the block to one model's construction."""

    def to_meta(_module: torch.nn.Module, _name: str,
                param: torch.nn.Parameter | None) -> torch.nn.Parameter | None:
        if param is None or param.is_meta:
            return None  # keep it as it is
        return torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    handle = torch.nn.modules.module.register_module_parameter_registration_hook(to_meta)
    try:
        yield
    finally:
        handle.remove()


def materialize(module: torch.nn.Module, device: str | torch.device = "cpu") -> None:
    """Give `module`'s meta parameters uninitialised storage on `device`, for a load to fill
    (a parameter shared by two modules stays shared)."""
    made: dict[int, torch.nn.Parameter] = {}
    for sub in module.modules():
        for name, param in sub._parameters.items():
            if param is not None and param.is_meta:
                if id(param) not in made:
                    made[id(param)] = torch.nn.Parameter(torch.empty_like(param, device=device),
                                                         requires_grad=param.requires_grad)
                sub._parameters[name] = made[id(param)]


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
