"""Memory of the retrieval encoder: open_clip's own load, the whole model, its text tower only.

    python benchmarks/encoder_load.py            # full size: OpenCLIP ViT-L-14 (428M parameters)
    python benchmarks/encoder_load.py --smoke    # the tiny demo encoder: checks the script

The index loader node builds its encoder text-first (`GarmentEncoder(image_tower=False)`): text
retrieval never needs the image tower, which is loaded apart when a node first encodes an image
(the score node). The encoder makes its model with the parameters on the meta device and reads
only the part it needs from the memory-mapped file, block by block; open_clip's own load (the
first row: what the encoder did before) builds the whole model and reads the whole file beside
it. Random weights of ViT-L-14's layout, fp32 safetensors (written once to the cache folder).
Each row runs in a fresh process (--smoke: the three in one): load, encode one text, then one
image; prints seconds and the memory over the RSS before the load (peak and kept).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

_ROW = r"""
import gc, json, sys, time
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/benchmarks"]
import open_clip, torch  # imported before the figures: their memory is not the model's
from PIL import Image
from fashion_rag.openclip_encoder import GarmentEncoder, model_config, register_config
from memory_common import proc_memory as mem


class OpenClipOwn:  # open_clip's own load of the whole model from the file (the encoder before)

    def __init__(self, path, arch):
        register_config(arch, model_config(arch, path))  # the tiny one's config is in its file
        self.model = open_clip.create_model(arch, pretrained=path).eval()
        self.tokenizer = open_clip.get_tokenizer(arch)

    @torch.no_grad()
    def encode_texts(self, texts):
        return self.model.encode_text(self.tokenizer(texts))

    @torch.no_grad()
    def encode_images(self, images):
        return self.model.encode_image(torch.zeros(len(images), 3, *self.model.visual.image_size))

torch.set_num_threads(2)
for towers in sys.argv[4:]:  # one JSON line per row
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
    before = mem()
    row = {}
    start = time.perf_counter()
    if towers == "open_clip":
        encoder = OpenClipOwn(sys.argv[2], sys.argv[3])
    else:
        encoder = GarmentEncoder(sys.argv[2], sys.argv[3], image_tower=towers == "both")
    encoder.encode_texts(["a red dress"])
    gc.collect()
    m = mem()
    row["text"] = {"seconds": time.perf_counter() - start, "peak": m["VmHWM"] - before["VmRSS"],
                   "kept": m["VmRSS"] - before["VmRSS"]}
    start = time.perf_counter()
    encoder.encode_images([Image.new("RGB", (384, 512), (200, 40, 40))])
    gc.collect()
    m = mem()
    row["image"] = {"seconds": time.perf_counter() - start, "peak": m["VmHWM"] - before["VmRSS"],
                    "kept": m["VmRSS"] - before["VmRSS"]}
    print(json.dumps(row), flush=True)
    del encoder
"""


def weights_file(cache: Path, smoke: bool) -> tuple[Path, str]:
    cache.mkdir(parents=True, exist_ok=True)
    if smoke:
        from tools.demo.encoder import TINY_ARCH, write_tiny_encoder_weights

        path = cache / "encoder_tiny.safetensors"
        if not path.is_file():
            write_tiny_encoder_weights(path)
        return path, TINY_ARCH
    path = cache / "open_clip_vit_l_14_random.safetensors"
    if not path.is_file():
        import open_clip
        import torch
        from safetensors.torch import save_file

        from fashion_rag.files import atomic_write

        torch.manual_seed(0)
        model = open_clip.create_model("ViT-L-14", pretrained=None)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        del model
        atomic_write(path, lambda tmp: save_file(state, tmp))
    return path, "ViT-L-14"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the tiny demo encoder (checks the script)")
    cache = Path(os.environ.get("FASHION_RAG_CACHE", Path.home() / ".cache" / "fashion-rag")) / "bench"
    parser.add_argument("--cache", type=Path, default=cache, help="where the random weights file is kept")
    args = parser.parse_args()
    path, arch = weights_file(args.cache, args.smoke)
    gib = 2**30
    print(f"encoder {arch}, {path.stat().st_size / gib:.2f} GiB file (fp32, random weights)\n")
    print("| encoder | after load + 1 text: s | peak GiB | kept GiB | + 1 image: s | kept GiB |")
    print("|---|---|---|---|---|---|")
    labels = {"open_clip": "open_clip's own load (the encoder before)", "both": "whole model, read in parts",
              "text": "text-first (index loader node)"}
    # A fresh process per row at full size, so that no row's figures hold what another left;
    # --smoke checks the script with the three rows in one process (a start costs more than a row).
    groups = [list(labels)] if args.smoke else [[towers] for towers in labels]
    for group in groups:
        out = subprocess.run([sys.executable, "-c", _ROW, str(HERE.parent), str(path), arch, *group],
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        for towers, line in zip(group, out.stdout.strip().splitlines()[-len(group):], strict=True):
            print_row(labels[towers], json.loads(line))


def print_row(label: str, r: dict) -> None:
    gib = 2**30
    t, i = r["text"], r["image"]
    print(f"| {label} | {t['seconds']:.1f} | {t['peak'] / gib:.2f} | {t['kept'] / gib:.2f} | "
          f"{i['seconds']:.1f} | {i['kept'] / gib:.2f} |")


if __name__ == "__main__":
    main()
