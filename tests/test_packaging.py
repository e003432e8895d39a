"""`pip install .` gives the library and the `fashion-rag` command; registry metadata is valid."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile

import tomllib

from tools.harness import REPO


def test_wheel_holds_the_library_and_the_console_command(tmp_path):
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    src = tmp_path / "src"
    shutil.copytree(REPO / "fashion_rag", src / "fashion_rag",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, text=True)
    (wheel,) = (tmp_path / "dist").glob("fashion_rag-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"fashion_rag"}
    assert "fashion_rag/retrieval/index.py" in names and "fashion_rag/inpaint/unet_layout.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "fashion-rag = fashion_rag.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
    # `pip install "fashion-rag[ray]"` (the README) brings Ray Data for `index build --engine ray`.
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Provides-Extra: ray" in metadata
    assert re.search(r"Requires-Dist: ray\[data\][<>=,.\d]+ ?; extra == .ray.", metadata)

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, text=True)
    # Installed as a library, the pack's example workflow and docs are not beside it (folders of
    # those names in site-packages are some other package's): evaluate says what to pass.
    for stray in ("example_workflows/api/fashion_rag_text_to_tryon.json", "docs/metrics.md"):
        (target / stray).parent.mkdir(parents=True)
        (target / stray).write_text("{}")
    script = ("import sys\nfrom fashion_rag.cli import main\n"
              "from fashion_rag.cli.batch_server import pack_file\n"
              "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e\n"
              "print(pack_file('docs', 'metrics.md')); sys.exit(main(['evaluate', '--csv', 'x.csv']))")
    out = subprocess.run([sys.executable, "-c", script],
                         cwd=tmp_path, env={"PYTHONPATH": str(target)}, capture_output=True, text=True)
    assert "index" in out.stdout and "convert-unet" in out.stdout, out.stderr
    assert out.returncode == 2 and out.stdout.endswith("\nNone\n"), out.stdout[-300:] + out.stderr
    assert out.stderr.count("\n") == 1 and "pass --workflow PATH (the pack's " \
        "example_workflows/api/fashion_rag_text_to_tryon.json" in out.stderr, out.stderr


def test_the_checkout_is_the_pack_evaluate_finds_its_files_in():
    from fashion_rag.cli.batch_server import pack_file

    assert pack_file("example_workflows", "api", "fashion_rag_text_to_tryon.json") == \
        REPO / "example_workflows" / "api" / "fashion_rag_text_to_tryon.json"
    assert pack_file("docs", "metrics.md") == REPO / "docs" / "metrics.md"
    assert pack_file("docs", "no-such-file.md") is None


def test_comfy_registry_metadata():
    """What the Comfy registry checks (docs.comfy.org/registry/specifications)."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    name = project["name"]
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*", name)
    assert "comfyui" not in name.lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["urls"]["Repository"].startswith("https://")
    assert comfy["PublisherId"] and comfy["DisplayName"]
    # The pack's runtime needs are the ones ComfyUI-Manager installs.
    lines = (REPO / "requirements.txt").read_text().splitlines()
    reqs = {re.split(r"[<>=]", x)[0].strip() for x in lines if x.strip() and not x.startswith("#")}
    declared = {re.split(r"[<>=]", d)[0].strip() for d in project["dependencies"]}
    assert reqs <= declared


def test_a_cached_comfy_base_runs_this_checkouts_pack(tmp_path):
    """A base dir kept in a cache (demo, thumbnails) may link another checkout, or a deleted one:
    it must be repointed to this checkout, or its server runs someone else's code."""
    from tools.harness import PACK_DIR_NAME, make_base_dir

    link = tmp_path / "base" / "custom_nodes" / PACK_DIR_NAME
    for old in (tmp_path / "other_checkout", tmp_path / "deleted_checkout"):
        link.parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "other_checkout").mkdir(exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(old, target_is_directory=True)
        make_base_dir(tmp_path / "base")
        assert link.resolve() == REPO
    assert [p.name for p in link.parent.iterdir()] == [PACK_DIR_NAME]  # no temporary link left
