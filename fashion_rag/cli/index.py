"""`python -m fashion_rag index build|info|query|evaluate`: the garment catalog index from a shell.

Progress and problems go to stderr; results (info, query hits) go to stdout, so they can be
piped. `--json` prints machine-readable output. Exit codes: 0 done; 1 `build --strict` skipped
catalog entries (nothing written); 2 an error, printed as one line (bad input, a damaged or
missing index, an unsafe --out, another build of the same index running, a failed write such
as a full disk (naming the file; the previous index is unchanged), images a Ray build could
not encode, ...).

`build --engine ray` hashes and encodes on a Ray cluster (optional: pip install
"fashion-rag[ray]"); the index is the one the default local engine builds.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..categories import CATEGORIES

if TYPE_CHECKING:
    from ..retrieval.build.engines import Engine
    from ..retrieval.garments import Garment
    from ..retrieval.index import GarmentIndex

_MAX_LISTED = 50  # failed items listed one per line; the rest counted


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 2000 else text[:2000] + "…"


def _friendly(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Expected failures (bad input, missing or damaged files, wrong encoder) as one line, not a traceback."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        from ..retrieval.build import SkippedItemsError
        from ..retrieval.build.engines import BuildFailedError

        try:
            return func(args)
        except SkippedItemsError as exc:
            for skip in exc.report.skipped:
                _err(f"[index] skipped: {skip}")
            _err(f"[index] error: {_one_line(exc)}")
            return 1
        except BuildFailedError as exc:
            for item_id in exc.failed[:_MAX_LISTED]:
                _err(f"[index] not encoded: {item_id!r}")
            if len(exc.failed) > _MAX_LISTED:
                _err(f"[index] … and {len(exc.failed) - _MAX_LISTED} more not encoded")
            _err(f"[index] error: {_one_line(exc)}")
            return 2
        except (OSError, ValueError, KeyError) as exc:  # every library error is one of these
            _err(f"[index] error: {_one_line(exc)}")
            return 2
        except KeyboardInterrupt:
            _err("[index] interrupted (an interrupted build leaves the previous index as it was)")
            return 130

    return run


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..openclip_encoder import DEFAULT_ARCH, REAL_WEIGHTS_HINT
    from ..retrieval.ann import INDEX_TYPES, IVF_THRESHOLD
    from ..retrieval.search import DEFAULT_IMAGE_WEIGHT, MAX_K, MODES

    p = sub.add_parser("index", help="build, inspect and query garment catalog indexes",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    isub = p.add_subparsers(dest="index_command", required=True)

    b = isub.add_parser("build", help="build or update an index (only new/changed images are encoded)")
    b.add_argument("--catalog", required=True, type=Path, help="folder of garment images")
    b.add_argument("--out", required=True, type=Path,
                   help="index folder to write: new, empty, or an index built before (outside the catalog); "
                        "a new version replaces the current one atomically")
    b.add_argument("--metadata", type=Path, help="CSV or JSON-lines file: id, image, category, caption "
                   "(default: metadata.jsonl/.csv in the catalog folder, else folder names)")
    b.add_argument("--encoder", default=None,
                   help=f"OpenCLIP architecture of a --weights file (default {DEFAULT_ARCH})")
    b.add_argument("--weights", type=Path, required=True,
                   help=f"encoder weights file ({REAL_WEIGHTS_HINT}), or an OpenCLIP model folder as "
                        "published (open_clip_config.json, open_clip_model.safetensors, tokenizer files; "
                        "e.g. Marqo/marqo-fashionSigLIP), which names its own architecture")
    b.add_argument("--pretrained-tag", default=None,
                   help="open_clip pretrained tag whose preprocessing to use (default: laion2b_s32b_b82k "
                        "for ViT-L-14); weights still come only from --weights")
    b.add_argument("--index-type", choices=INDEX_TYPES, default="auto",
                   help=f"auto: exact below {IVF_THRESHOLD} garments, IVF above")
    b.add_argument("--ivf-threshold", type=int, default=IVF_THRESHOLD, help=argparse.SUPPRESS)
    b.add_argument("--batch-size", type=int, default=16,
                   help="images per encoder batch (16 suits a CPU; ~256 a GPU)")
    b.add_argument("--device", default=None,
                   help="torch device the local engine encodes on (cpu, cuda, cuda:1, ...; default: cuda "
                        "when torch sees a GPU, else cpu); Ray places its encoders itself")
    b.add_argument("--strict", action="store_true",
                   help="fail (exit code 1, nothing written) if any catalog entry is skipped")
    b.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process; ray: hash and encode on a Ray cluster with Ray Data (needs "
                        "pip install \"fashion-rag[ray]\"; the catalog, weights and --out on storage every "
                        "node sees). Same index either way")
    b.add_argument("--ray-address", default=None,
                   help="the Ray cluster (e.g. auto, ray://head:10001; default: $RAY_ADDRESS, else a "
                        "local Ray started for the build)")
    b.add_argument("--ray-actors", type=int, default=None,
                   help="encoder actors at most (default: one per GPU of the cluster, else one per 2 CPUs)")
    b.add_argument("--ray-shards", default=None,
                   help="where workers write embedding shards: a folder every node sees or a URI "
                        "(s3://…, gs://…); default: a temp folder inside --out")
    b.set_defaults(func=_friendly(_build))

    i = isub.add_parser("info", help="summarise an index")
    i.add_argument("index", type=Path)
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_friendly(_info))

    q = isub.add_parser("query", help="retrieve garments for a text and/or a picture")
    q.add_argument("index", type=Path)
    q.add_argument("text", nargs="?", default=None, help="the garment described (optional with --image)")
    q.add_argument("--image", type=Path, default=None,
                   help="a garment photo or crop: ranks by image-image similarity (with a text: the "
                        "weighted sum)")
    q.add_argument("--image-weight", type=float, default=DEFAULT_IMAGE_WEIGHT,
                   help=f"weight w of the picture with a text: score = (1-w) text cosine + w image cosine "
                        f"(0-1, default {DEFAULT_IMAGE_WEIGHT})")
    q.add_argument("-k", type=int, default=5, help=f"garments to return (1-{MAX_K}, pins included)")
    q.add_argument("--category", choices=["any", *CATEGORIES], default="any")
    q.add_argument("--mode", choices=MODES, default=None, help="default: fusion when captions exist")
    q.add_argument("--weights", type=Path,
                   help="the encoder weights file or model folder the index was built with (needed unless "
                        "--mode caption)")
    _add_query_device(q)
    q.add_argument("--pin", default="", help="comma-separated ids returned first")
    q.add_argument("--exclude", default="", help="comma-separated ids never returned")
    q.add_argument("--json", action="store_true")
    q.add_argument("--save", type=Path, default=None, metavar="DIR",
                   help="also write the returned garments' images, as the pipeline sees them (NN.png, by "
                        "rank), and garments.json (ids, scores) into DIR")
    q.set_defaults(func=_friendly(_query))

    e = isub.add_parser("evaluate", help="recall@k and precision@k of an index for a labelled query set",
                        description="Rank every query of a labelled CSV (columns: text and/or image, "
                                    "relevant, optionally category) within its category and print R@k and "
                                    "P@k per category: build the same catalog with two encoders and compare.")
    e.add_argument("index", type=Path)
    e.add_argument("queries", type=Path, help="CSV: text and/or image (a path relative to the CSV), "
                                              "relevant (comma-separated garment ids), optional category")
    e.add_argument("--weights", type=Path, help="the encoder weights file or model folder the index was "
                                                "built with (needed unless --mode caption)")
    e.add_argument("--mode", choices=MODES, default=None, help="default: fusion when captions exist")
    _add_query_device(e)
    e.add_argument("--image-weight", type=float, default=DEFAULT_IMAGE_WEIGHT,
                   help="weight of the picture in rows with a text and an image (default "
                        f"{DEFAULT_IMAGE_WEIGHT})")
    e.add_argument("--ks", default="1,3,5,10,20", help=f"the k values, comma-separated (at most {MAX_K})")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_friendly(_evaluate))


def _add_query_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="torch device the queries are encoded on (cpu, cuda, cuda:1, ...; default: cuda "
                             "when torch sees a GPU, else cpu)")


def _build(args: argparse.Namespace) -> int:
    from ..openclip_encoder import GarmentEncoder
    from ..retrieval.build import build_index
    from ..retrieval.catalog import scan_catalog
    from ..retrieval.ondisk import prepare_out

    engine = _engine(args)
    t0 = time.perf_counter()
    catalog = scan_catalog(args.catalog, args.metadata)
    prepare_out(args.out, catalog.root)  # refuse an unsafe --out before loading any model
    _err(f"[index] catalog {catalog.root}: {len(catalog)} garments"
         + (f", {len(catalog.skipped)} entries skipped" if catalog.skipped else ""))
    if args.weights.is_dir() and (args.encoder or args.pretrained_tag):
        raise ValueError(f"--weights {args.weights} is a model folder, which carries its own architecture "
                         "and preprocessing: drop --encoder and --pretrained-tag")
    encoder = GarmentEncoder(args.weights, args.encoder, args.pretrained_tag)
    if getattr(engine, "device", None):  # (the local engine's; Ray places its encoders itself)
        _err(f"[index] encoding on {engine.device}")
    if encoder.is_random_demo:
        _err("[index] note: these are RANDOM demo weights, not a pretrained encoder")
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - last[0] > 1.0:
            last[0] = now
            _err(f"[index] encoded {done}/{total}")

    report = build_index(catalog, args.out, encoder, index_type=args.index_type,
                         ivf_threshold=args.ivf_threshold, batch_size=args.batch_size, strict=args.strict,
                         log_fn=lambda m: _err(f"[index] {m}"), progress=progress, engine=engine)
    for skip in report.skipped:
        _err(f"[index] skipped: {skip}")
    if report.cleaned:
        _err(f"[index] removed stale build folders: {', '.join(report.cleaned)}")
    _err(f"[index] {'wrote' if report.written else 'unchanged'} {report.index_dir} ({report.version}): "
         f"{report.summary()}; {report.index_type} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _engine(args: argparse.Namespace) -> Engine:
    """The build's engine, checked before any work: local on --device, or a RayEngine; Ray is
    imported only for --engine ray."""
    ray_options = {"--ray-address": args.ray_address, "--ray-actors": args.ray_actors,
                   "--ray-shards": args.ray_shards}
    if args.engine != "ray":
        given = [name for name, value in ray_options.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only applies to --engine ray; add --engine ray or drop it")
        from ..retrieval.build.engines import LocalEngine

        return LocalEngine(_local_device(args.device))
    if args.device is not None:
        raise ValueError("--device applies to the local engine: on Ray the encoders run on GPU actors where "
                         "the cluster has GPUs (--ray-actors sets how many); drop --device")
    if args.ray_actors is not None and args.ray_actors < 1:
        raise ValueError("--ray-actors must be at least 1")
    from ..retrieval.build.engines import RayEngine, import_ray

    import_ray()  # a missing Ray is reported before any work starts
    return RayEngine(args.ray_address, actors=args.ray_actors, shards=args.ray_shards)


def _local_device(name: str | None) -> str:
    """The torch device to encode on (a local build's, or the queries'), checked before any work:
    --device, else cuda if torch sees a GPU."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name[:40]!r} is not a device to encode on: use cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA GPUs here; use "
                         "--device cpu, or leave --device out (a GPU when there is one)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: torch sees no Apple GPU here; use --device cpu")
    return str(device)


