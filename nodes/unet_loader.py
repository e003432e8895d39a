"""FashionRAGUNetLoader: the 27-channel Fashion-RAG UNet as a ComfyUI MODEL.

ComfyUI's own UNETLoader cannot read the reference's diffusers-key `.pth` ("Could not detect
model type"), so the model is built from an explicit SD2 config (EPS prediction) whose UNet
shape is read from the weights, then wrapped in a ModelPatcher as ComfyUI's loaders do: the
result works with KSampler, LoRA and every other MODEL patch, and ComfyUI's memory manager
loads and offloads it.
"""

from __future__ import annotations

import os

import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.patcher_extension
import comfy.supported_models
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..fashion_rag.inpaint.unet_file import read_unet_file
from ..fashion_rag.inpaint.unet_layout import CONDITION_CHANNELS, FASHION_RAG_IN_CHANNELS, UNetLayout
from ..fashion_rag.logs import log
from ..fashion_rag.model_files import UNET
from ..fashion_rag.weights import load_in_parts
from .compat import check_combos, new_model_patcher, require_combos
from .model_cache import ModelCache
from .model_folders import missing_message

# Users who drop the file where stock UNETLoader looks get it listed too, under this prefix.
ALT_FOLDER = "diffusion_models"
ALT_PREFIX = "diffusion_models/"
WEIGHT_DTYPES = {"default": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_WRAPPER_KEY = "fashion_rag_concat_check"

# A 27-channel SD2 UNet is 1.7-3.4 GB: keep only the latest rather than every file ever loaded.
_UNETS: ModelCache[comfy.model_patcher.ModelPatcher] = ModelCache(max_entries=1)


def unet_files() -> list[str]:
    names = list(folder_paths.get_filename_list(UNET.key))
    try:
        names += [ALT_PREFIX + n for n in folder_paths.get_filename_list(ALT_FOLDER)]
    except KeyError:  # a ComfyUI without that folder key
        pass
    return names


def resolve(name: str) -> str:
    if name.startswith(ALT_PREFIX):
        path = folder_paths.get_full_path(ALT_FOLDER, name[len(ALT_PREFIX):])
    else:
        path = folder_paths.get_full_path(UNET.key, name)
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(missing_message(UNET, name))
    return path


def _check_concat(executor, x, t, c_concat=None, *args, **kwargs):
    """APPLY_MODEL wrapper: a clear error instead of a conv shape error deep in the UNet."""
    got = 0 if c_concat is None else c_concat.shape[1]
    if got != CONDITION_CHANNELS:
        raise ValueError(
            f"The Fashion-RAG UNet needs {CONDITION_CHANNELS} extra input channels (mask, "
            f"masked-image latent, pose) but the conditioning gives {got}. Feed the sampler "
            "through 'Fashion-RAG Inpaint Conditioning' (not InpaintModelConditioning), or use "
            "'Fashion-RAG Inpaint'."
        )
    return executor(x, t, c_concat, *args, **kwargs)


def to_ldm(sd: dict[str, torch.Tensor], layout: UNetLayout) -> dict[str, torch.Tensor]:
    """A checked diffusers-layout state dict in ComfyUI's names, by ComfyUI's own key map (the
    same tensor objects: renaming copies nothing)."""
    names = comfy.utils.unet_to_diffusers(layout.ldm_config())  # diffusers name -> LDM name
    return {names[k]: v for k, v in sd.items()}


def build_model(
    sd: dict[str, torch.Tensor], layout: UNetLayout, dtype: torch.dtype | None = None,
    source: str | None = None,
) -> comfy.model_patcher.ModelPatcher:
    """A ComfyUI MODEL from an LDM-layout state dict (emptied as it is loaded) and its layout;
    `source`: the file the tensors are memory-mapped from (its pages are given back as they
    are copied)."""
    model_config = comfy.supported_models.SD20(layout.ldm_config())
    # SD20 pins 64-wide heads; only toy test models differ.
    model_config.unet_config["num_head_channels"] = layout.head_channels
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    supported = list(model_config.supported_inference_dtypes)
    if dtype is None:
        dtype = mm.unet_dtype(model_params=comfy.utils.calculate_parameters(sd),
                              supported_dtypes=supported, weight_dtype=comfy.utils.weight_dtype(sd))
    manual_cast = mm.unet_manual_cast(dtype, load_device, supported)
    model_config.set_inference_dtype(dtype, manual_cast)
    # Explicit EPS, no auto-detection; the concat channels come from the conditioning's
    # noise_concat (FashionRAGInpaintConditioning), so no inpaint concat keys are set.
    model = comfy.model_base.BaseModel(model_config, model_type=comfy.model_base.ModelType.EPS)
    model = model.to(offload_device)
    # Block by block, each block's file pages given back once copied: the file and the model
    # are never both whole in memory (a 27-channel UNet is 3.5 GB in fp32).
    missing, unexpected = load_in_parts(model.diffusion_model, sd, source)
    if missing or unexpected:  # read_unet_file checked the file; this would be our bug
        raise RuntimeError(f"UNet build mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    patcher = new_model_patcher(model, load_device, offload_device)
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, _WRAPPER_KEY, _check_concat)
    return patcher


def load_unet(path: str, weight_dtype: str = "default") -> comfy.model_patcher.ModelPatcher:
    def load() -> comfy.model_patcher.ModelPatcher:
        sd, layout, naming = read_unet_file(path, in_channels=FASHION_RAG_IN_CHANNELS)
        if naming == "diffusers":
            sd = to_ldm(sd, layout)  # the same tensors renamed; the only dict holding them now
        patcher = build_model(sd, layout, WEIGHT_DTYPES[weight_dtype], source=path)
        log.info("loaded UNet %s (%s)", path, layout)
        return patcher

    return _UNETS.get(path, load, options=weight_dtype)


class FashionRAGUNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = unet_files()
        return io.Schema(
            node_id="FashionRAGUNetLoader",
            display_name="Fashion-RAG UNet Loader",
            category="fashion_rag/loaders",
            description=(
                "Loads the Fashion-RAG UNet (SD2-inpainting with 27 input channels) as a MODEL "
                "usable with KSampler, LoRAs and model patches. Reads the reference's "
                f"'{UNET.file}' or a converted .safetensors."
            ),
            inputs=[
                io.Combo.Input(
                    "unet_name", options=files, default=files[0] if files else None,
                    tooltip=f"File in models/{UNET.folder}/ or models/diffusion_models/: "
                            f"{UNET.where_to_get}, or a file made from it with `python -m fashion_rag "
                            "convert-unet`.",
                ),
                io.Combo.Input(
                    "weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                    tooltip="Weight dtype on the device; 'default' lets ComfyUI choose "
                            "(fp16 on most GPUs, as the reference runs).",
                ),
            ],
            outputs=[io.Model.Output(tooltip="The Fashion-RAG UNet (EPS prediction).")],
        )

    @classmethod
    def validate_inputs(cls, unet_name: str | None = None, weight_dtype: str | None = None) -> bool | str:
        # Declaring the combos here replaces ComfyUI's "value not in list" (0.8+; none before)
        # with our messages on every version. None: linked, checked when it runs.
        if unet_name is not None and (not unet_name or unet_name not in unet_files()):
            return missing_message(UNET, unet_name)
        return check_combos(cls, weight_dtype=weight_dtype)

    @classmethod
    def fingerprint_inputs(cls, unet_name: str, weight_dtype: str):
        try:
            st = os.stat(resolve(unet_name))
        except (FileNotFoundError, OSError):
            return unet_name
        return (unet_name, st.st_mtime_ns, st.st_size, weight_dtype)

    @classmethod
    def execute(cls, unet_name: str, weight_dtype: str = "default") -> io.NodeOutput:
        require_combos(cls, weight_dtype=weight_dtype)
        return io.NodeOutput(load_unet(resolve(unet_name), weight_dtype))


NODES: list[type[io.ComfyNode]] = [FashionRAGUNetLoader]
