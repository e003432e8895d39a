"""ComfyUI adapter layer: one module per node family, each exporting NODES."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import model_paths

model_paths.register()

from . import (  # noqa: E402  (folders must be registered before nodes read them)
    adapter_loader,
    index_loader,
    inpaint,
    inversion,
    mask,
    pose,
    retrieve,
    unet_loader,
)

_MODULES = (index_loader, retrieve, adapter_loader, unet_loader, inversion, pose, mask, inpaint)


class FashionRAGExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [node for module in _MODULES for node in module.NODES]


async def comfy_entrypoint() -> FashionRAGExtension:
    return FashionRAGExtension()
