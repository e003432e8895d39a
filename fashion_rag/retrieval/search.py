"""Text or picture -> garments: the retrieval step of Fashion-RAG, over a loaded GarmentIndex.

Modes "image" (cosine), "caption" (BM25) and "fusion" (reciprocal-rank fusion of both, the
default when the catalog has captions): docs/method.md, "Retrieval". Pinned ids come first, in
the order given, whatever the filters; excluded ids never appear. The result holds k garments
(more if more ids were pinned), never more than MAX_K.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
from PIL import Image

from ..images import to_image_tensor
from ..paths import listing, shorten
from .catalog import canonical_or_text
from .garments import Garment, Garments
from .index import GarmentIndex

MODES: tuple[str, ...] = ("fusion", "image", "caption")
RRF_K = 60  # the constant of Cormack et al.'s reciprocal-rank fusion; 60 is the usual choice
FUSION_DEPTH = 100  # how deep each ranking is read before fusing
DEFAULT_IMAGE_WEIGHT = 0.5  # text and picture count alike until a shop measures otherwise
# What a request may ask: a shared workflow is untrusted input (pins cost a full-size image each).
MAX_K = 20  # garments per request, pins included (the retrieve node's maximum)
MAX_TEXT_CHARS = 2_000  # CLIP reads 77 tokens; BM25 needs no more than a paragraph either
MAX_ID_CHARS = 256  # one garment id
MAX_IDS = 1_000  # ids in one pin or exclude list (excluding a whole page of garments is fine)
MAX_ID_LIST_CHARS = 100_000  # the raw pin_ids / exclude_ids string


class UnknownIdError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def parse_ids(ids: str | Sequence[str] | None, what: str = "ids") -> list[str]:
    """'a, b,c' (or newline separated, or a list) -> ['a', 'b', 'c'], blanks and repeats dropped;
    ValueError (naming `what`) beyond MAX_IDS ids, MAX_ID_CHARS per id or MAX_ID_LIST_CHARS in all."""
    if ids is None:
        return []
    if not isinstance(ids, (str, list, tuple)):
        raise ValueError(f"{what} must be text: comma-separated garment ids.")
    if isinstance(ids, str):
        if len(ids) > MAX_ID_LIST_CHARS:
            raise ValueError(f"{what} is {len(ids):,} characters long, more than the {MAX_ID_LIST_CHARS:,} "
                             "allowed: list fewer ids.")
        ids = ids.replace("\n", ",").split(",")
    out = [part for part in dict.fromkeys(str(p).strip() for p in ids) if part]
    long = next((part for part in out if len(part) > MAX_ID_CHARS), None)
    if long is not None:
        raise ValueError(f"{what} holds an id of {len(long):,} characters ({shorten(long)}); garment ids "
                         f"are at most {MAX_ID_CHARS} characters.")
    if len(out) > MAX_IDS:
        raise ValueError(f"{what} lists more than {MAX_IDS} ids: list fewer.")
    return out


def request_problem(text: object, k: object, pin_ids: object = "", exclude_ids: object = "") -> str | None:
    """What is wrong with a retrieval request (None: nothing), checked before any work is done; an
    input of None is "not known yet" (a linked input at validation time) and not checked."""
    if text is not None and (not isinstance(text, str) or not text.strip()):
        return "The text is empty: describe the garment to retrieve, e.g. 'red striped short-sleeve top'."
    if isinstance(text, str) and len(text) > MAX_TEXT_CHARS:
        return (f"The text is {len(text):,} characters long; at most {MAX_TEXT_CHARS:,} are read (the text "
                "encoder sees 77 tokens): shorten it.")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K):
        return f"k must be a whole number from 1 to {MAX_K} (got {shorten(k)})."
    try:
        pins = parse_ids(pin_ids, "pin_ids")  # type: ignore[arg-type]
        parse_ids(exclude_ids, "exclude_ids")  # type: ignore[arg-type]
    except ValueError as exc:
        return str(exc)
    if len(pins) > MAX_K:
        return (f"pin_ids lists {len(pins)} garments, but one request returns at most {MAX_K} garments, pins "
                "included: pin fewer.")
    return None


def resolve_mode(index: GarmentIndex, mode: str | None, text: bool = True, picture: bool = False) -> str:
    if mode in (None, "", "auto"):
        mode = "fusion"
    if mode not in MODES:
        raise ValueError(f"Unknown retrieval mode {mode!r}; use one of {', '.join(MODES)}.")
    if mode == "caption" and not text:
        raise ValueError("Mode 'caption' ranks the captions by the text, and there is no text: give one, "
                         "or use mode 'image' for the picture alone.")
    if mode == "caption" and picture:
        raise ValueError("Mode 'caption' ranks the captions only, so the picture would be ignored: use mode "
                         "'image' or 'fusion' with a picture.")
    if mode == "caption" and not index.has_captions:
        raise ValueError(f"Index {index.name!r} has no captions, so mode 'caption' cannot rank anything; use "
                         "mode 'image', or rebuild the index from a catalog with captions (metadata file or "
                         ".txt files).")
    # A picture alone can only be ranked by the embeddings; fusing with an all-zero caption
    # ranking would only add noise.
    return "image" if not text or not index.has_captions else mode


def search(index: GarmentIndex, text: str | None, k: int = 3, *, mode: str | None = None,
           category: str | None = None, pin_ids: str | Sequence[str] = (),
           exclude_ids: str | Sequence[str] = (), image: Image.Image | None = None,
           image_weight: float = DEFAULT_IMAGE_WEIGHT) -> list[Garment]:
    """Rank the garments of `index` for `text` and/or a query `image` (text "" or None: the picture
    alone), without loading their images."""
    has_text = image is None or bool(text and text.strip())
    problem = request_problem(text if has_text else None, k, pin_ids, exclude_ids)
    if problem is None and not (isinstance(image_weight, (int, float)) and 0.0 <= image_weight <= 1.0):
        problem = f"image_weight must be a number from 0 to 1 (got {shorten(image_weight)})."
    if problem:
        raise ValueError(problem)
    mode = resolve_mode(index, mode, has_text, image is not None)
    pins = parse_ids(pin_ids, "pin_ids")
    unknown = [p for p in pins if p not in index]
    if unknown:
        raise UnknownIdError(f"Pinned id(s) {listing(unknown)} are not in index {index.name!r} "
                             f"({len(index)} garments); remove them from pin_ids or rebuild the index.")
    pin_pos = [index.position(p) for p in pins]
    excluded = [index.position(e) for e in parse_ids(exclude_ids, "exclude_ids") if e in index]

    categories = None if category in (None, "", "any") else {canonical_or_text(category)}
    allowed = np.ones(len(index), dtype=bool) if categories is None else index.category_mask(categories)
    skip = excluded + pin_pos
    allowed[skip] = False
    n_fill = max(0, min(k - len(pins), int(allowed.sum())))

    score: dict[int, float]
    if mode == "caption":
        bm25 = index.caption_scores(str(text))
        fill = _score_ranking(bm25, n_fill, allowed)
        score = {p: float(bm25[p]) for p in pin_pos + fill}
    elif mode == "image":
        query = index.embed_query(text if has_text else None, image, image_weight)
        # Exact for flat indexes; for IVF, exact among the probed candidates (ann.VectorStore).
        fill = index.search(query, n_fill, categories, skip)[0].tolist() if n_fill > 0 else []
        score = dict(zip(pin_pos + fill, index.cosines(query, pin_pos + fill).tolist(), strict=True))
    else:
        query = index.embed_query(text if has_text else None, image, image_weight)
        # Deep enough that the image ranking alone holds n_fill allowed garments besides the pins.
        depth = max(FUSION_DEPTH, 4 * k + len(pin_pos))
        score, image_rank = _fused_scores(index, str(text), query, allowed, categories, skip, pin_pos, depth)
        # Ties in fused score go to the better image rank, then catalog order: deterministic.
        fill = sorted((p for p in score if allowed[p]),
                      key=lambda p: (-score[p], image_rank.get(p, len(index)), p))[:n_fill]

    out = [Garment(id=index.ids[p], score=score.get(p, 0.0), category=index.categories[p],
                   path=index.rel_paths[p], caption=index.captions[p]) for p in pin_pos + fill]
    if not out:
        why = "all candidates are excluded"
        if categories and not index.category_mask(categories).any():
            why = f"it has no garments of category {category!r} (it has {index.per_category()})"
        raise ValueError(f"No garment of index {index.name!r} can be returned: {why}. Choose another "
                         "category or remove ids from exclude_ids.")
    return out


def retrieve(index: GarmentIndex, text: str | None, k: int = 3, **options: Any) -> Garments:
    """search() (`options`: its keyword arguments) plus the garments' stored 384x512 images."""
    hits = search(index, text, k, **options)
    images = [index.image(hit.id) for hit in hits]
    return Garments(items=tuple(hits), images=to_image_tensor(images), query=text or "")


