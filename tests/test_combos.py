"""Combo inputs (dropdowns) checked the same way on every ComfyUI the pack supports.

ComfyUI >= 0.8 rejects a combo value missing from the options ("value_not_in_list"); 0.3.75
never checked V3 nodes' combos, so a shared workflow's unknown sampler crashed inside sampling.
Each node declares its combos in validate_inputs, which makes ComfyUI (either version) leave
them to nodes/compat.py: one message, naming the choices. Checked here through ComfyUI's own
validate_prompt (what POST /prompt runs) on the example workflow.
"""

from __future__ import annotations

import copy
import inspect
import json

import pytest
import torch
from test_inpaint_parity import pack_module
from test_pack import NODE_IDS

from fashion_rag.categories import CATEGORIES
from tools.harness import REPO

API = json.loads((REPO / "example_workflows" / "api" / "fashion_rag_text_to_tryon.json").read_text())
def combo_inputs(cls) -> list[str]:
    from comfy_api.latest import io

    return [i.id for i in cls.define_schema().inputs if isinstance(i, io.Combo.Input)]


@pytest.mark.parametrize("node_id", sorted(NODE_IDS))
def test_every_combo_is_declared_in_validate_inputs(comfy_runtime, node_id):
    cls = comfy_runtime.nodes.NODE_CLASS_MAPPINGS[node_id]
    combos = combo_inputs(cls)
    if not combos:
        return
    # What execution.validate_inputs reads to decide whose check applies (0.3.75 and 0.33 alike).
    spec = inspect.getfullargspec(cls.validate_inputs)
    assert spec.varkw is None, f"{node_id}: **kwargs would also switch off ComfyUI's min/max checks"
    assert set(combos) <= set(spec.args), f"{node_id}: combos {combos} not all in {spec.args}"
    # Linked combos reach validate_inputs as None, absent ones not at all: both must pass.
    assert cls.validate_inputs() is True, f"{node_id}: every argument must default to None"


def _validate_example(comfy, node_id: str, **inputs) -> list[dict]:
    prompt = copy.deepcopy(API)
    prompt[node_id]["inputs"].update(inputs)
    # ok stays True while other outputs validate; POST /prompt still reports node_errors.
    _, _, _, node_errors = comfy.validate(prompt)
    return node_errors.get(node_id, {}).get("errors", [])


def _message(errors: list[dict]) -> str:
    assert errors, "the bad value passed validation"
    # Ours, not ComfyUI's own list check (which 0.3.75 lacks and 0.33 truncates to a length).
    assert {e["type"] for e in errors} == {"custom_validation_failed"}, errors
    return errors[0]["details"]


def test_unknown_sampler_in_a_shared_workflow_names_every_choice(comfy):
    import comfy.samplers as samplers

    msg = _message(_validate_example(comfy, "11", sampler_name="sampler_from_another_comfyui"))
    assert "sampler_name 'sampler_from_another_comfyui' is not available in this ComfyUI" in msg
    assert "choose one of: fashion_rag_ddim, " in msg
    assert all(name in msg for name in samplers.KSampler.SAMPLERS)


def test_unknown_scheduler_fails_unless_the_reference_sampler_ignores_it(comfy):
    import comfy.samplers as samplers

    msg = _message(_validate_example(comfy, "11", sampler_name="euler", scheduler="scheduler_x"))
    assert "scheduler 'scheduler_x' is not available" in msg
    assert all(name in msg for name in samplers.KSampler.SCHEDULERS)
    # fashion_rag_ddim uses its own timesteps: the workflow runs exactly as it would elsewhere.
    assert _validate_example(comfy, "11", sampler_name="fashion_rag_ddim", scheduler="scheduler_x") == []


@pytest.mark.parametrize("node_id,name,value,choices", [
    ("6", "category", "shoes", ["auto", *CATEGORIES]),   # FashionRAGGarmentInversion
    ("10", "category", "full_body", list(CATEGORIES)),   # FashionRAGGarmentMask
    ("7", "weight_dtype", "fp8_e4m3fn", ["default", "fp16", "bf16", "fp32"]),  # FashionRAGUNetLoader
])
def test_unknown_pack_combo_values_name_the_choices(comfy, node_id, name, value, choices):
    msg = _message(_validate_example(comfy, node_id, **{name: value}))
    assert f"{name} '{value}' is not available in this ComfyUI" in msg
    assert f"choose one of: {', '.join(choices)}." in msg


def test_missing_model_files_keep_their_own_messages(comfy):
    msg = _message(_validate_example(comfy, "7", unet_name="unet_120000.pth"))
    assert "'unet_120000.pth' was not found" in msg and "fashion_rag" in msg
    msg = _message(_validate_example(comfy, "5", adapter_name="inversion_adapter_120000.pth"))
    assert "inversion_adapter_120000.pth" in msg and "furio19/fashion-rag" in msg


def test_linked_values_are_checked_when_the_node_runs(comfy_runtime):
    """A combo fed by a link skips validate_inputs (None there): execute checks it first."""
    node = pack_module(comfy_runtime, "nodes.inpaint").FashionRAGInpaint
    with pytest.raises(ValueError, match="sampler_name 'nope' is not available.*euler"):
        node.execute(None, None, None, None, torch.zeros(1, 8, 8, 3), torch.ones(1, 8, 8), seed=0,
                     steps=1, cfg=1.0, sampler_name="nope", scheduler="normal", denoise=1.0,
                     paste_back=False)
    mask = comfy_runtime.nodes.NODE_CLASS_MAPPINGS["FashionRAGGarmentMask"]
    with pytest.raises(ValueError, match="category 'hats' is not available.*upper_body"):
        mask.execute(torch.zeros(1, 8, 8, 3), "hats", "", 0, 0)


def test_choices_are_listed_up_to_sixty_then_counted(comfy_runtime):
    """60 options are all listed, with no "(and 0 more)"; of 61, the 61st is counted. Mutation
    caught: the count shown when nothing is left over (more >= 0)."""
    from comfy_api.latest import io

    compat = pack_module(comfy_runtime, "nodes.compat")

    def node(n: int) -> type:
        class FRTestManyOptions(io.ComfyNode):
            @classmethod
            def define_schema(cls) -> io.Schema:
                return io.Schema(node_id="FRTestManyOptions", outputs=[],
                                 inputs=[io.Combo.Input("pick", options=[f"o{i}" for i in range(n)])])

        return FRTestManyOptions

    listed = ", ".join(f"o{i}" for i in range(60))
    assert compat.check_combos(node(60), pick="o1") is True
    assert compat.check_combos(node(60), pick="zz").endswith(f"choose one of: {listed}.")
    assert compat.check_combos(node(61), pick="zz").endswith(f"choose one of: {listed} (and 1 more).")
    assert compat.check_combos(node(0), pick="zz").endswith("choose one of: none.")
