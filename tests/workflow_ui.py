"""Convert between ComfyUI's API-format prompts and the UI (litegraph) workflow format.

The example workflow is kept in both forms; the UI form is generated from the API form with
the node definitions of a running ComfyUI (/object_info), and a test converts it back and
compares. Regenerate after changing a node's inputs:
    python tests/workflow_ui.py   (needs `bash .ci/setup` done; starts ComfyUI in-process)
"""

from __future__ import annotations

import json
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


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


def api_to_ui(api: dict, object_info: dict, columns: int = 5) -> dict:
    ids = {nid: i + 1 for i, nid in enumerate(api)}
    nodes, links = [], []
    out_links: dict[tuple[int, int], list[int]] = {}
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
        nodes.append({
            "id": ids[nid], "type": node["class_type"],
            "pos": [40 + (i % columns) * 360, 40 + (i // columns) * 420], "size": [320, 200],
            "flags": {}, "order": i, "mode": 0, "inputs": inputs, "outputs": [],
            "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets,
        })
    for n in nodes:
        info = object_info[n["type"]]
        n["outputs"] = [
            {"name": name, "type": typ, "links": out_links.get((n["id"], s), []), "slot_index": s}
            for s, (name, typ) in enumerate(zip(info["output_name"], info["output"], strict=True))
        ]
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


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
                v = next(values)
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
