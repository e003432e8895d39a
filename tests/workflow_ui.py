"""Convert between ComfyUI's API-format prompts and the UI (litegraph) workflow format.

The example workflow is kept in both forms; the UI form is generated from the API form with
the node definitions of a running ComfyUI (/object_info), and a test converts it back and
compares. Regenerate after changing a node's inputs:
    python tests/workflow_ui.py   (needs `bash .ci/setup` done; starts ComfyUI in-process)

The UI form is laid out by pipeline column, left to right: loaders; retrieval and mask;
inversion and pose (right before the inpaint node it feeds); inpainting; the output nodes.
Within a column nodes go by pipeline stage, each level with the nodes that feed it where there
is room. Sizes fit the widgets plus what the nodes show after a run (the gallery, the index
summary, image previews), so nothing overlaps once a run fills them in. Output nodes that save
what another node already shows (garments, pose, mask) start collapsed under the result, and
the workflow opens with the whole graph in view (extra.ds).
"""

from __future__ import annotations

import json
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

# Pipeline column of the node types the example uses; others go by their inputs (a node with
# no links is a loader; an output node without outputs goes last; else right of its inputs).
# The pose node has no inputs: it sits in the column right before the inpaint node it feeds.
COLUMN = {
    "CheckpointLoaderSimple": 0, "FashionRAGCheckpointCLIPVAELoader": 0, "CLIPVisionLoader": 0,
    "FashionRAGCLIPVisionLoader": 0,
    "FashionRAGGarmentIndexLoader": 0,
    "FashionRAGAdapterLoader": 0, "FashionRAGUNetLoader": 0, "LoadImage": 0,
    "FashionRAGTextGarmentRetrieve": 1, "FashionRAGGarmentMask": 1,
    "FashionRAGGarmentInversion": 2, "FashionRAGPoseFromKeypoints": 2,
    "FashionRAGSaveGarmentEmbedding": 3, "FashionRAGInpaintConditioning": 3, "FashionRAGInpaint": 3,
}
LAST_COLUMN = 4  # at least: the output nodes go right of every other node
PASS_COLUMNS = 3  # retrieve/mask, inversion/pose, inpaint: one pass
INPAINT_TYPES = {"FashionRAGInpaint", "FashionRAGInpaintConditioning"}
# Pipeline stage (1 retrieve, 2 invert, 3 inpaint): orders nodes top to bottom within a column.
STAGE = {
    "FashionRAGTextGarmentRetrieve": 1, "FashionRAGGarmentInversion": 2,
    "FashionRAGSaveGarmentEmbedding": 2, "FashionRAGPoseFromKeypoints": 3,
    "FashionRAGGarmentMask": 3, "FashionRAGInpaintConditioning": 3, "FashionRAGInpaint": 3,
}
# Nodes that show their own images (gallery, previews): an output node that saves those starts
# collapsed, below the expanded ones of the last column, so the same picture is not shown twice.
SHOWS_ITS_IMAGES = {
    "FashionRAGTextGarmentRetrieve", "FashionRAGPoseFromKeypoints", "FashionRAGGarmentMask",
}
# Room for what a node shows beyond its widgets: the pack's gallery (k=3 cards) and index
# summary (web/js/fashion_rag.js; with the demo index's random-weights warning), image
# previews of nodes and output nodes.
EXTRA_HEIGHT = {
    "FashionRAGTextGarmentRetrieve": 210, "FashionRAGGarmentIndexLoader": 250,
    "FashionRAGPoseFromKeypoints": 220, "FashionRAGGarmentMask": 220,
    "LoadImage": 220, "SaveImage": 330, "PreviewImage": 330, "FashionRAGScore": 330,
}
# The gallery's cards (web/js/fashion_rag.js: 88 px wide, 6 px apart, 10 px margins): the retrieve
# node is as wide as one row of its k cards (up to 5), so a run does not wrap them onto a row the
# layout has no room for.
CARD_W, CARD_GAP, GALLERY_MAX_COLS = 88, 6, 5
# An output node showing stitched sheets (candidates: garment | result, one per garment) gets room
# for their grid.
SHEETS_SIZE = [640, 560]
WIDTH = {"FashionRAGTextGarmentRetrieve": 330, "FashionRAGInpaint": 300, "SaveImage": 300,
         "PreviewImage": 300, "FashionRAGScore": 330}
