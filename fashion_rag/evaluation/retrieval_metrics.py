"""Retrieval recall and precision at k, per category, as the reference's retrieval files report them.

For a query q (a caption) with relevant garments G_q and the ranked garments it retrieved,
top_k(q) the first k of them:

    R@k = share of the queries with at least one relevant garment in top_k(q)
    P@k = mean over the queries of |G_q ∩ top_k(q)| / |G_q|

These are what the reference's dataset/dresscode-retrieval/*.json files hold as recall_k and
precision_k (its code for them is not published): there precision rises with k and stays below
recall, which the usual |G_q ∩ top_k| / k cannot do, so P@k is the share of the relevant
garments found. docs/metrics.md has the details.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..categories import CATEGORIES

KS: tuple[int, ...] = (1, 3, 5, 10, 20)
ALL = "all"


def _row(category: str, queries: list[str], ranked: dict[str, list[str]], relevant: dict[str, set[str]],
         ks: Sequence[int]) -> dict[str, object]:
    row: dict[str, object] = {"category": category, "queries": len(queries)}
    for k in ks:
        found = [len(relevant[q] & set(ranked[q][:k])) for q in queries]
        row[f"R@{k}"] = sum(f > 0 for f in found) / len(queries)
        row[f"P@{k}"] = sum(f / len(relevant[q]) for f, q in zip(found, queries, strict=True)) / len(queries)
    return row


def retrieval_scores(ranked: dict[str, list[str]], relevant: dict[str, set[str]],
                     categories: dict[str, str], ks: Sequence[int] = KS) -> list[dict[str, object]]:
    """One row per category present (Dress Code's order) and one for all queries together:
    {"category", "queries", "R@1", "P@1", ...}. Keys of `ranked` are query ids; `relevant` and
    `categories` must have every one of them."""
    if not ranked:
        raise ValueError("no retrieval results to score")
    if any(k < 1 for k in ks):
        raise ValueError(f"k must be at least 1: {list(ks)}")
    for q in ranked:
        if not relevant.get(q):
            raise ValueError(f"query {q!r} has no relevant garment: give each query the garments that "
                             "match it")
        if categories.get(q) not in CATEGORIES:
            raise ValueError(f"query {q!r} has category {categories.get(q)!r}; expected one of "
                             f"{', '.join(CATEGORIES)}")
    rows = []
    for cat in CATEGORIES:
        queries = [q for q in ranked if categories[q] == cat]
        if queries:
            rows.append(_row(cat, queries, ranked, relevant, ks))
    rows.append(_row(ALL, list(ranked), ranked, relevant, ks))
    return rows
