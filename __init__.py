"""Fashion-RAG for ComfyUI: text -> retrieved garments -> pseudo-word embeddings -> inpainting.

ComfyUI imports this package from custom_nodes/. The library lives in `fashion_rag/` (no
ComfyUI import); `nodes/` adapts it to ComfyUI's types.
"""

WEB_DIRECTORY = "./web"

try:  # ComfyUI present: expose the V3 entry point
    from .nodes import comfy_entrypoint  # noqa: F401
except ImportError as exc:  # imported outside ComfyUI (e.g. by pytest collecting the root)
    # Without ComfyUI the import fails on "comfy"; pytest imports this file as a plain module (no
    # parent package) when the checkout's folder is not a Python name, e.g. comfyui-fashion-rag.
    if "comfy" not in str(exc) and __package__:
        raise

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