LOADER_WIDTH = 360  # column 0: room for the model file names
DEFAULT_WIDTH = 320
SLOT_H, WIDGET_H, MULTILINE_H, TITLE_H = 20, 24, 64, 30
GAP_X, GAP_Y, MARGIN = 70, 26, 40


def _inputs(info: dict) -> list[tuple[str, object, dict]]:
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    out = []
    for group in ("required", "optional"):
        for name in order.get(group, []):
            spec = info["input"][group][name]
            out.append((name, spec[0], spec[1] if len(spec) > 1 else {}))
    return out


def _is_widget(typ: object) -> bool:
    return isinstance(typ, list) or typ in WIDGET_TYPES


def _size(class_type: str, info: dict, inputs: list[dict], widgets: list) -> list[int]:
    """[width, height] of a node body (the title bar is above it), to fit its slots and widgets."""
    rows = max(len(inputs), len(info["output"]))
    height = rows * SLOT_H + len(widgets) * WIDGET_H + 16
    for _name, typ, opts in _inputs(info):
        if typ == "STRING" and opts.get("multiline"):
            height += MULTILINE_H - WIDGET_H
        if opts.get("image_upload"):
            height += WIDGET_H  # the upload button
    height += EXTRA_HEIGHT.get(class_type, 0)
    return [WIDTH.get(class_type, DEFAULT_WIDTH), height]


def _layout(api: dict, object_info: dict, ids: dict, sizes: dict, collapsed: set) -> dict:
    """Node id -> [x, y]: pipeline columns left to right, each node near the nodes feeding it."""
    sources = {nid: [v[0] for v in node["inputs"].values() if isinstance(v, list)]
               for nid, node in api.items()}
    consumers: dict[str, list[str]] = {nid: [] for nid in api}
    for nid, srcs in sources.items():
        for s in srcs:
            consumers[s].append(nid)

    def downstream(nid: str) -> set[str]:
        seen, todo = set(), [nid]
        while todo:
            for c in consumers[todo.pop()]:
                if c not in seen:
                    seen.add(c)
                    todo.append(c)
        return seen

    # Chained passes (an outfit: one inpaint node per garment, each repainting the last one's
    # result): pass i's retrieve .. inpaint columns go right of pass i-1's, so each pass reads
    # left to right. A node's pass is that of the first inpaint node it feeds.
    inpaints = [n for n in api if api[n]["class_type"] in INPAINT_TYPES]
    inpaints.sort(key=lambda n: -len(downstream(n) & set(inpaints)))
    pass_of = {nid: min((i for i, n in enumerate(inpaints) if n == nid or n in downstream(nid)), default=0)
               for nid in api}
    column: dict[str, int] = {}

    def col(nid: str) -> int:
        if nid not in column:
            ctype = api[nid]["class_type"]
            if ctype in COLUMN:
                c = COLUMN[ctype]
                column[nid] = c + PASS_COLUMNS * pass_of[nid] if c > 0 else c
            elif not sources[nid]:
                column[nid] = 0
            elif _is_output(object_info[ctype]):
                column[nid] = -1  # the last column, once the others are known
            else:  # right of what feeds it (image stitching, scoring, picking from a batch)
                column[nid] = 1 + max(col(s) for s in sources[nid])
        return column[nid]

    stages: dict[str, float] = {}

    def stage(nid: str) -> float:
        if nid in stages:
            return stages[nid]
        stages[nid] = 9  # while it is being worked out (a node reached again through a cycle)
        own = STAGE.get(api[nid]["class_type"])
        if own is None and sources[nid]:  # after what feeds it
            own = max(stage(s) for s in sources[nid])
        elif own is None:  # a loader: the first it feeds
            own = min((stage(c) for c in consumers[nid]), default=9)
        stages[nid] = own
        return own

    last = max(max(col(n) for n in api) + 1, LAST_COLUMN)
    by_col: dict[int, list[str]] = {}
    for nid in api:
        by_col.setdefault(col(nid) if col(nid) >= 0 else last, []).append(nid)
    pos: dict[str, list[int]] = {}

    def wanted(nid: str) -> float:
        """Level with the mean of the nodes that feed it (those placed so far)."""
        ys = [pos[s][1] for s in sources[nid] if s in pos]
        return sum(ys) / len(ys) if ys else 0

    x = MARGIN
    for c in sorted(by_col):
        members = sorted(by_col[c], key=lambda n: (n in collapsed, pass_of[n], stage(n), wanted(n), ids[n]))
        width = max([sizes[n][0] for n in members] + [LOADER_WIDTH if c == 0 else 0])
        cursor = MARGIN + TITLE_H
        for nid in members:
            sizes[nid][0] = width  # one width per column: tidy edges, short straight links
            if nid in collapsed:  # a title bar only, stacked right under the previous node
                pos[nid] = [x, cursor]
                cursor += TITLE_H + GAP_Y // 2
                continue
            pos[nid] = [x, max(cursor, int(wanted(nid)))]
            cursor = pos[nid][1] + sizes[nid][1] + GAP_Y + TITLE_H
        x += width + GAP_X
    return pos


