"""What benchmarks/gpu_check.sh needs beyond torch, transformers and timm, and a venv that proves it.

NEEDED lists every distribution the check imports that torch, transformers and timm do not bring
themselves (their own requirements, read from the installed metadata), at the versions it ran
with here. `gpu_check.sh --prepare` downloads exactly these wheels; the GPU machine installs them
with --no-deps.

    python benchmarks/gpu_packages.py                 # NEEDED as requirement lines
    python benchmarks/gpu_packages.py --comfyui DIR   # ... for that ComfyUI (FROM_COMFYUI added)
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
sys.path.insert(0, str(HERE.parent))  # the pack's library, for the ComfyUI version (stdlib only)

from fashion_rag.comfyui_folder import read_comfyui_version  # noqa: E402

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
# The ComfyUI versions NEEDED and the stand-ins below are proven with (the kit measured and run).
PROVEN_WITH = ("0.3.75",)
# For any other ComfyUI: those of its own requirements that the check's imports reach in 0.33.0
# (comfy.model_management imports comfy_aimdo, the attention module comfy_kitchen, comfy.sd the
# audio VAE's torchaudio), each where its requirements.txt names it, at the version pinned there,
# else at the one installed here; and the real packages in place of the stand-ins (0.33.0's
# LoadImage decodes every image through PyAV).
FROM_COMFYUI = ("comfy-aimdo", "comfy-kitchen", "torchaudio")
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


def comfyui_requirements(comfyui: Path) -> dict[str, str]:
    """Normalised name -> specifier ("==0.4.13", or "" unpinned) of ComfyUI's requirements.txt;
    lines that are not requirements (comments, pip options) are left out."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        lines = (comfyui / "requirements.txt").read_text().splitlines()
    except OSError as exc:
        raise SystemExit(f"gpu_packages: cannot read ComfyUI's requirements.txt in {comfyui}: {exc}") from exc
    out = {}
    for line in lines:
        try:
            req = Requirement(line.split("#", 1)[0].strip())
        except InvalidRequirement:
            continue
        out[_name(req.name)] = str(req.specifier)
    return out


def needed(comfyui: Path | None) -> dict[str, str]:
    """NEEDED, plus for a ComfyUI at `comfyui` of a version not in PROVEN_WITH those of
    FROM_COMFYUI and STAND_INS its requirements name (None: NEEDED alone)."""
    out = dict(NEEDED)
    if comfyui is None or read_comfyui_version(comfyui) in PROVEN_WITH:
        return out
    requirements = comfyui_requirements(comfyui)
    for name in (n for n in (*FROM_COMFYUI, *STAND_INS) if _name(n) in requirements):
        spec = requirements[_name(name)]
        if spec.startswith("==") and "," not in spec:
            out[name] = spec[2:]
            continue
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            raise SystemExit(f"gpu_packages: ComfyUI at {comfyui} requires {name}{spec} without pinning "
                             f"one version, and this Python has none installed to take the version "
                             f"from: install it here (pip install '{name}{spec}') and run again") from None
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


def make_venv(target: Path, base_only: bool = False, comfyui: Path | None = None) -> Path:
    """A venv at `target` whose site-packages links only the allowed distributions' files (without
    the needed ones if base_only: a GPU machine before `gpu_check.sh --kit` installs them); its
    python. `comfyui`: the ComfyUI the check will run, whose requirements may add to NEEDED."""
    wanted = needed(comfyui)
    # pip too: the GPU machine installs the wheels with it (gpu_check.sh --kit); the check never imports it
    allowed = base_closure() | {"pip"} | (set() if base_only else {_name(n) for n in wanted})
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
    for name in wanted:
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
    """The stand-in packages of STAND_INS into `site` (a kit's --target folder), each unless the
    real one was carried or this Python has it (the stand-ins have no distribution metadata)."""
    for name, folder in STAND_INS.items():
        if any(site.glob(f"{name}-*.dist-info")):  # the real package was carried: keep it whole
            continue
        try:
            md.distribution(name)
            continue
        except md.PackageNotFoundError:
            pass
        shutil.copytree(folder / name, site / name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))


def sizes(kit: Path, comfyui: Path | None = None) -> str:
    """A markdown table of a kit's wheels, stand-ins and ComfyUI tarball (MiB): the kit's total and
    what of it the H200 image needs; the needed ones left out of the kit (--without) named below."""
    items = {_name(w.name.split("-")[0]): w.stat().st_size for w in (kit / "wheels").glob("*.whl")}
    left_out = [n for n in needed(comfyui) if _name(n) not in items]
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
    env_comfyui = os.environ.get("COMFYUI_PATH")
    comfyui = a.comfyui or (Path(env_comfyui) if env_comfyui else None)
    if a.venv:
        print(make_venv(a.venv, a.base_only, comfyui))
    elif a.comfyui_tarball:
        pack_comfyui(comfyui or Path(""), a.comfyui_tarball)
    elif a.stand_ins:
        install_stand_ins(a.stand_ins)
    elif a.sizes:
        print(sizes(a.sizes, comfyui))
    else:
        print("\n".join(f"{name}=={version}" for name, version in needed(comfyui).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
