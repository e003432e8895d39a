"""benchmarks/gpu_check.sh runs end to end on the CPU (--tiny), so that it cannot rot before a GPU
runs it, and in a venv holding only torch, transformers, timm (with their requirements) and the
packages benchmarks/gpu_packages.py lists: a package the check needs and the list lacks fails here.

--tiny takes the CPU for a device computing in fp16 (benchmarks/half_device.py): the fp16 run
takes the GPU's code paths (fp16 UNet and adapter without a manual cast).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tools.harness import REPO, comfy_path

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
ROWS = ("| ms per step (2 steps, CFG 7.5, fp16) |", "| ms per step, fp32 |", "| first image, s (fp16;",
        "| peak GPU memory, GiB (fp16) |", "| final latent, fp16 vs fp32 (relative) |",
        "| final latent, pack vs independent (fp32 / fp16) |", "| index query p50, 2,000 garments, k=10 |")


def _venv_and_kit(tmp_path):
    """The venv of gpu_packages.py and a kit as `gpu_check.sh --prepare` makes it, less the wheels
    (NEEDED is linked into the venv): the trimmed ComfyUI; --kit adds the stand-ins."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from gpu_packages import make_venv, needed, pack_comfyui
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    kit = tmp_path / "kit"
    (kit / "wheels").mkdir(parents=True)
    pack_comfyui(comfy_path(), kit / "ComfyUI.tar.gz")
    return make_venv(tmp_path / "venv", comfyui=comfy_path()), kit, "av" in needed(comfy_path())


def test_gpu_check_tiny_with_only_the_listed_packages(tmp_path, bench_cache):
    python, kit, real_av = _venv_and_kit(tmp_path)
    summary = tmp_path / "figures.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--tiny", "--python", str(python), "--kit", str(kit), "--cache", str(bench_cache),
            "--out", str(tmp_path / "run"), "--json", str(summary)]
    out = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=1200, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # it ran on the kit's pieces: PyAV's stand-in, not the wheel (ComfyUI 0.3.75; a newer one
    # decodes images through PyAV and gets the real one); ComfyUI without its API nodes
    venv_av = list((tmp_path / "venv").glob("lib/python*/site-packages/av"))
    if real_av:
        assert venv_av and not (kit / "site" / "av").exists()
    else:
        assert (kit / "site" / "av" / "container.py").is_file() and not venv_av
    assert (kit / "ComfyUI" / "main.py").is_file() and not (kit / "ComfyUI" / "comfy_api_nodes").exists()
    # trimmed: 1.25 MiB for 0.3.75 (6.5 MiB whole), 2.55 MiB for 0.33.0 (its source has grown)
    assert (kit / "ComfyUI.tar.gz").stat().st_size < (3 if real_av else 2) * 2**20
    print(out.stdout)
    for row in ROWS:
        assert row in out.stdout, row
    figures = json.loads(summary.read_text())
    assert figures["finite"]
    errors = figures["errors"]
    # fp16 really ran (it differs from fp32) and within fp16's rounding; at fp32 the two sides agree.
    assert 0 < errors["pack fp16 vs fp32"] < 1e-2 and 0 < errors["independent fp16 vs fp32"] < 1e-2
    assert errors["fp32 pack vs independent"] < 1e-4
    assert figures["fp16"]["dtypes"]["UNet"] == figures["fp16"]["dtypes"]["adapter"] == "float16"
    # The first image's retrieval share (the pack's alone: the independent side takes its garments).
    assert 0 < figures["fp16"]["pack_retrieval"] < figures["fp16"]["pack_first"]
    assert "of it retrieval: index + text query) |" in out.stdout
    assert set(figures["fp32"]["dtypes"].values()) == {"float32"}
    assert figures["index"]["cpu_recall"] == 1.0 and figures["index"]["cpu_p50"] > 0