def _info(args: argparse.Namespace) -> int:
    from ..retrieval.index import load_index

    info = load_index(args.index).info()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"index     {info['path']} (version {info['version']})")
    print(f"garments  {info['items']}  " + ", ".join(f"{k}: {v}" for k, v in info["per_category"].items()))
    print(f"captions  {info['captions']}")
    print(f"encoder   {info['encoder']}" + ("  [RANDOM demo weights]" if info["random_demo_encoder"] else ""))
    print(f"vectors   {json.dumps(info['vector_index'])}")
    print(f"images    {info['stored_images_bytes']:,} bytes stored")
    print(f"built     {info['built']}")
    return 0


def _query(args: argparse.Namespace) -> int:
    from ..images import load_garment
    from ..retrieval.index import load_index
    from ..retrieval.search import search

    if args.text is None and args.image is None:
        raise ValueError("give a text, an --image, or both")
    image = load_garment(args.image) if args.image is not None else None  # before any model loads
    index = load_index(args.index, _query_encoder(args))
    hits = search(index, args.text, args.k, mode=args.mode, category=args.category,
                  pin_ids=args.pin, exclude_ids=args.exclude, image=image, image_weight=args.image_weight)
    if args.save is not None:
        _save(args.save, index, hits)
    if args.json:
        print(json.dumps([{"rank": r, "id": g.id, "score": g.score, "category": g.category,
                           "caption": g.caption, "path": g.path} for r, g in enumerate(hits, 1)], indent=1))
        return 0
    for rank, g in enumerate(hits, 1):
        caption = " ".join(g.caption.split())  # one line per hit, whatever separators a caption holds
        print(f"{rank:>3}  {g.score:8.4f}  {g.id:<20} {g.category:<11} {caption}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.labelled_queries import evaluate_index, read_queries
    from ..retrieval.index import load_index
    from ..retrieval.search import MAX_K

    try:
        ks = sorted({int(k) for k in args.ks.split(",") if k.strip()})
    except ValueError:
        ks = []
    if not ks or not all(1 <= k <= MAX_K for k in ks):
        raise ValueError(f"--ks must list whole numbers from 1 to {MAX_K}, e.g. 1,5,10 (got {args.ks!r})")
    queries = read_queries(args.queries)  # every row checked before any model loads
    index = load_index(args.index, _query_encoder(args))
    rows = evaluate_index(index, queries, ks, mode=args.mode, image_weight=args.image_weight)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'category':<11} {'queries':>7}" + "".join(f" {f'R@{k}':>6} {f'P@{k}':>6}" for k in ks))
    for row in rows:
        print(f"{row['category']:<11} {row['queries']:>7}" + "".join(
            f" {row[f'R@{k}']:>6.3f} {row[f'P@{k}']:>6.3f}" for k in ks))
    return 0


