"""A small generated garment catalog and its index, for the demo and the tests.

Flat drawings of tops, trousers, shorts, skirts and dresses in several colours and patterns
(solid, stripes, dots, checks), each with a caption that says what it shows ("red striped
short-sleeve top"). With the random demo encoder the image ranking means nothing, but the
captions make caption and fusion retrieval behave sensibly, so a demo still returns garments
that match the words.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from fashion_rag.images import GARMENT_SIZE

DEMO_VERSION = "demo-catalog-v1"
PER_CATEGORY = 12
TINY_WEIGHTS_NAME = "fashion_rag_tiny_random.safetensors"

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 40), "blue": (40, 80, 200), "green": (40, 150, 70), "yellow": (235, 200, 40),
    "black": (30, 30, 30), "pink": (240, 130, 180), "orange": (240, 130, 30), "purple": (120, 50, 160),
    "grey": (130, 130, 135), "navy": (25, 35, 90),
}
PATTERNS: dict[str, str] = {"solid": "plain", "stripes": "striped", "dots": "polka-dot", "checks": "checked"}

# Silhouettes on the 384x512 canvas, as polygons (x, y).
SHAPES: dict[str, dict[str, list[tuple[int, int]]]] = {
    "upper_body": {
        "short-sleeve top": [(150, 70), (192, 95), (234, 70), (300, 100), (350, 180), (300, 205), (280, 175),
                             (280, 460), (104, 460), (104, 175), (84, 205), (34, 180), (84, 100)],
        "long-sleeve top": [(150, 70), (192, 95), (234, 70), (300, 100), (345, 330), (305, 340), (280, 190),
                            (280, 460), (104, 460), (104, 190), (79, 340), (39, 330), (84, 100)],
        "sleeveless top": [(140, 70), (165, 70), (192, 110), (219, 70), (244, 70), (262, 160), (280, 200),
                           (280, 460), (104, 460), (104, 200), (122, 160)],
    },
    "lower_body": {
        "trousers": [(112, 60), (272, 60), (292, 470), (212, 470), (192, 200), (172, 470), (92, 470)],
        "shorts": [(112, 120), (272, 120), (300, 330), (206, 340), (192, 230), (178, 340), (84, 330)],
        "skirt": [(132, 110), (252, 110), (320, 420), (64, 420)],
    },
    "dresses": {
        "mini dress": [(150, 40), (192, 70), (234, 40), (250, 150), (240, 190), (310, 380), (74, 380),
                       (144, 190), (134, 150)],
        "long dress": [(150, 30), (192, 60), (234, 30), (252, 150), (240, 190), (320, 480), (64, 480),
                       (144, 190), (132, 150)],
        "short-sleeve dress": [(150, 40), (192, 65), (234, 40), (290, 70), (320, 130), (280, 150), (262, 130),
                               (250, 200), (300, 470), (84, 470), (134, 200), (122, 130), (104, 150),
                               (64, 130), (94, 70)],
    },
}
ID_PREFIX = {"upper_body": "top", "lower_body": "bottom", "dresses": "dress"}


def _pattern(colour: tuple[int, int, int], pattern: str) -> Image.Image:
    w, h = GARMENT_SIZE
    img = Image.new("RGB", (w, h), colour)
    draw = ImageDraw.Draw(img)
    light = tuple(min(255, c + (255 - c) * 3 // 4) for c in colour)
    if pattern == "stripes":
        for y in range(0, h, 40):
            draw.rectangle((0, y, w, y + 16), fill=light)
    elif pattern == "dots":
        for row, y in enumerate(range(10, h, 36)):
            for x in range(10 + (row % 2) * 18, w, 36):
                draw.ellipse((x - 8, y - 8, x + 8, y + 8), fill=light)
    elif pattern == "checks":
        for y in range(0, h, 32):
            for x in range(0, w, 32):
                if (x // 32 + y // 32) % 2:
                    draw.rectangle((x, y, x + 31, y + 31), fill=light)
    return img


def draw_garment(shape: list[tuple[int, int]], colour: tuple[int, int, int], pattern: str) -> Image.Image:
    mask = Image.new("L", GARMENT_SIZE, 0)
    ImageDraw.Draw(mask).polygon(shape, fill=255)
    img = Image.composite(_pattern(colour, pattern), Image.new("RGB", GARMENT_SIZE, (255, 255, 255)), mask)
    ImageDraw.Draw(img).polygon(shape, outline=(60, 60, 60), width=3)
    return img


def demo_items(seed: int = 0) -> list[dict[str, str]]:
    """The catalog's rows (id, image, category, caption): distinct garments, seeded choice."""
    rng = random.Random(seed)
    rows = []
    for category, shapes in SHAPES.items():
        combos = [(s, c, p) for s in shapes for c in COLOURS for p in PATTERNS]
        rng.shuffle(combos)
        # Round-robin over shapes so every silhouette appears; the seeded shuffle picks the rest.
        by_shape = {s: [t for t in combos if t[0] == s] for s in shapes}
        rounds = PER_CATEGORY // len(shapes) + 1
        picked = [by_shape[s][i] for i in range(rounds) for s in shapes][:PER_CATEGORY]
        for i, (shape, colour, pattern) in enumerate(picked):
            item_id = f"{ID_PREFIX[category]}{i:02d}"
            words = [colour] + ([PATTERNS[pattern]] if pattern != "solid" else []) + [shape]
            rows.append({"id": item_id, "image": f"{category}/{item_id}.png", "category": category,
                         "caption": " ".join(words), "colour": colour, "pattern": pattern, "shape": shape})
    return rows


def write_demo_catalog(root: str | Path, seed: int = 0) -> Path:
    """Write the demo catalog (images + metadata.jsonl) under root; a no-op when already there."""
    root = Path(root)
    marker = root / ".demo_catalog"
    rows = demo_items(seed)
    stamp = f"{DEMO_VERSION} seed={seed}"
    if (marker.is_file() and marker.read_text() == stamp
            and all((root / r["image"]).is_file() for r in rows) and (root / "metadata.jsonl").is_file()):
        return root
    for row in rows:
        path = root / row["image"]
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_garment(SHAPES[row["category"]][row["shape"]], COLOURS[row["colour"]], row["pattern"]).save(path)
    lines = [json.dumps({k: row[k] for k in ("id", "image", "category", "caption")}) for row in rows]
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    marker.write_text(stamp)
    return root


def install_demo_index(models_dir: str | Path) -> Path:
    """Demo encoder weights, catalog and index under models_dir/fashion_rag/; returns the index dir.

    Idempotent and quick on reruns: existing weights are kept, the catalog is rewritten only if
    incomplete, and the index build is a no-op (the folder untouched) when nothing changed.
    """
    from .encoder import TINY_ARCH, tiny_encoder_metadata, write_tiny_encoder_weights
    from fashion_rag.openclip_encoder import GarmentEncoder, weights_metadata
    from fashion_rag.retrieval.build import build_index
    from fashion_rag.retrieval.catalog import scan_catalog

    base = Path(models_dir) / "fashion_rag"
    weights = base / "retrieval" / TINY_WEIGHTS_NAME
    # Rewritten when missing or written by an older demo (its metadata then differs).
    if weights_metadata(weights) != json.loads(next(iter(tiny_encoder_metadata().values()))):
        write_tiny_encoder_weights(weights, seed=0)
    catalog_dir = write_demo_catalog(base / "catalogs" / "demo", seed=0)
    index_dir = base / "indexes" / "demo"
    build_index(scan_catalog(catalog_dir), index_dir, GarmentEncoder(weights, TINY_ARCH), index_type="flat")
    return index_dir
