"""A shop's labelled query set, ranked by its index and scored (`index evaluate`): recall@k and
precision@k per category (retrieval_metrics, the paper's definitions), so encoders can be
compared on the shop's own catalog.

The query file is a CSV with a header row (or JSON Lines: fashion_rag.tables): `text` and/or
`image` (a garment photo or crop, a path relative to the file's folder and inside it), `relevant`
(the ids of the garments that answer the query, comma-separated) and optionally `category`. Each
query is ranked within its category, as the paper's evaluation ranks, and counted under it: the
`category` column, else the category of its first relevant garment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..categories import CATEGORIES, normalize_category
from ..tables import read_rows
from .retrieval_metrics import KS, retrieval_scores

if TYPE_CHECKING:
    from ..retrieval.index import GarmentIndex


@dataclass(frozen=True)
class LabelledQuery:
    row: int  # the CSV line, for messages
    text: str | None
    image: Path | None
    relevant: tuple[str, ...]
    category: str | None


def read_queries(path: str | Path) -> list[LabelledQuery]:
    """The queries of a labelled CSV; ValueError naming the file, row and what to fix."""
    from ..paths import inside
    from ..retrieval.search import parse_ids

    path = Path(path)
    rows = read_rows(path, "query file")
    if not rows:  # (an empty file, or a header alone: the columns are read from the rows)
        raise ValueError(f"{path} holds no queries: add a row per query under the header "
                         "(columns text and/or image, relevant, category)")
    columns = set(rows[0][1])
    if "relevant" not in columns or not columns & {"text", "image"}:
        raise ValueError(f"{path} needs a header row with 'relevant' and 'text' and/or 'image' columns "
                         f"(found: {', '.join(sorted(c for c in columns if c))})")
    queries = []
    for line, row in rows:
        text, image, cat = ((row.get(k) or "").strip() for k in ("text", "image", "category"))
        where = f"{path} line {line}"
        if not text and not image:
            raise ValueError(f"{where}: no text and no image: give the query")
        category = normalize_category(cat) if cat else None
        if cat and category is None:
            raise ValueError(f"{where}: category {cat!r} is not one of {', '.join(CATEGORIES)}")
        relevant = parse_ids(row.get("relevant") or "", f"{where}: relevant")
        if not relevant:
            raise ValueError(f"{where}: no relevant garment ids: list the garments that answer the query")
        picture = inside(image, path.resolve().parent, f"query image of {where}") if image else None
        queries.append(LabelledQuery(line, text or None, picture, tuple(relevant), category))
    return queries


def evaluate_index(index: GarmentIndex, queries: Sequence[LabelledQuery], ks: Sequence[int] = KS,
                   mode: str | None = None, image_weight: float | None = None) -> list[dict[str, object]]:
    """retrieval_scores' rows (one per category, then "all") for `queries` ranked by `index`."""
    from ..images import load_garment
    from ..retrieval.search import DEFAULT_IMAGE_WEIGHT, search

    ranked: dict[str, list[str]] = {}
    relevant: dict[str, set[str]] = {}
    categories: dict[str, str] = {}
    for q in queries:
        unknown = [g for g in q.relevant if g not in index]
        if unknown:
            raise ValueError(f"line {q.row} of the query file: relevant id(s) {', '.join(unknown[:5])} are "
                             f"not in index {index.name!r}: fix the ids or rebuild the index")
        category = q.category or normalize_category(index.categories[index.position(q.relevant[0])])
        picture = load_garment(q.image) if q.image is not None else None
        hits = search(index, q.text, max(ks), mode=mode, category=category, image=picture,
                      image_weight=DEFAULT_IMAGE_WEIGHT if image_weight is None else image_weight)
        key = f"line {q.row}"
        ranked[key], relevant[key], categories[key] = [h.id for h in hits], set(q.relevant), str(category)
    return retrieval_scores(ranked, relevant, categories, ks)
