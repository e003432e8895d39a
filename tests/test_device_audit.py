"""Every tensor the nodes make takes its device and dtype from the model or input it meets.

Two checks: a static one (no torch factory call without device= and dtype= in the nodes and in
the library code whose tensors meet a model; in the nodes, no torch.from_numpy without a .to(...):
the library's numpy results are CPU tensors by contract, the nodes place them), and a run
of the inpainting nodes in real ComfyUI with torch's default device set to `meta`: a tensor made
on the default device would land there, and meet the CPU inputs and models with an error or
come out on `meta`.
"""

from __future__ import annotations

import ast

import pytest
import torch

from tools.harness import REPO

FACTORIES = {"zeros", "ones", "empty", "full", "tensor", "as_tensor", "arange", "linspace", "logspace",
             "randn", "rand", "randint", "eye"}
NODES = sorted(REPO.glob("nodes/*.py"))
# The library modules whose tensors go into a model or a sampler.
LIBRARY = [REPO / "fashion_rag" / "inpaint" / f"{name}.py" for name in ("ddim", "inputs", "pose", "mask")]


def _is_torch_call(node: ast.AST, names: set[str]) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in names
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch")


def _moved(tree: ast.AST) -> set[int]:
    """ids of the torch.from_numpy calls that a .to(...) call applies to (through [..], .x(), ...)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "to":
            inner = node.func.value
            while isinstance(inner, (ast.Subscript, ast.Attribute, ast.Call)):
                if _is_torch_call(inner, {"from_numpy"}):
                    found.add(id(inner))
                inner = inner.func if isinstance(inner, ast.Call) else inner.value
    return found


def bare_tensors(source: str, name: str = "<source>", from_numpy: bool = True) -> list[str]:
    """`file:line call` for each torch factory call without both device= and dtype= (a ** mapping
    counts), and (from_numpy) each torch.from_numpy whose result no .to(...) moves."""
    tree = ast.parse(source)
    moved = _moved(tree)
    problems = []
    for node in ast.walk(tree):
        if _is_torch_call(node, FACTORIES):
            given = {k.arg for k in node.keywords}
            if None not in given and not {"device", "dtype"} <= given:
                problems.append(f"{name}:{node.lineno} torch.{node.func.attr} without "
                                f"{' and '.join(sorted({'device', 'dtype'} - given))}")
        elif from_numpy and _is_torch_call(node, {"from_numpy"}) and id(node) not in moved:
            problems.append(f"{name}:{node.lineno} torch.from_numpy without .to(device=..., dtype=...)")
    return problems


def test_no_tensor_is_made_on_the_default_device():
    problems = []
    for path in [*NODES, *LIBRARY]:
        problems += bare_tensors(path.read_text(), str(path.relative_to(REPO)), from_numpy=path in NODES)
    assert len(NODES) > 20 and all(path.is_file() for path in LIBRARY)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("source,flagged", [
    ("torch.zeros(2, 3)", 1),
    ("torch.zeros(2, device=d)", 1),
    ("torch.full((2,), 1.0, dtype=t)", 1),
    ("torch.zeros(2, device=d, dtype=t)", 0),
    ("torch.zeros(2, **like)", 0),
    ("torch.from_numpy(a)[None]", 1),
    ("torch.from_numpy(a)[None].float().to(device=d)", 0),
    ("x.new_zeros(2) + torch.zeros_like(x)", 0),
])
def test_the_audit_tells_bare_from_placed(source, flagged):
    assert len(bare_tensors(source)) == flagged


@pytest.fixture
def meta_default():
    """torch's default device is `meta` inside the test (a custom node calling
    torch.set_default_device would do the same to the pack)."""
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def _tensors(value):
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


@pytest.mark.usefixtures("one_thread")
def test_nodes_follow_their_inputs_not_the_default_device(comfy_runtime, tmp_path, meta_default):
    from test_inpaint_parity import H, W, inputs, load_tiny_model, tiny_unet, tiny_vaes

    from tools.demo.person import keypoints_json

    with torch.device("cpu"):  # the models and inputs, as a workflow's loaders give them
        _, vae = tiny_vaes()
        model = load_tiny_model(comfy_runtime, tiny_unet(seed=3), tmp_path)
        image, mask, _, pos, neg = inputs()
    nodes = comfy_runtime.nodes.NODE_CLASS_MAPPINGS
    outputs = {}
    with torch.inference_mode():
        outputs["pose"] = nodes["FashionRAGPoseFromKeypoints"].execute(keypoints_json(), W, H)
        pose = outputs["pose"].result[0]
        outputs["mask"] = nodes["FashionRAGGarmentMask"].execute(image, "upper_body", keypoints_json(), 0, 0)
        conditioning = nodes["FashionRAGInpaintConditioning"]
        outputs["conditioning"] = conditioning.execute(pos, neg, vae, image, mask, pose=pose)
        outputs["conditioning, no pose"] = conditioning.execute(pos, neg, vae, image, mask)
        outputs["ddim"] = nodes["FashionRAGReferenceDDIM"].execute(model, 2, 1.0)
        outputs["no steps"] = nodes["FashionRAGReferenceDDIM"].execute(model, 2, 0.0)
        outputs["inpaint"] = nodes["FashionRAGInpaint"].execute(
            model, pos, neg, vae, image, mask, seed=0, steps=1, cfg=7.5, sampler_name="fashion_rag_ddim",
            scheduler="normal", denoise=1.0, paste_back=True, pose=pose)
    for name, out in outputs.items():
        tensors = list(_tensors(out.result))
        assert tensors, name
        for t in tensors:
            assert t.device.type == "cpu", f"{name}: a tensor on {t.device}"
            assert t.dtype in (torch.float32, torch.int64), f"{name}: {t.dtype}"
            assert torch.isfinite(t.float()).all(), name
