"""`python -m fashion_rag convert-unet IN OUT.safetensors [--dtype fp16|fp32] [--force]`.

Converts the reference's `unet_120000.pth` (a pickled diffusers-key state dict) once into an
LDM/ComfyUI-layout safetensors: later loads are faster, memory-mapped and pickle-free. The
FashionRAGUNetLoader node reads both forms; converting is optional.
"""

from __future__ import annotations

import argparse
import sys

# Names only: torch is imported when the command runs, so other subcommands start fast.
_DTYPES = ("bf16", "fp16", "fp32")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-unet", help="convert the Fashion-RAG UNet to an LDM-layout .safetensors",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", help="unet_120000.pth (or any supported UNet file)")
    p.add_argument("output", help="where to write the .safetensors (e.g. models/fashion_rag/unet/)")
    p.add_argument("--dtype", choices=_DTYPES, default="fp16",
                   help="weight dtype of the output (default fp16, as the reference runs)")
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inpaint.unet_file import convert_unet_file
    from ..weights import WeightFileError

    try:
        out = convert_unet_file(args.input, args.output, _torch_dtype(args.dtype), overwrite=args.force)
    except (WeightFileError, FileNotFoundError, FileExistsError) as exc:
        print(f"convert-unet: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


def _torch_dtype(name: str):
    import torch

    return {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[name]
