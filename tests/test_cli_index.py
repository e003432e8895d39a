"""`python -m fashion_rag index build|info|query` as users run it (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.demo.catalog import write_demo_catalog
from tools.demo.encoder import write_tiny_encoder_weights

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fashion_rag", "index", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    weights = write_tiny_encoder_weights(root / "tiny.safetensors", seed=0)
    catalog = write_demo_catalog(root / "catalog", seed=0)
    (catalog / "upper_body" / "broken.png").write_bytes(b"not an image")
    (catalog / "metadata.jsonl").open("a").write(
        json.dumps({"id": "broken", "image": "upper_body/broken.png", "category": "upper_body"}) + "\n")
    return root, weights, catalog


def test_build_info_query(setup):
    root, weights, catalog = setup
    out = root / "index"
    build = ("build", "--catalog", catalog, "--out", out, "--encoder", "fashion-rag-tiny",
             "--weights", weights)
    r = _cli(*build)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # progress and problems go to stderr
    assert "encoded 37/37" in r.stderr and "RANDOM demo weights" in r.stderr
    assert "skipped: 'broken' (metadata.jsonl line 37): not an image: " in r.stderr  # by id, row, reason
    assert "36 garments indexed (36 encoded, 0 reused, 0 removed), 1 skipped (1 not an image)" in r.stderr
    # --strict: any skip fails the build, and nothing is written.
    r = _cli(*build[:-2], "--out", root / "strict", "--weights", weights, "--strict")
    assert r.returncode == 1 and "skipped: 'broken'" in r.stderr and "--strict" in r.stderr
    assert "Traceback" not in r.stderr and not (root / "strict").exists()

    r = _cli("info", out)
    assert r.returncode == 0, r.stderr
    assert "garments  36" in r.stdout and "upper_body: 12" in r.stdout and "dresses: 12" in r.stdout
    assert "fashion-rag-tiny" in r.stdout and "RANDOM demo weights" in r.stdout

    r = _cli("query", out, "red striped trousers", "-k", "3", "--mode", "caption", "--json")
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["caption"] == "red striped trousers" and Path(hits[0]["path"]).is_file()

    r = _cli("query", out, "a dress", "-k", "4", "--category", "dresses", "--mode", "image",
             "--weights", weights, "--exclude", "dress00")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 4 and all("dresses" in line for line in lines)
    assert not any(" dress00 " in line for line in lines)


def test_errors_are_one_clear_line(setup, tmp_path):
    root, weights, catalog = setup
    r = _cli("info", tmp_path / "nothing")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "No garment index" in r.stderr and "index build" in r.stderr
    r = _cli("build", "--catalog", tmp_path / "missing", "--out", tmp_path / "i", "--weights", weights)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    # --out equal to --catalog deleted every catalog image (exit code 0) before issue 7.
    before = sorted(p for p in catalog.rglob("*"))
    r = _cli("build", "--catalog", catalog, "--out", catalog, "--encoder", "fashion-rag-tiny",
             "--weights", weights)
    assert r.returncode == 2 and "is the catalog folder" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and sorted(p for p in catalog.rglob("*")) == before
    r = _cli("query", root / "index", "top", "-k", "3", "--mode", "caption", "--pin", "x" * 100_000)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr) < 400
