"""A builder killed with SIGKILL at random moments never costs a reader the index (issue 7).

A reader process loads and queries the index in a loop while a builder process rebuilds it
over and over and is killed at random moments (fork per build, so each kill costs no Python
start-up). Every load must give a complete index, either the old or the new one; after the
storm the next build must succeed and leave no stale folders behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fashion_rag.openclip_encoder import GarmentEncoder
from fashion_rag.retrieval.build import build_index
from fashion_rag.retrieval.catalog import scan_catalog
from fashion_rag.retrieval.index import load_index
from fashion_rag.retrieval.ondisk import LOCK, POINTER
from tools.demo.catalog import write_demo_catalog
from tools.demo.encoder import TINY_ARCH, write_tiny_encoder_weights

REPO = Path(__file__).resolve().parents[1]
KILLS, MIN_BUILDS, TIME_BUDGET_S = 50, 5, 150

# Builds alternate between two captionings of the same images (nothing to re-encode, so a
# forked child never needs torch) and between exact and IVF vector indexes (.faiss files).
BUILDER = r"""
import json, os, random, signal, sys, time
from fashion_rag.retrieval.build import build_index
from fashion_rag.retrieval.catalog import scan_catalog
from fashion_rag.openclip_encoder import GarmentEncoder
from fashion_rag.retrieval.ondisk import read_manifest

cfg = json.loads(sys.argv[1])
out = cfg["out"]
encoder = GarmentEncoder(cfg["weights"], "fashion-rag-tiny")
rng = random.Random(7)
kills = builds = mid_write = 0
typical = {}  # build duration per vector index kind, measured on unkilled builds
start = time.monotonic()
i = 0


def entries() -> set:
    try:
        return set(os.listdir(out))
    except FileNotFoundError:  # (never with the versioned layout: the folder is not renamed)
        return set()


def writing() -> bool:
    return any(n.startswith((".tmp-", ".index.json.")) for n in entries())


while (kills < cfg["kills"] or builds < cfg["builds"]) and time.monotonic() - start < cfg["budget"]:
    # Always the other captioning than the index holds, so every build writes a new version;
    # every third one an IVF index (its .faiss files) instead of an exact one.
    holds_a = read_manifest(out).items.captions[0].endswith(" a")
    meta, kind = cfg["meta_b"] if holds_a else cfg["meta_a"], "ivf" if i % 3 == 2 else "flat"
    i += 1
    before = entries()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            build_index(scan_catalog(cfg["catalog"], meta), out, encoder, index_type=kind,
                        log_fn=lambda m: None)
            os._exit(0)
        except BaseException as exc:
            print("BUILD FAILED", repr(exc), file=sys.stderr, flush=True)
            os._exit(3)
    if kind not in typical:  # the first build of a kind runs to the end: it sets the time scale
        status = os.waitpid(pid, 0)[1]
        typical[kind] = time.monotonic() - t0
        done = pid
    else:
        # Half the kills at any moment of a build, half while it writes and swaps its version.
        done, status = 0, 0
        if rng.random() < 0.5:
            time.sleep(rng.uniform(0, 1.2 * typical[kind]))
        else:
            while not writing():
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                time.sleep(0.001)
            time.sleep(0 if done else rng.uniform(0, 0.4 * typical[kind]))
        if not done:
            done, status = os.waitpid(pid, os.WNOHANG)
    if done == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        kills += 1
        # Killed after it began writing a version (its temp or version folder is new).
        new = entries() - before
        mid_write += any(n.startswith((".tmp-", "v-", ".index.json.")) for n in new)
    else:
        if os.waitstatus_to_exitcode(status) != 0:
            print(json.dumps({"failed_build": os.waitstatus_to_exitcode(status)}), flush=True)
            sys.exit(1)
        builds += 1
summary = {"kills": kills, "builds": builds, "mid_write": mid_write, "seconds": time.monotonic() - start}
print(json.dumps(summary), flush=True)
"""

READER = r"""
import json, os, sys, time
import numpy as np
from fashion_rag.retrieval.index import load_index
from fashion_rag.retrieval.search import search

