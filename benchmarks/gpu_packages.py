"""What benchmarks/gpu_check.sh needs beyond torch, transformers and timm, and a venv that proves it.

NEEDED lists every distribution the check imports that torch, transformers and timm do not bring
themselves (their own requirements, read from the installed metadata), at the versions it ran
with here. `gpu_check.sh --prepare` downloads exactly these wheels; the GPU machine installs them
with --no-deps.

    python benchmarks/gpu_packages.py                 # NEEDED as requirement lines
    python benchmarks/gpu_packages.py --venv DIR      # a venv holding only what the check may use
    python benchmarks/gpu_packages.py --venv DIR --base-only   # only torch, transformers, timm

The venv (tests/test_gpu_check.py runs the check in it) sees the standard library and, linked
from this interpreter's site-packages, only torch, transformers, timm, their requirements and
NEEDED: a package the check imports that is missing from NEEDED fails the run there, as it would
on a machine holding only those.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

BASE = ("torch", "transformers", "timm")
# name -> version tested here; why each is needed
NEEDED = {
    "diffusers": "0.42.1",  # the independent pipeline
    "requests": "2.34.2",  # diffusers
    "urllib3": "2.8.0",  # requests
    "certifi": "2026.10.19.post1",  # requests
    "charset-normalizer": "3.5.3",  # requests
    "importlib-metadata": "10.2.0",  # diffusers
    "zipp": "4.1.2",  # importlib-metadata
    "lazy-importer": "0.1.0",  # importlib-metadata
    "open_clip_torch": "3.3.0",  # the pack: the retrieval encoder
    "ftfy": "6.3.1",  # open_clip's tokenizer
    "wcwidth": "0.9.4",  # ftfy
    "faiss-cpu": "1.15.1",  # the pack: the index
    "bm25s": "0.3.16",  # the pack: caption search
    "PyStemmer": "3.1.0",  # the pack: caption search
    "scipy": "1.17.1",  # ComfyUI's samplers, bm25s
    "torchsde": "0.2.6",  # ComfyUI's samplers
    "trampoline": "0.1.2",  # torchsde
    "einops": "0.8.2",  # ComfyUI's models
    "psutil": "7.2.2",  # ComfyUI's memory manager
}
# Distributions the check imports but never uses, carried as a stand-in package (folder holding it):
# ComfyUI's node API (comfy_api.latest) imports av (18.1.0 here, a 34 MiB wheel) for its video types.
STAND_INS = {"av": HERE / "gpu_kit_av"}
# ComfyUI's source the check never reads, left out of the kit (patterns below ComfyUI's root).
COMFYUI_LEFT_OUT = (
    "comfy_api_nodes",  # the check runs with --disable-api-nodes
    "tests", "tests-unit", "script_examples",  # ComfyUI's own tests and examples
    "models", "input", "output", "user",  # the check passes its own --base-directory
    "comfy/text_encoders/*_tokenizer",  # other families' tokenizers (SD2's is comfy/sd1_tokenizer)
    "comfy/comfy_types/examples",  # documentation images
    "*/__pycache__", "__pycache__", ".git", ".github",
)
# Of NEEDED, what the H200 image this project is lent already holds (its package list, 2026-11-17).
ON_H200_IMAGE = ("scipy", "einops", "psutil", "requests", "urllib3", "certifi", "charset-normalizer", "zipp")
MiB = 1 << 20


def _name(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _requirements(dist: str) -> list[str]:
    """The distributions `dist` requires here (markers evaluated, extras left out)."""
    from packaging.requirements import Requirement

    out = []
    for line in md.requires(dist) or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.append(req.name)
    return out


def base_closure() -> set[str]:
    """BASE and their requirements, recursively, as installed here (normalised names)."""
    seen: set[str] = set()
    todo = list(BASE)
    while todo:
        dist = _name(todo.pop())
        if dist in seen:
            continue
        seen.add(dist)
        try:
            todo += _requirements(dist)
        except md.PackageNotFoundError:
            continue
    return seen


def make_venv(target: Path, base_only: bool = False) -> Path:
    """A venv at `target` whose site-packages links only the allowed distributions' files (without
    NEEDED if base_only: a GPU machine before `gpu_check.sh --kit` installs them); its python."""
    # pip too: the GPU machine installs the wheels with it (gpu_check.sh --kit); the check never imports it
    allowed = base_closure() | {"pip"} | (set() if base_only else {_name(n) for n in NEEDED})
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(target)], check=True)
    python = target / "bin" / "python"
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    found = subprocess.run([str(python), "-c", where], check=True, capture_output=True, text=True)
    site = Path(found.stdout.strip())
    ours = Path(sysconfig.get_paths()["purelib"])
    missing = []
    for dist in md.distributions():
        if _name(dist.metadata["Name"]) not in allowed:
            continue
        tops = {Path(f).parts[0] for f in dist.files or () if Path(f).parts[0] not in ("..", "__pycache__")}
        for top in tops:
            if top.endswith(".pth") or not (ours / top).exists():
                continue
            link = site / top
            if not link.exists():
                link.symlink_to(ours / top)
    for name in NEEDED:
        try:
            md.distribution(name)
        except md.PackageNotFoundError:
            missing.append(name)
    if missing:
        raise SystemExit(f"not installed here, so not in the venv: {', '.join(missing)}")
    return python


def pack_comfyui(src: Path, tarball: Path) -> None:
    """ComfyUI's source at `src` less COMFYUI_LEFT_OUT, as `tarball` (gzip, one top folder ComfyUI/)."""
    if not (src / "main.py").is_file():
        print(f"gpu_packages: no ComfyUI at {src} (no main.py): pass --comfyui or set COMFYUI_PATH",
              file=sys.stderr)
        raise SystemExit(2)

    def keep(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
        inside = member.name.partition("/")[2]
        return None if any(fnmatch.fnmatch(inside, p) for p in COMFYUI_LEFT_OUT) else member

    partial = tarball.with_name(tarball.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(src, arcname="ComfyUI", filter=keep)
    os.replace(partial, tarball)  # a failed run leaves no half tarball under the kit's name


def install_stand_ins(site: Path) -> None:
    """The stand-in packages of STAND_INS into `site` (a kit's --target folder)."""
    for name, folder in STAND_INS.items():
        if any(site.glob(f"{name}-*.dist-info")):  # the real package was carried: keep it whole
            continue
        shutil.copytree(folder / name, site / name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))


def sizes(kit: Path) -> str:
    """A markdown table of a kit's wheels, stand-ins and ComfyUI tarball (MiB): the kit's total and
    what of it the H200 image needs; NEEDED left out of the kit (--without) named below."""
    items = {_name(w.name.split("-")[0]): w.stat().st_size for w in (kit / "wheels").glob("*.whl")}
    left_out = [n for n in NEEDED if _name(n) not in items]
    for name, folder in STAND_INS.items():
        items[f"{name} (stand-in)"] = sum(f.stat().st_size for f in (folder / name).rglob("*.py"))
    items["ComfyUI source (tar.gz)"] = (kit / "ComfyUI.tar.gz").stat().st_size
    rows = [f"| {name} | {size / MiB:.2f} | {'no (on the image)' if name in ON_H200_IMAGE else 'yes'} |"
            for name, size in sorted(items.items(), key=lambda kv: -kv[1])]
    h200 = sum(size for name, size in items.items() if name not in ON_H200_IMAGE)
    return "\n".join([
        "| package | MiB | needed on the H200 image |", "|---|---|---|", *rows,
        f"| **this kit** | **{sum(items.values()) / MiB:.1f}** | |",
        f"| **needed on the H200 image** | **{h200 / MiB:.1f}** | |",
        f"left out of this kit (--without): {', '.join(left_out) or 'none'}"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--venv", type=Path, default=None, help="make the venv of the module docstring here")
    p.add_argument("--base-only", action="store_true", help="the venv holds torch, transformers, timm only")
    p.add_argument("--comfyui-tarball", type=Path, default=None, help="write the kit's ComfyUI here")
    p.add_argument("--comfyui", type=Path, default=None, help="ComfyUI's source (default $COMFYUI_PATH)")
    p.add_argument("--stand-ins", type=Path, default=None, help="install the stand-ins into this folder")
    p.add_argument("--sizes", type=Path, default=None, help="print a kit folder's sizes as a table")
    a = p.parse_args()
    if a.venv:
        print(make_venv(a.venv, a.base_only))
    elif a.comfyui_tarball:
        pack_comfyui(a.comfyui or Path(os.environ.get("COMFYUI_PATH", "")), a.comfyui_tarball)
    elif a.stand_ins:
        install_stand_ins(a.stand_ins)
    elif a.sizes:
        print(sizes(a.sizes))
    else:
        print("\n".join(f"{name}=={version}" for name, version in NEEDED.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
