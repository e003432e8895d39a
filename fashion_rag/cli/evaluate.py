"""`fashion-rag evaluate`: the paper's evaluation of this pack on Dress Code, or on your own photos.

Reads the test set (--dresscode DIR, or --csv FILE), retrieves each pair's garments, generates one
image per pair through the pack's nodes in ComfyUI (the batch machinery: progress with ETA, resume,
a failing pair recorded and the run going on), scores the images and writes OUT/report.md and
OUT/metrics.csv. --check only reads the test set; --score-only DIR scores images made before.
Exit status: 0 every pair scored; 1 some pair unusable or failed (the report covers the rest),
or --check / --strict found a problem; 2 bad input or setup (nothing generated); 130 Ctrl-C.
Details: docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..categories import CATEGORIES
from ..comfyui_folder import read_comfyui_version
from ..files import atomic_write, cached_sha256
from .batch_report import OK, read_summary
from .evaluate_graph import RESULT_FILE, EvalGraph, GraphError, Sampling, evaluation_graph, model_files

if TYPE_CHECKING:  # the evaluation modules import torch: loaded only when the command runs
    from PIL import Image

    from ..evaluation.metrics import MetricWeights
    from ..evaluation.pairs import EvalPair, PreparedPair, Problem, TestSet
    from ..evaluation.rankings import Rankings

OUT_LAYOUT = """\
OUT/inputs/<pair>/person.png, mask.png   each pair at 384x512, as the graph takes it
OUT/inputs/garments/<garment>.png        the retrieved garments, fitted to 384x512
OUT/jobs.csv, OUT/workflow_api.json      the job table and graph `fashion-rag batch` runs
OUT/generated/                           the batch's output: <pair>/result.png, summary.csv
OUT/images/<category>/<pair>_<text>.png  the results, named as the reference names them
OUT/index/                               the index of the test set's garments (default retrieval)
OUT/problems.txt, report.md, metrics.csv
"""
# Inside the node pack (batch_server.pack_file): a library install (pip) has no example workflows.
EXAMPLE_WORKFLOW = ("example_workflows", "api", "fashion_rag_text_to_tryon.json")
METRICS_DOCS = ("docs", "metrics.md")
GENERATED, INPUTS, IMAGES = "generated", "inputs", "images"
RETRIEVAL_MODES = ("index", "reference-json")


def _cache_root() -> Path:
    return Path(os.environ.get("FASHION_RAG_CACHE") or Path.home() / ".cache" / "fashion-rag")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..evaluation.dresscode_mask import MASK_TYPES
    from ..retrieval.search import MODES

    p = sub.add_parser("evaluate", help="the paper's evaluation: generate for a test set, score, report",
                       description=__doc__, epilog="Output folder:\n" + OUT_LAYOUT,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--dresscode", type=Path, help="the Dress Code folder (with the Dress Code-multimodal "
                      "caption files)")
    data.add_argument("--csv", type=Path, help="your own photos: a CSV with person, garment, caption, "
                      "category and optional mask, keypoints, id columns (paths relative to it)")
    p.add_argument("--order", choices=("paired", "unpaired"), default="paired",
                   help="Dress Code's test pairs (default paired; unpaired has no LPIPS/SSIM); for --csv, "
                        "paired compares each result with the person photo")
    p.add_argument("--category", default=",".join(CATEGORIES),
                   help="comma-separated categories (default all three)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: eval_out/<order> here)")
    g = p.add_argument_group("settings (defaults: the reference's)")
    g.add_argument("--steps", type=int, default=50, help="denoising steps (50)")
    g.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (7.5)")
    g.add_argument("--k", type=int, default=3, help="retrieved garments per pair, 1-3 (3)")
    g.add_argument("--seed", type=int, default=1234, help="sampling seed, the same for every pair (1234)")
    g.add_argument("--chunks", type=int, choices=(1, 2, 3), default=3,
                   help="noun chunks of the caption in the query text (3)")
    g.add_argument("--sampler", default="fashion_rag_ddim",
                   help="sampler (fashion_rag_ddim: the reference's DDIM)")
    g.add_argument("--scheduler", default="normal", help="scheduler (unused by fashion_rag_ddim)")
    g.add_argument("--size", default="384x512", type=_size, metavar="WxH",
                   help="generation size (the reference's 384x512; others, divisible by 8, for quick runs)")
    g.add_argument("--mask", choices=MASK_TYPES, default="bounding_box",
                   help="Dress Code mask: the box of the label-map mask (bounding_box, the reference's) or "
                        "the label-map mask itself (mask)")
    r = p.add_argument_group("retrieval")
    r.add_argument("--retrieval", nargs="+", default=["index"], metavar="MODE",
                   help="index (default): an index of the test set's garments, built in --index-dir; or "
                        "'reference-json DIR': the reference's test_<category>_<single|triplet>.json files")
    r.add_argument("--retrieval-mode", choices=MODES, default="image",
                   help="how the index ranks: image (OpenCLIP text->image, the paper's), caption, fusion")
    r.add_argument("--retrieval-weights", type=Path, help="the index's encoder: a weights file or an "
                   "OpenCLIP model folder (default: <base>/models/fashion_rag/retrieval/"
                   "open_clip_pytorch_model.bin)")
    r.add_argument("--retrieval-encoder", default=None,
                   help="OpenCLIP architecture of those weights (default: the one the file names, "
                        "else ViT-L-14)")
    r.add_argument("--index-dir", type=Path, help="where the garment index is kept (default OUT/index); "
                   "an index built before is updated, not rebuilt")
    m = p.add_argument_group("metrics")
    m.add_argument("--metric-weights", type=Path,
                   help="folder of the metric weight files (default <base>/models/fashion_rag/metrics)")
    m.add_argument("--stats-cache", type=Path, default=None,
                   help="cache of the test photos' FID statistics (default ~/.cache/fashion-rag/eval-stats)")
    m.add_argument("--metrics-device", default=None, help="torch device for the metrics (default cuda if "
                   "available, else cpu)")
    w = p.add_argument_group("what to do")
    w.add_argument("--check", action="store_true", help="only read the whole test set: usable pairs per "
                   "category and every problem by pair id; exit 1 if any pair is unusable")
    w.add_argument("--limit", type=int, help="only the first N pairs, taken in turn from each category")
    w.add_argument("--strict", action="store_true", help="stop before generating if any pair is unusable")
    w.add_argument("--score-only", type=Path, metavar="DIR", help="score the images in DIR "
                   "(<category>/<pair>_<text>.png, as OUT/images/ or the reference's output) instead of "
                   "generating")
    s = p.add_argument_group("ComfyUI (as `fashion-rag batch`)")
    s.add_argument("--workflow", type=Path, default=None,
                   help="API try-on workflow whose model loaders to use (default: the pack's "
                        f"{'/'.join(EXAMPLE_WORKFLOW)}; needed when fashion_rag is a library install)")
    s.add_argument("--server", help="URL of a running ComfyUI with this pack; default: start one")
    s.add_argument("--comfyui", type=Path, help="ComfyUI folder to start (as batch)")
    s.add_argument("--base", type=Path, help="ComfyUI base directory (models/, input/); as batch")
    s.add_argument("--python", default=sys.executable, help="Python that runs ComfyUI")
    s.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="started server's device")
    s.add_argument("--comfyui-args", default="", help="extra arguments for ComfyUI's main.py, one string")
    s.add_argument("--timeout", type=float, default=3600, help="seconds one pair may run (3600)")
    from .batch import add_engine_arguments  # the batch's own --engine ray options, passed on to it

    add_engine_arguments(s)
    p.set_defaults(func=run)


class _Setup(ValueError):
    """Bad input or setup found before generating: one line, exit code 2."""


def run(args: argparse.Namespace) -> int:
    from ..evaluation.pairs import DatasetError
    from .batch_jobs import JobError

    try:
        return _Evaluation(args).run()
    except (_Setup, DatasetError, GraphError, JobError) as exc:
        _err(str(exc))
        return 2
    except (OSError, ValueError) as exc:  # a library's message for a file it cannot use
        _err(" ".join(str(exc).split())[:2000])
        return 2
    except KeyboardInterrupt:
        _err("interrupted; run the same command again to resume")
        return 130


def _err(message: str) -> None:
    print(f"evaluate: {message}", file=sys.stderr, flush=True)


@dataclass
class _Run:
    """What one evaluation accumulates: its pairs' inputs, its problems, its results."""

    problems: list[Problem] = field(default_factory=list)
    garments: dict[str, list[str]] = field(default_factory=dict)  # pair id -> retrieved garment ids
    results: dict[str, Path] = field(default_factory=dict)  # pair id -> result image
    failed: dict[str, str] = field(default_factory=dict)  # pair id -> error