def test_gpu_check_without_a_gpu_or_with_a_wrong_option(tmp_path):
    """On a machine without CUDA, the full check says so in one line (exit 2); --help gives the
    instructions at the script's top."""
    out = subprocess.run(["bash", str(SCRIPT), "--python", sys.executable, "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "no CUDA GPU here" in out.stderr and "--tiny" in out.stderr
    assert not (tmp_path / "run").exists()
    out = subprocess.run(["bash", str(SCRIPT), "--frobnicate"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unknown argument --frobnicate" in out.stderr
    out = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "--prepare gpu_kit" in out.stdout and "--kit gpu_kit" in out.stdout and "--tiny" in out.stdout


def test_av_stand_in_reads_as_absent_to_probes_and_says_why_on_use():
    """torchvision probes PyAV with `import av; av.logging...` under `except ImportError`: the kit's
    stand-in must read as absent there; ComfyUI's video classes, once used, say why they fail."""
    probe = ("import av\nprint(av.__file__)\n"
             "try:\n    av.logging.set_level(av.logging.ERROR)\n"
             "except ImportError as e:\n    print('absent:', e)\n"
             "from av.container import InputContainer\nfrom av.subtitles.stream import SubtitleStream\n"
             "from av.video.reformatter import ColorPrimaries, ColorRange, ColorTrc\n"
             "print([int(x) for x in (ColorPrimaries.BT709, ColorPrimaries.BT2020, ColorRange.MPEG,"
             " ColorRange.JPEG, ColorTrc.BT709, ColorTrc.IEC61966_2_1, ColorTrc.SMPTE2084,"
             " ColorTrc.ARIB_STD_B67)])\n"
             "InputContainer()\n")
    stand_in = REPO / "benchmarks" / "gpu_kit_av"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(stand_in)})
    assert out.returncode == 1 and out.stdout.splitlines()[0] == str(stand_in / "av" / "__init__.py")
    assert "absent: av.logging: video and audio are not part of the GPU check" in out.stdout
    # ComfyUI 0.33.0 keys dicts on these members at import; PyAV's (libavutil's) values.
    assert out.stdout.splitlines()[2] == "[1, 9, 1, 2, 1, 13, 16, 18]"
    assert out.stderr.splitlines()[-1].startswith(
        "av.NotInGPUKit: av: InputContainer: video and audio are not part of the GPU check")


def test_a_newer_comfyuis_own_requirements_join_the_kit(tmp_path, monkeypatch):
    """ComfyUI 0.33.0 imports comfy_aimdo, comfy_kitchen and torchaudio where the check runs it,
    and its LoadImage reads images through PyAV; the kit is proven with 0.3.75 (NEEDED and the av
    stand-in). Another version's kit takes those of them its requirements.txt names, at the
    pinned version, else the one installed here; one it cannot version is refused, saying what to
    do. Mutations caught: the additions made for 0.3.75 too (its requirements name torchaudio);
    the pin ignored for the installed version; names compared unnormalised (comfy_kitchen)."""
    import importlib.metadata as md

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_packages
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    assert gpu_packages.needed(None) == gpu_packages.NEEDED
    (tmp_path / "requirements.txt").write_text(
        "# ComfyUI\ntorch\n--extra-index-url https://example.invalid/simple\ncomfy-aimdo==0.4.13\n"
        "comfy_kitchen==0.2.31  # attention\ntorchaudio\nav>=16.0.0\n")
    (tmp_path / "comfyui_version.py").write_text('__version__ = "0.3.75"\n')
    assert gpu_packages.needed(tmp_path) == gpu_packages.NEEDED
    (tmp_path / "comfyui_version.py").write_text('# generated\n__version__ = "0.33.0"\n')
    added = {k: v for k, v in gpu_packages.needed(tmp_path).items() if k not in gpu_packages.NEEDED}
    assert added == {"comfy-aimdo": "0.4.13", "comfy-kitchen": "0.2.31",
                     "torchaudio": md.version("torchaudio"), "av": md.version("av")}
    monkeypatch.setattr(gpu_packages, "FROM_COMFYUI", ("no-such-dist-here",))
    (tmp_path / "requirements.txt").write_text("no_such_dist_here>=1,<2\n")
    with pytest.raises(SystemExit, match=r"requires no-such-dist-here<2,>=1 without pinning one version.*"
                                         r"pip install 'no-such-dist-here<2,>=1'"):
        gpu_packages.needed(tmp_path)
