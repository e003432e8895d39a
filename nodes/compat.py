"""Where the ComfyUI versions the pack runs on (0.3.75 to 0.33+) differ, decided once here.

Combo inputs. ComfyUI >= 0.8 rejects a combo value that is not among the input's options before
a run ("value_not_in_list", the options shown only up to 20); 0.3.75 never checked V3 nodes' combos,
so an unknown value crashed deep inside the run. Both versions skip their own check for the inputs
a node's `validate_inputs` declares (execution.validate_inputs), so every pack node declares its
combos there and calls `check_combos`: the same check and message on every version, naming the
choices. Linked combo values (converted widgets) reach `validate_inputs` as None; `require_combos`
checks them when the node runs.

Model patchers. ComfyUI >= 0.12 builds its own models' patchers from
`comfy.model_patcher.CoreModelPatcher`, which main.py turns into the dynamic-VRAM ModelPatcherDynamic
(comfy-aimdo) on NVIDIA GPUs (opt-in in 0.12-0.15, the default since 0.16); older versions only have
ModelPatcher, and on the CPU both are ModelPatcher. `new_model_patcher` gives the pack's models the
class ComfyUI gives its own, so they take part in the same memory manager the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import comfy.model_patcher
import torch
from comfy_api.latest import io

_MAX_LISTED = 60  # more choices than this (model file lists) are counted, not listed


def combo_options(node: type[io.ComfyNode], input_id: str) -> list[Any]:
    """The options the node's schema gives `input_id` now (lists of files change at run time)."""
    for inp in node.define_schema().inputs:
        if inp.id == input_id and isinstance(inp, io.Combo.Input):
            return list(inp.options or [])
    raise KeyError(f"{node.__name__} has no combo input {input_id!r}")


def _choices(options: Sequence[Any]) -> str:
    shown = ", ".join(str(o) for o in options[:_MAX_LISTED])
    more = len(options) - _MAX_LISTED
    return shown + (f" (and {more} more)" if more > 0 else "") if options else "none"


def combo_problems(node: type[io.ComfyNode], **values: Any) -> list[str]:
    """One sentence per value that is not among its input's options; None (linked) is skipped."""
    problems = []
    for input_id, value in values.items():
        if value is None:
            continue
        options = combo_options(node, input_id)
        if value not in options:
            problems.append(
                f"{input_id} {value!r} is not available in this ComfyUI (the workflow may come from "
                f"another ComfyUI version or set of custom nodes); choose one of: {_choices(options)}."
            )
    return problems


def check_combos(node: type[io.ComfyNode], **values: Any) -> bool | str:
    """For `validate_inputs`: True, or a message naming each bad value and its choices."""
    problems = combo_problems(node, **values)
    return True if not problems else " ".join(problems)


def require_combos(node: type[io.ComfyNode], **values: Any) -> None:
    """For `execute`: raise ValueError as check_combos would report (linked values land here)."""
    problems = combo_problems(node, **values)
    if problems:
        raise ValueError(" ".join(problems))


def new_model_patcher(
    model: torch.nn.Module, load_device: torch.device, offload_device: torch.device
) -> comfy.model_patcher.ModelPatcher:
    """A patcher of the class ComfyUI's own loaders use (read when called: main.py sets it)."""
    cls = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    return cls(model, load_device=load_device, offload_device=offload_device)
