"""The pack as ComfyUI users meet it: node ids, tooltips, categories, docs, and layering."""

from __future__ import annotations

import ast
import re

from tools.harness import REPO
from workflow_ui import node_info

NODE_IDS = {
    "FashionRAGGarmentIndexLoader", "FashionRAGTextGarmentRetrieve", "FashionRAGAdapterLoader",
    "FashionRAGGarmentInversion", "FashionRAGSaveGarmentEmbedding", "FashionRAGUNetLoader",
    "FashionRAGPoseFromKeypoints", "FashionRAGGarmentMask", "FashionRAGInpaint",
    "FashionRAGInpaintConditioning", "FashionRAGReferenceDDIM", "FashionRAGCheckpointCLIPVAELoader",
    "FashionRAGCLIPVisionLoader", "FashionRAGScore",
}
# Module names ComfyUI owns; the library must not need ComfyUI at all.
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "execution",
                 "server", "node_helpers", "latent_preview", "utils"}


def test_all_nodes_registered_with_tooltips_and_docs(comfy_runtime):
    ours = {n: c for n, c in comfy_runtime.nodes.NODE_CLASS_MAPPINGS.items() if n.startswith("FashionRAG")}
    assert set(ours) == NODE_IDS
    for name, cls in ours.items():
        info = node_info(cls)
        assert info["category"].startswith("fashion_rag"), name
        assert info["description"], name
        for group in ("required", "optional"):
            for inp, spec in info["input"].get(group, {}).items():
                opts = spec[1] if len(spec) > 1 else {}
                assert opts.get("tooltip"), f"{name}.{inp} has no tooltip"
        doc = REPO / "web" / "docs" / f"{name}.md"
        assert doc.is_file(), f"{doc} missing"


MENU = {"fashion_rag/loaders", "fashion_rag/retrieval", "fashion_rag/inversion", "fashion_rag/inpaint",
        "fashion_rag/evaluation"}


def _texts(info: dict) -> list[str]:
    texts = [info["description"]]
    for group in ("required", "optional"):
        for spec in info["input"].get(group, {}).values():
            texts.append((spec[1] if len(spec) > 1 else {}).get("tooltip", ""))
    return texts + list(info.get("output_tooltips") or [])


def test_one_naming_scheme(comfy_runtime):
    """Class names are node ids, display names say "Fashion-RAG", one menu tree, docs titled by
    display name, and every node a tooltip, description or doc names exists.
    Mutations caught: a class named unlike its id, a display name or menu path of its own, a doc
    title left behind by a rename, a tooltip naming a node that does not exist."""
    ours = {n: c for n, c in comfy_runtime.nodes.NODE_CLASS_MAPPINGS.items() if n.startswith("FashionRAG")}
    infos = {n: node_info(c) for n, c in ours.items()}
    displays = {info["display_name"] for info in infos.values()}
    for name, cls in ours.items():
        info = infos[name]
        assert cls.__name__ == name
        assert info["display_name"].startswith("Fashion-RAG "), name
        assert info["category"] in MENU, (name, info["category"])
        doc = (REPO / "web" / "docs" / f"{name}.md").read_text()
        assert doc.splitlines()[0] == f"# {info['display_name']}", name
        named = re.findall(r"'(Fashion-RAG [^']+)'", " ".join(t or "" for t in _texts(info)))
        named += re.findall(r"\*\*(Fashion-RAG [^*]+)\*\*", doc)
        named = [" ".join(n.split()) for n in named]  # names wrapped across lines
        allowed = displays | {"Fashion-RAG UNet"}  # the model, which docs name too
        assert set(named) <= allowed, (name, set(named) - allowed)


def test_one_log_prefix():
    """Every log line goes through fashion_rag.logs (one prefix); no module writes its own."""
    for path in sorted(REPO.glob("fashion_rag/**/*.py")) + sorted(REPO.glob("nodes/*.py")):
        text = path.read_text()
        assert "[fashion_rag]" not in text and "[fashion-rag]" not in text, path
        assert "logging.getLogger(\"fashion_rag\")" not in text or path.name == "logs.py", path


def test_library_never_imports_comfyui():
    for path in sorted((REPO / "fashion_rag").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for n in names:
                assert n.split(".")[0] not in COMFY_MODULES, f"{path.relative_to(REPO)} imports {n}"


def test_pack_uses_relative_imports_only():
    """ComfyUI owns top-level names like `nodes` and `utils`: the pack must import itself relatively."""
    for path in sorted(REPO.glob("nodes/*.py")) + [REPO / "__init__.py"]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert node.module.split(".")[0] not in {"fashion_rag"}, f"{path}: {node.module}"


def test_all_node_modules_import_one_comfy_api_namespace():
    """nodes/__init__.py says which comfy_api namespace the pack uses and why; all modules agree."""
    namespaces = {}
    for path in sorted(REPO.glob("nodes/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            module = node.module if isinstance(node, ast.ImportFrom) and node.level == 0 else None
            if module and module.split(".")[0] == "comfy_api":
                namespaces.setdefault(node.module, []).append(path.name)
    assert set(namespaces) == {"comfy_api.latest"}, namespaces


def test_model_folders_are_reachable_through_extra_model_paths(comfy, comfy_base, tmp_path):
    """Users keep indexes/weights elsewhere and map them in extra_model_paths.yaml."""
    import shutil

    import utils.extra_config

    shop = tmp_path / "elsewhere" / "indexes" / "my_shop"
    shutil.copytree(comfy_base / "models" / "fashion_rag" / "indexes" / "demo", shop)
    yaml = tmp_path / "extra_model_paths.yaml"
    yaml.write_text(f"mine:\n  base_path: {tmp_path / 'elsewhere'}\n  fashion_rag_indexes: indexes\n")
    import folder_paths

    before = list(folder_paths.get_folder_paths("fashion_rag_indexes"))
    utils.extra_config.load_extra_path_config(str(yaml))
    try:
        loader = comfy.nodes.NODE_CLASS_MAPPINGS["FashionRAGGarmentIndexLoader"]
        spec = node_info(loader)["input"]["required"]["index"]
        options = spec[1]["options"] if spec[0] == "COMBO" else spec[0]
        assert "my_shop" in options and "demo" in options
    finally:  # the in-process ComfyUI is shared by the whole session
        folder_paths.folder_names_and_paths["fashion_rag_indexes"][0][:] = before


def test_root_module_imports_without_a_parent_package():
    """pytest imports the pack's __init__.py as a plain module when the checkout's folder is not a
    Python name (the README's `git clone ... comfyui-fashion-rag`): that must not fail collection.
    Mutation caught: re-raising every ImportError but ComfyUI's ("no known parent package")."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("comfyui-fashion-rag", REPO / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.WEB_DIRECTORY == "./web"
