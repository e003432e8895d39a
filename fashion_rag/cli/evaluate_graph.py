"""The graph `fashion-rag evaluate` runs per test pair: a try-on workflow (by default the example
one), with the test pair's inputs where the user's choices were.

Kept from the workflow: its model loaders and its Fashion-RAG Inversion, Pose and Inpaint nodes.
Replaced: the garments (the retrieved ones, loaded as images and batched with the stock Batch
Images node, into Garment Inversion's `images` input), the mask (a Load Image (as Mask) of the
test set's mask, into Inpaint's `mask`), the keypoints, the category and the sampling settings.
One SaveImage of the inpainted image is the only output; every node it does not need is left out.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from ..reference import IMAGE_SIZE

RESULT_PREFIX = "fashion_rag_eval/result"
RESULT_FILE = "result.png"  # what the batch names the SaveImage's image (its prefix's last part)

INPAINT = "FashionRAGInpaint"
INVERSION = "FashionRAGGarmentInversion"
POSE = "FashionRAGPoseFromKeypoints"
# Loader classes -> (the input naming the file, its models folder), for the report's sha256 lines.
MODEL_INPUTS: dict[str, tuple[str, str]] = {
    "FashionRAGUNetLoader": ("unet_name", "fashion_rag/unet"),
    "FashionRAGAdapterLoader": ("adapter_name", "fashion_rag/adapter"),
    "FashionRAGCheckpointCLIPVAELoader": ("ckpt_name", "checkpoints"),
    "CheckpointLoaderSimple": ("ckpt_name", "checkpoints"),
    "FashionRAGCLIPVisionLoader": ("clip_name", "clip_vision"),
    "CLIPVisionLoader": ("clip_name", "clip_vision"),
}


class GraphError(ValueError):
    """The workflow is not a Fashion-RAG try-on graph this command can run (one line: why)."""


@dataclass(frozen=True)
class Sampling:
    seed: int = 1234
    steps: int = 50
    cfg: float = 7.5
    sampler: str = "fashion_rag_ddim"
    scheduler: str = "normal"


@dataclass
class EvalGraph:
    workflow: dict[str, dict]
    person: str  # node ids whose inputs each test pair sets
    mask: str
    pose: str
    inversion: str
    garments: list[str] = field(default_factory=list)

    def columns(self) -> list[str]:
        """The job table's header: the batch's NODE_ID.input columns."""
        return ["id", f"{self.person}.image", f"{self.mask}.image",
                *[f"{g}.image" for g in self.garments], f"{self.pose}.keypoints_json",
                f"{self.inversion}.category"]


def _link(node: dict, name: str) -> str | None:
    value = node.get("inputs", {}).get(name)
    return str(value[0]) if isinstance(value, list) and value else None


def _one(workflow: dict[str, dict], class_type: str) -> str:
    found = [nid for nid, n in workflow.items() if n.get("class_type") == class_type]
    if len(found) != 1:
        listed = f" ({', '.join(found)})" if found else ""
        raise GraphError(f"the workflow needs exactly one {class_type} node, it has {len(found)}{listed}: "
                         "export the single try-on workflow (example_workflows/api/"
                         "fashion_rag_text_to_tryon.json is one)")
    return found[0]


def _fed_by(workflow: dict[str, dict], node_id: str, name: str, class_type: str) -> str:
    source = _link(workflow[node_id], name)
    if source is None or workflow.get(source, {}).get("class_type") != class_type:
        got = workflow.get(source or "", {}).get("class_type", "nothing")
        raise GraphError(f"{workflow[node_id]['class_type']} (node {node_id}) must take its '{name}' from a "
                         f"{class_type} node, it takes it from {got}")
    return source


def evaluation_graph(workflow: dict[str, dict], k: int, sampling: Sampling,
                     size: tuple[int, int] = IMAGE_SIZE) -> EvalGraph:
    """The per-pair graph for `k` retrieved garments, the person at `size` (W, H) (module
    docstring); GraphError says why not."""
    inpaint = _one(workflow, INPAINT)
    inversion = _fed_by(workflow, inpaint, "positive", INVERSION)
    if _link(workflow[inpaint], "negative") != inversion:
        raise GraphError(f"{INPAINT} (node {inpaint}) must take 'positive' and 'negative' from the same "
                         f"{INVERSION}")
    person = _fed_by(workflow, inpaint, "image", "LoadImage")
    pose = _fed_by(workflow, inpaint, "pose", POSE)

    graph = copy.deepcopy(workflow)
    numbers = [int(n) for n in graph if n.isdigit()]
    next_id = iter(range(max(numbers, default=0) + 1, 1 << 30))

    def add(class_type: str, inputs: dict) -> str:
        nid = str(next(next_id))
        graph[nid] = {"class_type": class_type, "inputs": inputs,
                      "_meta": {"title": f"evaluate: {class_type}"}}
        return nid

    mask = add("LoadImageMask", {"image": "mask.png", "channel": "red"})
    garments = [add("LoadImage", {"image": f"garment_{i}.png"}) for i in range(1, k + 1)]
    batch = garments[0]
    for g in garments[1:]:
        batch = add("ImageBatch", {"image1": [batch, 0], "image2": [g, 0]})
    width, height = size
    graph[pose]["inputs"].update(keypoints_json="{}", width=width, height=height, person_index=0,
                                 source_width=0, source_height=0)
    inv = graph[inversion]["inputs"]
    inv.pop("garments", None)
    inv.update(images=[batch, 0], category="upper_body", extra_text="", per_garment=False)
    graph[inpaint]["inputs"].update(mask=[mask, 0], seed=sampling.seed, steps=sampling.steps,
                                    cfg=sampling.cfg, sampler_name=sampling.sampler,
                                    scheduler=sampling.scheduler, denoise=1.0, paste_back=False)
    save = add("SaveImage", {"images": [inpaint, 1], "filename_prefix": RESULT_PREFIX})
    return EvalGraph(_needed_by(graph, save), person, mask, pose, inversion, garments)


def _needed_by(graph: dict[str, dict], output: str) -> dict[str, dict]:
    """The nodes `output` depends on (itself included), in the graph's order."""
    needed, todo = set(), [output]
    while todo:
        nid = todo.pop()
        if nid in needed or nid not in graph:
            continue
        needed.add(nid)
        todo += [str(v[0]) for v in graph[nid].get("inputs", {}).values() if isinstance(v, list) and v]
    return {nid: node for nid, node in graph.items() if nid in needed}


def model_files(graph: dict[str, dict]) -> dict[str, tuple[str, str]]:
    """'<class> <input>' -> (models folder, file name) of every model file the graph loads."""
    found = {}
    for node in graph.values():
        spec = MODEL_INPUTS.get(node.get("class_type", ""))
        name = node.get("inputs", {}).get(spec[0]) if spec else None
        if spec and isinstance(name, str):
            found[f"{node['class_type']}.{spec[0]}"] = (spec[1], name)
    return found