cfg = json.loads(sys.argv[1])
captionings = [json.load(open(p)) for p in cfg["captions"]]
loads, errors, versions = 0, [], set()
while not os.path.exists(cfg["stop"]):
    try:
        index = load_index(cfg["out"])
        assert len(index) == 36 and index.captions in captionings, "a partial or mixed index"
        assert np.asarray(index.embeddings).shape == (36, 32)
        hits = index.search(np.asarray(index.embeddings[5]), 5)[0]
        assert len(hits) == 5 and hits[0] == 5, hits
        assert len(search(index, "red striped", 3, mode="caption")) == 3
        versions.add(index.version)
        loads += 1
    except Exception as exc:
        errors.append(repr(exc)[:300])
print(json.dumps({"loads": loads, "errors": errors[:5], "n_errors": len(errors), "versions": len(versions)}))
"""


def _spawn(script: str, cfg: dict) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", script, json.dumps(cfg)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL (POSIX)")
def test_readers_survive_a_builder_killed_at_random_moments(tmp_path):
    weights = write_tiny_encoder_weights(tmp_path / "tiny.safetensors")
    catalog = write_demo_catalog(tmp_path / "catalog", seed=0)
    rows = [json.loads(line) for line in (catalog / "metadata.jsonl").read_text().splitlines()]
    meta, captions = {}, []
    for tag in ("a", "b"):
        variant = [{**r, "caption": f"{r['caption']} {tag}"} for r in rows]
        meta[tag] = tmp_path / f"meta_{tag}.jsonl"
        meta[tag].write_text("".join(json.dumps(r) + "\n" for r in variant))
        captions.append(tmp_path / f"captions_{tag}.json")
        captions[-1].write_text(json.dumps([r["caption"] for r in variant]))
    out = tmp_path / "indexes" / "shop"
    encoder = GarmentEncoder(weights, TINY_ARCH)
    build_index(scan_catalog(catalog, meta["a"]), out, encoder)  # encodes every image once

    stop = tmp_path / "stop"
    reader = _spawn(READER, {"out": str(out), "captions": [str(c) for c in captions], "stop": str(stop)})
    builder = _spawn(BUILDER, {"weights": str(weights), "catalog": str(catalog), "meta_a": str(meta["a"]),
                               "meta_b": str(meta["b"]), "out": str(out), "kills": KILLS,
                               "builds": MIN_BUILDS, "budget": TIME_BUDGET_S})
    try:
        b_out, b_err = builder.communicate(timeout=TIME_BUDGET_S + 60)
    finally:
        stop.touch()
        if builder.poll() is None:
            builder.send_signal(signal.SIGKILL)
    r_out, r_err = reader.communicate(timeout=120)
    assert builder.returncode == 0, b_out + b_err[-3000:]
    storm = json.loads(b_out.strip().splitlines()[-1])
    result = json.loads(r_out.strip().splitlines()[-1])
    print(f"SIGKILL storm: {storm['kills']} kills ({storm['mid_write']} while writing a version) over "
          f"{storm['kills'] + storm['builds']} builds ({storm['builds']} completed) in "
          f"{storm['seconds']:.1f} s; reader: {result['loads']} loads of "
          f"{result['versions']} versions, {result['n_errors']} errors")
    assert result["n_errors"] == 0, result["errors"]
    assert storm["kills"] >= KILLS and storm["builds"] >= MIN_BUILDS and storm["mid_write"] >= 10, storm
    assert result["loads"] >= 100 and result["versions"] >= 2, result

    # The next build succeeds, and leaves the current and the previous version only.
    report = build_index(scan_catalog(catalog, meta["b"]), out, encoder, index_type="ivf")
    assert report.encoded == 0 and len(load_index(out, encoder)) == 36
    left = sorted(p.name for p in out.iterdir())
    versions = [n for n in left if n.startswith("v-")]
    assert sorted(set(left) - set(versions)) == sorted([LOCK, POINTER]) and 1 <= len(versions) <= 2, left