def _query_encoder(args: argparse.Namespace) -> Any:
    """The index's encoder from --weights (None for --mode caption); ValueError naming the file to pass."""
    from ..retrieval.index import encoder_for
    from ..retrieval.ondisk import read_manifest

    if args.mode == "caption":
        if args.device is not None:
            raise ValueError("--device is where queries are encoded, and --mode caption encodes none: "
                             "drop --device")
        return None
    device = _local_device(args.device)  # a wrong one refused before any model loads
    manifest = read_manifest(args.index)
    if args.weights is None:
        # Never the manifest's weights_path: whoever placed the index chose it, and whether the
        # query got further would tell them if that path exists outside the index (issue 23).
        built_with = manifest.encoder.weights_file
        raise ValueError(f"this query is encoded with the index's encoder: pass --weights with the file "
                         f"the index was built with ({built_with}), or use --mode caption")
    # The image tower loads on the first picture only: a text query never holds it.
    encoder = encoder_for(manifest.encoder, args.weights, image_tower=False)
    # Each tower goes to the device as it is used (already there, .to() returns at once).
    encoder.before_use = lambda kind: encoder.tower(kind).to(device)
    return encoder


def _save(folder: Path, index: GarmentIndex, hits: list[Garment]) -> None:
    """The hits' stored images (the index's own PNG bytes, decoded first so a damaged one fails
    here) and garments.json, each file written atomically; the JSON goes last, naming them."""
    from ..files import atomic_write

    listing = []
    for rank, g in enumerate(hits, 1):
        pos = index.position(g.id)
        index.garment_image(pos)  # refuses what is not a 384x512 garment image
        data = index.stored_png(pos)
        name = f"{rank:02d}.png"  # ids are free text: never part of a file name
        atomic_write(folder / name, lambda tmp, data=data: Path(tmp).write_bytes(data))
        listing.append({"rank": rank, "id": g.id, "score": g.score, "category": g.category, "image": name})
    text = json.dumps({"index": str(index.index_dir), "garments": listing}, indent=1, ensure_ascii=False)
    atomic_write(folder / "garments.json", lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    _err(f"[index] saved {len(listing)} garments to {folder}")