class _Evaluation:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = (args.out or Path("eval_out") / args.order).expanduser().resolve()
        self.categories = tuple(c.strip() for c in args.category.split(",") if c.strip())
        bad = [c for c in self.categories if c not in CATEGORIES]
        if bad or not self.categories:
            raise _Setup(f"--category {args.category!r}: use a comma-separated list of "
                         f"{', '.join(CATEGORIES)}")
        if not 1 <= args.k <= 3:
            raise _Setup(f"--k {args.k}: the prompt holds the pseudo-words of 1 to 3 garments")
        if args.limit is not None and args.limit < 1:
            raise _Setup("--limit must be at least 1")
        retrieval = list(args.retrieval)
        if retrieval[0] not in RETRIEVAL_MODES or (retrieval[0] == "index") != (len(retrieval) == 1) \
                or len(retrieval) > 2:
            raise _Setup("--retrieval takes 'index' or 'reference-json DIR'")
        if retrieval[0] == "reference-json" and args.csv:
            raise _Setup("--retrieval reference-json is for --dresscode (the reference's files rank "
                         "Dress Code)")
        self.reference_json = Path(retrieval[1]) if len(retrieval) == 2 else None
        self.comfyui = args.comfyui
        self.base = args.base or (None if args.server else (args.comfyui or _default_comfyui()))
        self.paired = args.order == "paired"
        # Resolved before the test set is read: a missing workflow is a setup error, found at once.
        self.workflow = None if args.check or args.score_only else (args.workflow or _example_workflow())
        self.state = _Run()

    # --- the steps -------------------------------------------------------------------------------

    def run(self) -> int:
        test_set = self.read()
        pairs = limited(test_set.pairs, self.args.limit)
        self.state.problems = list(test_set.problems)
        if self.args.check:
            return self.check(test_set, pairs)
        weights = self.metric_weights()
        graph = None
        if not self.args.score_only:
            assert self.workflow is not None
            workflow = _load_workflow(self.workflow)
            sampling = Sampling(self.args.seed, self.args.steps, self.args.guidance, self.args.sampler,
                                self.args.scheduler)
            graph = evaluation_graph(workflow, self.args.k, sampling, self.args.size)
        prepared = self.prepare(pairs)
        if self.args.strict and self.state.problems:
            self.print_problems()
            _err(f"{len(self.state.problems)} problem(s) and --strict: nothing generated")
            return 1
        rankings = self.retrieve(test_set, prepared)
        usable = [p for p in prepared if p.pair_id in self.state.garments]
        self.write_garments(rankings, usable)
        if self.args.score_only:
            self.find_results(usable)
        else:
            assert graph is not None
            code = self.generate(graph, usable)
            if code in (2, 130):
                return code
        self.collect_reference_layout(usable)
        self.write_problems()
        self.print_problems()
        if not self.state.results:
            _err("no pair has an image to score: no report written (OUT/problems.txt says why)")
            return 1
        self.score(test_set, usable, rankings, weights, graph)
        n_bad = len(self.state.problems) + len(self.state.failed)
        print(f"evaluate: {len(self.state.results)} of {len(pairs)} pairs scored"
              + (f", {n_bad} unusable or failed (OUT/problems.txt)" if n_bad else "")
              + f"; report {self.out / 'report.md'}", file=sys.stderr)
        return 1 if n_bad else 0

    def read(self) -> TestSet:
        from ..evaluation.dresscode import read_dresscode
        from ..evaluation.own_photos import read_photo_table

        if self.args.csv:
            table = read_photo_table(self.args.csv)
            table.pairs = [p for p in table.pairs if p.category in self.categories]
            return table
        return read_dresscode(self.args.dresscode, self.args.order, self.categories, self.args.chunks)

    def _prepare_one(self, pair: EvalPair) -> PreparedPair:
        from ..evaluation.dresscode import prepare_dresscode
        from ..evaluation.own_photos import prepare_photo

        return (prepare_photo if self.args.csv else prepare_dresscode)(pair, self.args.mask, self.args.size)

    def check(self, test_set: TestSet, pairs: list[EvalPair]) -> int:
        """Read every file each pair needs, as a run would, and say what is wrong."""
        from ..evaluation.pairs import PairError, Problem, read_picture

        t0 = time.monotonic()
        problems = self.state.problems
        usable: dict[str, int] = {}
        for i, pair in enumerate(pairs, 1):
            try:
                self._prepare_one(pair)
                read_picture(test_set.gallery[pair.garment_id].image, "garment image")
                usable[pair.category] = usable.get(pair.category, 0) + 1
            except PairError as exc:
                problems.append(Problem(pair.pair_id, pair.category, str(exc)))
            if i % 500 == 0:
                print(f"evaluate: checked {i}/{len(pairs)} pairs ({time.monotonic() - t0:.0f}s)",
                      file=sys.stderr, flush=True)
        for category in sorted(self.categories if not self.args.csv else usable):
            bad = sum(1 for p in problems if p.category == category)
            print(f"{category}: {usable.get(category, 0)} usable pairs"
                  + (f", {bad} unusable" if bad else ""))
        for reason, count in sorted(test_set.left_out.items()):
            print(f"left out as the reference does: {count} ({reason})")
        for problem in problems:
            print(f"problem: {problem}")
        print(f"{sum(usable.values())} usable pairs, {len(problems)} problem(s)")
        return 1 if problems else 0

    def metric_weights(self) -> MetricWeights:
        from ..evaluation.metrics import find_metric_weights

        folder = self.args.metric_weights
        if folder is None:
            if self.base is None:
                raise _Setup("--metric-weights DIR is needed with --server (no base directory to look in)")
            folder = Path(self.base) / "models" / "fashion_rag" / "metrics"
        return find_metric_weights(Path(folder), self.paired)

    def prepare(self, pairs: list[EvalPair]) -> list[EvalPair]:
        """Each pair's person, mask and pose written under OUT/inputs/<pair>/ (rewritten only when
        they change, so a resumed batch sees the same files); unusable pairs become problems."""
        from PIL import Image

        from ..evaluation.pairs import PairError, Problem

        kept = []
        self.keypoints: dict[str, str] = {}
        t0 = time.monotonic()
        for i, pair in enumerate(pairs, 1):
            try:
                ready = self._prepare_one(pair)
            except PairError as exc:
                self.state.problems.append(Problem(pair.pair_id, pair.category, str(exc)))
                continue
            folder = self.out / INPUTS / pair.pair_id
            _write_png(ready.person, folder / "person.png")
            _write_png(Image.fromarray(ready.mask.astype("uint8") * 255, "L"), folder / "mask.png")
            self.keypoints[pair.pair_id] = ready.keypoints_json
            kept.append(pair)
            if i % 500 == 0:
                print(f"evaluate: prepared {i}/{len(pairs)} pairs ({time.monotonic() - t0:.0f}s)",
                      file=sys.stderr, flush=True)
        return kept

    def retrieve(self, test_set: TestSet, pairs: list[EvalPair]) -> Rankings:
        """Every query's top 20 (generation and the retrieval metrics read them); each pair's top k."""
        from ..evaluation.pairs import Problem
        from ..evaluation.rankings import index_rankings, reference_rankings

        wanted = {(p.category, p.query) for p in pairs}
        for n in self.metric_chunks():
            wanted |= {(p.category, q) for p in pairs
                       if (q := test_set.gallery[p.garment_id].queries.get(n)) is not None}
        if self.reference_json is not None:
            rankings = reference_rankings(self.reference_json, self.args.dresscode, self.categories,
                                          self.args.chunks)
            for n in self.metric_chunks():
                if n != self.args.chunks:
                    try:
                        more = reference_rankings(self.reference_json, self.args.dresscode,
                                                  self.categories, n)
                    except ValueError as exc:  # e.g. no "double" files: that metric set is left out
                        _err(f"retrieval metrics with {n} noun chunk(s) left out: {exc}")
                        continue
                    rankings.images.update(more.images)
                    for key, ranked in more.ranked.items():
                        rankings.ranked.setdefault(key, ranked)
        else:
            root = self.args.csv.parent.resolve() if self.args.csv else self.args.dresscode.absolute()
            weights, arch = self.retrieval_encoder()
            index_dir = (self.args.index_dir or self.out / "index").expanduser().resolve()
            rankings = index_rankings(test_set.gallery, wanted, root, index_dir, weights, arch,
                                      self.args.retrieval_mode, lambda m: _err(m))
        for pair in pairs:
            ranked = rankings.ranked.get((pair.category, pair.query))
            if not ranked:
                self.state.problems.append(Problem(pair.pair_id, pair.category,
                                                   f"retrieval has no garments for {pair.query!r}"))
                continue
            self.state.garments[pair.pair_id] = ranked[: self.args.k]
        return rankings

    def metric_chunks(self) -> tuple[int, ...]:
        """The query texts retrieval is scored on: single and triplet noun chunks (Dress Code, as the
        reference's files), the caption itself (a CSV)."""
        return (0,) if self.args.csv else (1, 3)

    def retrieval_encoder(self) -> tuple[Path, str]:
        from ..openclip_encoder import DEFAULT_ARCH, weights_metadata

        weights = self.args.retrieval_weights
        if weights is None:
            if self.base is None:
                raise _Setup("--retrieval-weights FILE is needed with --server (no base directory to "
                             "look in)")
            weights = Path(self.base) / "models" / "fashion_rag" / "retrieval" / "open_clip_pytorch_model.bin"
        weights = Path(weights).expanduser()
        if weights.is_dir() and (weights / "open_clip_config.json").is_file():
            return weights, ""  # an OpenCLIP model folder names its own architecture
        if not weights.is_file():
            raise _Setup(f"retrieval encoder weights {weights} not found: put open_clip_pytorch_model.bin "
                         "(Hugging Face laion/CLIP-ViT-L-14-laion2B-s32B-b82K) there or pass "
                         "--retrieval-weights (a weights file or an OpenCLIP model folder)")
        carried = weights_metadata(weights).get("open_clip")
        arch = self.args.retrieval_encoder or (carried.get("name") if isinstance(carried, dict) else None)
        return weights, arch or DEFAULT_ARCH

    def write_garments(self, rankings: Rankings, pairs: list[EvalPair]) -> None:
        """The retrieved garments fitted to 384x512 (what the retrieve node would hand on)."""
        from ..evaluation.pairs import Problem
        from ..images import ImageLoadError, load_garment

        done: set[str] = set()
        for pair in pairs:
            for garment_id in self.state.garments.get(pair.pair_id, []):
                if garment_id in done:
                    continue
                path = rankings.images.get(garment_id)
                try:
                    if path is None:
                        raise ImageLoadError(f"garment {garment_id} has no image")
                    _write_png(load_garment(path), self.garment_png(garment_id))
                    done.add(garment_id)
                except ImageLoadError as exc:
                    self.state.problems.append(Problem(pair.pair_id, pair.category, f"retrieved {exc}"))
                    self.state.garments.pop(pair.pair_id)
                    break

    def garment_png(self, garment_id: str) -> Path:
        return self.out / INPUTS / "garments" / f"{garment_id}.png"

    def generate(self, graph: EvalGraph, pairs: list[EvalPair]) -> int:
        """One batch row per pair; the batch's exit code (0 all ok, 1 some failed, 2 setup, 130 Ctrl-C)."""
        from . import batch

        workflow_path = self.out / "workflow_api.json"
        jobs_path = self.out / "jobs.csv"
        data = json.dumps(graph.workflow, indent=1)
        atomic_write(workflow_path, lambda tmp: Path(tmp).write_text(data, encoding="utf-8"))
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(graph.columns())
        for pair in pairs:
            if pair.pair_id not in self.state.garments:
                continue
            folder = f"{INPUTS}/{pair.pair_id}"
            writer.writerow([pair.pair_id, f"{folder}/person.png", f"{folder}/mask.png",
                             *[f"{INPUTS}/garments/{g}.png" for g in self.state.garments[pair.pair_id]],
                             self.keypoints[pair.pair_id], pair.category])
        atomic_write(jobs_path, lambda tmp: Path(tmp).write_text(buffer.getvalue(), encoding="utf-8"))
        generated = self.out / GENERATED
        options = {"--workflow": workflow_path, "--jobs": jobs_path, "--out": generated,
                   "--python": self.args.python, "--device": self.args.device,
                   "--comfyui-args": self.args.comfyui_args, "--timeout": self.args.timeout,
                   "--server": self.args.server, "--comfyui": self.comfyui, "--base": self.args.base,
                   "--engine": self.args.engine, "--ray-address": self.args.ray_address,
                   "--workers": self.args.workers, "--gpus-per-worker": self.args.gpus_per_worker,
                   "--start-timeout": self.args.start_timeout}
        # --flag=value: a value starting with '-' (ComfyUI's own flags) stays a value.
        argv = ["batch", *[f"{flag}={value}" for flag, value in options.items() if value not in (None, "")]]
        # Parsed by the batch's own parser, so its defaults (and any options it gains) hold.
        parser = argparse.ArgumentParser()
        batch.add_parser(parser.add_subparsers(dest="command"))
        code = batch.run(parser.parse_args(argv))
        for record in read_summary(generated / "summary.csv").values():
            if record.status == OK:
                self.state.results[record.id] = generated / record.id / RESULT_FILE
            elif any(p.pair_id == record.id for p in pairs):
                self.state.failed[record.id] = record.error or record.status
        return code

    def find_results(self, pairs: list[EvalPair]) -> None:
        """--score-only: each pair's image in DIR, named as the reference names its results."""
        from ..evaluation.pairs import reference_file_stem

        folder = self.args.score_only.expanduser()
        if not folder.is_dir():
            raise _Setup(f"--score-only {folder}: no such folder")
        for pair in pairs:
            if pair.pair_id not in self.state.garments:
                continue
            path = folder / pair.category / f"{reference_file_stem(pair.pair_id, pair.query)}.png"
            if path.is_file():
                self.state.results[pair.pair_id] = path
            else:
                self.state.failed[pair.pair_id] = f"no image {path}"

    def collect_reference_layout(self, pairs: list[EvalPair]) -> None:
        """The results also under OUT/images/<category>/, named as the reference names them."""
        from ..evaluation.pairs import reference_file_stem

        if self.args.score_only:
            return
        for pair in pairs:
            source = self.state.results.get(pair.pair_id)
            if source is None:
                continue
            name = f"{reference_file_stem(pair.pair_id, pair.query)}.png"
            target = self.out / IMAGES / pair.category / name
            data = source.read_bytes()
            if not (target.is_file() and target.read_bytes() == data):
                atomic_write(target, lambda tmp, d=data: Path(tmp).write_bytes(d))

    def score(self, test_set: TestSet, pairs: list[EvalPair], rankings: Rankings, weights: MetricWeights,
              graph: EvalGraph | None) -> None:
        import numpy as np
        from PIL import Image

        from ..evaluation.metrics import ScoredImage, retrieval_scores, score_images, write_report
        from ..evaluation.rankings import relevant_garments

        images = []
        for pair in pairs:
            result = self.state.results.get(pair.pair_id)
            if result is None:
                continue
            drawn = Image.open(self.out / INPUTS / pair.pair_id / "mask.png")
            mask = np.asarray(drawn, dtype=np.float32) / 255.0
            images.append(ScoredImage(
                pair_id=pair.pair_id, category=pair.category, generated=result,
                target=self.out / INPUTS / pair.pair_id / "person.png" if self.paired else None,
                mask=mask, caption=pair.query,
                garments=[self.garment_png(g) for g in self.state.garments[pair.pair_id]]))
        last = [0.0]

        def progress(stage: str, done: int, total: int) -> None:
            now = time.monotonic()
            if done == total or now - last[0] > 5:
                last[0] = now
                print(f"evaluate: scoring: {stage} {done}/{total}", file=sys.stderr, flush=True)

        rows = score_images(images, test_set.real, weights, self.paired, self.stats_cache(),
                            self.args.metrics_device or _default_device(), progress=progress)
        retrieval_rows = []
        for n in self.metric_chunks():
            relevant = relevant_garments(test_set.gallery, n)
            keys = {(p.category, q) for p in pairs if (q := test_set.gallery[p.garment_id].queries.get(n))}
            keys = {key for key in keys if key in rankings.ranked}
            if not keys:
                continue
            name = {0: "caption", 1: "single", 2: "double", 3: "triplet"}[n]
            label = {key: f"{key[0]}: {key[1]}" for key in keys}
            scored = retrieval_scores({label[key]: rankings.ranked[key] for key in keys},
                                      {label[key]: relevant.get(key, set()) for key in keys},
                                      {label[key]: key[0] for key in keys})
            retrieval_rows += [{"captions": name, **row} for row in scored]
        write_report(self.out, rows, retrieval_rows or None, self.settings(test_set, pairs, weights, graph),
                     docs=_pack_file(*METRICS_DOCS))

    def stats_cache(self) -> Path:
        return (self.args.stats_cache or _cache_root() / "eval-stats").expanduser()

    def settings(self, test_set: TestSet, pairs: list[EvalPair], weights: MetricWeights,
                 graph: EvalGraph | None) -> dict[str, str]:
        a = self.args
        source = f"Dress Code {a.dresscode}" if a.dresscode else f"own photos {a.csv}"
        retrieval = (f"reference-json {self.reference_json}" if self.reference_json is not None
                     else f"index of the test garments, mode {a.retrieval_mode}")
        settings = {
            "test set": f"{source}, {a.order}, {', '.join(self.categories)}",
            "pairs": f"{len(self.state.results)} scored of {len(pairs) + len(self.state.problems)}"
                     + (f" (--limit {a.limit})" if a.limit else "")
                     + (f", {len(self.state.problems)} unusable" if self.state.problems else "")
                     + (f", {len(self.state.failed)} failed" if self.state.failed else ""),
            "size": "x".join(map(str, a.size)),
            "mask": a.mask if a.dresscode else "given or from keypoints",
            "steps": str(a.steps), "guidance": str(a.guidance), "k": str(a.k), "seed": str(a.seed),
            "sampler": f"{a.sampler} / {a.scheduler}", "noun chunks": str(a.chunks) if a.dresscode else "-",
            "retrieval": retrieval, "pack": f"fashion-rag {__version__}{_git_commit()}",
            "ComfyUI": self.comfyui_version() if graph is not None else "(scored only)",
        }
        if test_set.left_out:
            settings["left out as the reference does"] = ", ".join(
                f"{n} {r}" for r, n in test_set.left_out.items())
        if self.reference_json is None:
            try:
                from ..openclip_encoder import GarmentEncoder

                # No model is built: the encoder names its weights file (a folder's own, too).
                enc = GarmentEncoder(*self.retrieval_encoder(), image_tower=False)
                settings["retrieval encoder"] = (f"{enc.name} {enc.weights_path.name} sha256 "
                                                 f"{cached_sha256(enc.weights_path)}")
            except _Setup:
                pass
        if graph is not None:
            for key, (folder, name) in model_files(graph.workflow).items():
                settings[key] = f"{name} sha256 {self.model_sha256(folder, name)}"
        settings.update(weights.sha256())
        return settings

    def model_sha256(self, folder: str, name: str) -> str:
        path = Path(self.base) / "models" / folder / name if self.base else None
        if path is None or not path.is_file():
            return "unknown (not under the base's models folder)"
        return cached_sha256(path)

    def comfyui_version(self) -> str:
        if self.args.server:
            from .comfy_server import ComfyClient

            try:
                return str(ComfyClient(self.args.server).get("/system_stats")["system"]["comfyui_version"])
            except (OSError, KeyError, TypeError, ValueError):
                return f"unknown (server {self.args.server})"
        folder = self.comfyui or _default_comfyui()
        if folder is None:
            return "unknown (no --comfyui, no COMFYUI_PATH)"
        return f"{read_comfyui_version(folder) or 'unknown'} ({folder})"

    def write_problems(self) -> None:
        lines = [f"unusable: {p}" for p in self.state.problems]
        lines += [f"failed: {pid}: {error}" for pid, error in sorted(self.state.failed.items())]
        text = "".join(f"{line}\n" for line in lines)
        atomic_write(self.out / "problems.txt", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def print_problems(self) -> None:
        for problem in self.state.problems:
            _err(f"unusable pair {problem}")
        for pair_id, error in sorted(self.state.failed.items()):
            _err(f"failed pair {pair_id}: {error}")


def _size(text: str) -> tuple[int, int]:
    found = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not found or any(int(v) < 8 or int(v) % 8 for v in found.groups()):
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT, both multiples of 8 (e.g. 384x512)")
    return int(found.group(1)), int(found.group(2))


def limited(pairs: list[EvalPair], limit: int | None) -> list[EvalPair]:
    """The first `limit` pairs, taken in turn from each category (a quick run sees every one)."""
    if limit is None:
        return list(pairs)
    queues: dict[str, list[EvalPair]] = {}
    for pair in pairs:
        queues.setdefault(pair.category, []).append(pair)
    picked: list[EvalPair] = []
    depth = 0
    while len(picked) < limit and any(depth < len(q) for q in queues.values()):
        picked += [q[depth] for q in queues.values() if depth < len(q)]
        depth += 1
    return picked[:limit]


def _load_workflow(path: Path) -> dict:
    from .batch_jobs import load_workflow

    return load_workflow(path)


def _default_comfyui() -> Path | None:
    from .batch_server import default_comfyui

    return default_comfyui()


def _pack_file(*parts: str) -> Path | None:
    from .batch_server import pack_file

    return pack_file(*parts)


def _example_workflow() -> Path:
    found = _pack_file(*EXAMPLE_WORKFLOW)
    if found is None:
        raise _Setup("no --workflow given, and this fashion_rag is a library install without the node "
                     "pack's example workflows: pass --workflow PATH (the pack's "
                     f"{'/'.join(EXAMPLE_WORKFLOW)}, or your own API-format try-on workflow)")
    return found


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _write_png(image: Image.Image, path: Path) -> None:
    """Write a PNG only when its bytes change: the batch resumes by file size and time."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    data = buffer.getvalue()
    if path.is_file() and path.read_bytes() == data:
        return
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _git_commit() -> str:
    from .batch_server import pack_root

    repo = pack_root()
    if not (repo / ".git").exists():
        return ""
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return f" (git {out.stdout.strip()})" if out.returncode == 0 and out.stdout.strip() else ""