def _is_output(info: dict) -> bool:
    """An output node with nothing to link onwards (SaveImage, PreviewImage)."""
    return bool(info.get("output_node")) and not info["output"]


def api_to_ui(api: dict, object_info: dict) -> dict:
    ids = {nid: i + 1 for i, nid in enumerate(api)}
    nodes, links = [], []
    out_links: dict[tuple[int, int], list[int]] = {}
    sizes: dict[str, list[int]] = {}
    collapsed: set[str] = set()
    for nid, node in api.items():
        info = object_info[node["class_type"]]
        inputs, widgets = [], []
        for name, typ, opts in _inputs(info):
            value = node["inputs"].get(name)
            linked = isinstance(value, list)
            if _is_widget(typ):
                widgets.append(opts.get("default") if linked or value is None else value)
                if opts.get("control_after_generate"):
                    widgets.append("fixed")
                if linked:
                    inputs.append({"name": name, "type": "COMBO" if isinstance(typ, list) else typ,
                                   "widget": {"name": name}, "link": None})
            else:
                inputs.append({"name": name, "type": typ, "link": None})
            if linked:
                link_id = len(links) + 1
                src, slot = ids[value[0]], value[1]
                src_type = object_info[api[value[0]]["class_type"]]["output"][slot]
                links.append([link_id, src, slot, ids[nid], len(inputs) - 1, src_type])
                inputs[-1]["link"] = link_id
                out_links.setdefault((src, slot), []).append(link_id)
        i = ids[nid] - 1
        sizes[nid] = _size(node["class_type"], info, inputs, widgets)
        if _is_output(info) and any(isinstance(v, list) and api[v[0]]["class_type"] == "ImageStitch"
                                    for v in node["inputs"].values()):
            sizes[nid] = list(SHEETS_SIZE)
        if node["class_type"] == "FashionRAGTextGarmentRetrieve" and isinstance(node["inputs"].get("k"), int):
            cards = min(node["inputs"]["k"], GALLERY_MAX_COLS)
            sizes[nid][0] = max(sizes[nid][0], 20 + cards * (CARD_W + CARD_GAP) - CARD_GAP)
        ui_node = {
            "id": ids[nid], "type": node["class_type"], "pos": [0, 0], "size": sizes[nid],
            "flags": {}, "order": i, "mode": 0, "inputs": inputs, "outputs": [],
            "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets,
        }
        prefix = node["inputs"].get("filename_prefix")
        if node["class_type"] == "SaveImage" and isinstance(prefix, str):
            ui_node["title"] = f"Save {prefix.rsplit('/', 1)[-1]}"  # "Save result", "Save mask"
        if _is_output(info) and any(
            isinstance(v, list) and api[v[0]]["class_type"] in SHOWS_ITS_IMAGES
            for v in node["inputs"].values()
        ):
            ui_node["flags"] = {"collapsed": True}
            collapsed.add(nid)
        nodes.append(ui_node)
    pos = _layout(api, object_info, ids, sizes, collapsed)
    for nid, n in zip(api, nodes, strict=True):
        n["pos"] = pos[nid]
    for n in nodes:
        info = object_info[n["type"]]
        n["outputs"] = [
            {"name": name, "type": typ, "links": out_links.get((n["id"], s), []), "slot_index": s}
            for s, (name, typ) in enumerate(zip(info["output_name"], info["output"], strict=True))
        ]
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {"ds": _view(nodes)}, "version": 0.4}