def _score_ranking(scores: np.ndarray, count: int, allowed: np.ndarray) -> list[int]:
    """The `count` best allowed positions by score, ties in catalog order."""
    cand = np.flatnonzero(allowed)
    return cand[np.argsort(-scores[cand], kind="stable")[:count]].tolist()


def _fused_scores(index: GarmentIndex, text: str, query: np.ndarray, allowed: np.ndarray,
                  categories: Collection[str] | None, skip: Sequence[int], pinned: list[int],
                  depth: int) -> tuple[dict[int, float], dict[int, int]]:
    """The reciprocal-rank fusion of the image and caption rankings (pins ranked among the rest)
    and the image rank, for every garment in either ranking."""
    positions, scores = index.search(query, depth, categories, skip)
    # Pins may lie outside the filter: place them in the image ranking by their exact cosine.
    positions = np.concatenate([positions, np.asarray(pinned, dtype=np.int64)])
    scores = np.concatenate([scores, index.cosines(query, pinned)])
    image = positions[np.argsort(-scores, kind="stable")[:depth]].tolist()
    pool = allowed.copy()
    pool[pinned] = True
    bm25 = index.caption_scores(text)
    # Only captions that share a word with the query take part: an all-zero tail is not a ranking.
    caption = _score_ranking(bm25, depth, pool & (bm25 > 0))
    fused: dict[int, float] = {}
    for ranking in (image, caption):
        for rank, pos in enumerate(ranking, 1):
            fused[pos] = fused.get(pos, 0.0) + 1.0 / (RRF_K + rank)
    return fused, {pos: rank for rank, pos in enumerate(image, 1)}
