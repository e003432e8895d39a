"""Garment categories (Dress Code's three) and the prompt noun each one uses."""

from __future__ import annotations

CATEGORIES: tuple[str, ...] = ("upper_body", "lower_body", "dresses")

# The reference prompt: "a photo of a model wearing {noun} made of " + pseudo-tokens.
PROMPT_NOUN: dict[str, str] = {
    "dresses": "a dress",
    "upper_body": "an upper body garment",
    "lower_body": "a lower body garment",
}

# Free-text words seen in catalogs and folder names -> canonical category.
_SYNONYMS: dict[str, str] = {
    "upper": "upper_body", "upper_body": "upper_body", "upper-body": "upper_body", "top": "upper_body",
    "tops": "upper_body", "shirt": "upper_body", "shirts": "upper_body", "t-shirt": "upper_body",
    "blouse": "upper_body", "sweater": "upper_body", "jacket": "upper_body", "coat": "upper_body",
    "lower": "lower_body", "lower_body": "lower_body", "lower-body": "lower_body",
    "bottom": "lower_body", "bottoms": "lower_body", "pants": "lower_body", "trousers": "lower_body",
    "jeans": "lower_body", "skirt": "lower_body", "skirts": "lower_body", "shorts": "lower_body",
    "dress": "dresses", "dresses": "dresses", "gown": "dresses", "jumpsuit": "dresses",
}


def normalize_category(text: str | None) -> str | None:
    """Map a free-text category to one of CATEGORIES, or None when it names none of them."""
    if not text:
        return None
    key = text.strip().lower().replace(" ", "_")
    if key in _SYNONYMS:
        return _SYNONYMS[key]
    for word in key.replace("-", "_").split("_"):
        if word in _SYNONYMS:
            return _SYNONYMS[word]
    return None


def resolve_category(choice: str, first_garment: tuple[str, str] | None) -> str:
    """The category a node's `category` input names: one of CATEGORIES, or "auto" for the first
    retrieved garment's (`first_garment` = (id, category), None when no garment is connected)."""
    if choice != "auto":
        if choice not in CATEGORIES:
            raise ValueError(f"unknown category {choice!r}; use auto or one of {', '.join(CATEGORIES)}")
        return choice
    if first_garment is None:
        raise ValueError(
            "category 'auto' takes the category of the first retrieved garment, but no 'garments' input is "
            f"connected: choose one of {', '.join(CATEGORIES)}."
        )
    garment_id, category = first_garment
    found = normalize_category(category)
    if found is None:
        raise ValueError(
            f"category 'auto': the first garment ({garment_id}) has category {category!r}, which is "
            f"none of {', '.join(CATEGORIES)}; choose the category by hand."
        )
    return found