def _view(nodes: list[dict], screen: tuple[int, int] = (1480, 800)) -> dict:
    """The view a loaded workflow opens with: the whole graph on a ~1600x1000 window, clear of
    the frontend's side bar (left) and menus (top)."""
    x0 = min(n["pos"][0] for n in nodes)
    y0 = min(n["pos"][1] for n in nodes) - TITLE_H
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes)
    y1 = max(n["pos"][1] + (0 if n["flags"].get("collapsed") else n["size"][1]) for n in nodes)
    scale = round(min(1.0, screen[0] / (x1 - x0), screen[1] / (y1 - y0)), 3)
    return {"scale": scale, "offset": [round(80 / scale - x0), round(110 / scale - y0)]}


_UNSAVED = object()


def ui_to_api(ui: dict, object_info: dict) -> dict:
    link_src = {link[0]: (str(link[1]), link[2]) for link in ui["links"]}
    api = {}
    for n in sorted(ui["nodes"], key=lambda n: n["id"]):
        info = object_info[n["type"]]
        linked = {i["name"]: i["link"] for i in n["inputs"] if i.get("link") is not None}
        values = iter(n["widgets_values"])
        inputs = {}
        for name, typ, opts in _inputs(info):
            if _is_widget(typ):
                v = next(values, _UNSAVED)
                if v is _UNSAVED and name in info["input"].get("optional", {}):
                    continue  # optional, added since the workflow was saved: the frontend keeps its default
                if v is _UNSAVED:
                    raise ValueError(f"node {n['id']} ({n['type']}) has no saved value for widget {name!r}")
                if opts.get("control_after_generate"):
                    next(values)
                if name not in linked:
                    inputs[name] = v
            if name in linked:
                src, slot = link_src[linked[name]]
                inputs[name] = [src, slot]
        api[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return api


def node_info(cls) -> dict:
    """/object_info's entry for a node class, as server.py builds it."""
    if hasattr(cls, "GET_NODE_INFO_V1"):
        return cls.GET_NODE_INFO_V1()
    inputs = cls.INPUT_TYPES()
    return {
        "input": inputs,
        "input_order": {k: list(v) for k, v in inputs.items()},
        "output": list(cls.RETURN_TYPES),
        "output_name": list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
    }


if __name__ == "__main__":
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from comfy_harness import InProcessComfy

    repo = Path(__file__).resolve().parents[1]
    c = InProcessComfy.get(Path(tempfile.mkdtemp()))
    info = {name: node_info(cls) for name, cls in c.nodes.NODE_CLASS_MAPPINGS.items()}
    for api_path in sorted((repo / "example_workflows" / "api").glob("*.json")):
        ui = api_to_ui(json.loads(api_path.read_text()), info)
        (repo / "example_workflows" / api_path.name).write_text(json.dumps(ui, indent=1) + "\n")
        print("wrote", repo / "example_workflows" / api_path.name)
