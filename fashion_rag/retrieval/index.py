"""A loaded garment index: vector search, image(id), caption scores, optionally its encoder.

load_index() reads the current version through ondisk.read_version, which alone opens the
index's files (checked, verified, inside the version folder); garment images come from the
index's own shard, so nothing outside the index folder is ever opened.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..images import GARMENT_SIZE, decode_image, fit_garment
from ..paths import shorten
from .ann import VectorStore, load_vector_store
from .ondisk import (
    EncoderRecord,
    Manifest,
    StoredVersion,
    check_encoder,
    damaged,
    describe_encoder,
    read_version,
)

if TYPE_CHECKING:
    from ..openclip_encoder import GarmentEncoder


class GarmentIndex:
    """A loaded index: garment metadata, embeddings, vector index, stored images, optionally its encoder."""

    def __init__(self, index_dir: Path, manifest: Manifest, embeddings: np.ndarray,
                 vectors: VectorStore, encoder: GarmentEncoder | None = None, version: str = "",
                 shard: np.ndarray | None = None) -> None:
        self.index_dir = index_dir
        self.version = version
        self.manifest = manifest
        self.embeddings = embeddings
        self.vectors = vectors  # public for inspection (info, benchmarks); queries go through search()
        self.encoder = encoder
        items = manifest.items
        self.ids, self.rel_paths, self.categories = items.ids, items.paths, items.categories
        self.captions = items.captions
        self._positions = {item_id: i for i, item_id in enumerate(self.ids)}
        self._shard = shard  # uint8, mapped: the stored garments (None: an index without files)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def name(self) -> str:
        return self.index_dir.name

    @property
    def has_captions(self) -> bool:
        return any(c.strip() for c in self.captions)

    def position(self, item_id: str) -> int:
        return self._positions[item_id]

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._positions

    def stored_png(self, pos: int) -> bytes:
        """The stored garment's PNG bytes, as the build wrote them into the index."""
        if self._shard is None:
            raise ValueError(f"Index {self.name!r} holds no garment images (an in-memory index).")
        offset, size = self.manifest.items.image_offsets[pos], self.manifest.items.image_sizes[pos]
        return bytes(self._shard[offset : offset + size])  # bounds checked against the shard at load

    def garment_image(self, pos: int) -> Image.Image:
        """The garment's image as the pipeline uses it: 384x512 RGB, read from the index."""
        name = f"stored image of garment {shorten(self.ids[pos])}"
        try:
            img = decode_image(self.stored_png(pos), name)
        except ValueError as exc:  # ImageLoadError: the shard passed its checksum, so a foreign build
            raise damaged(self.index_dir, exc, self.manifest) from exc
        if img.size != GARMENT_SIZE:
            raise damaged(self.index_dir, f"the {name} is {img.width}x{img.height}, not "
                                          f"{GARMENT_SIZE[0]}x{GARMENT_SIZE[1]}", self.manifest)
        return img

    def image(self, item_id: str) -> Image.Image:
        """The stored garment `item_id` (KeyError if the index has no such garment)."""
        return self.garment_image(self._positions[item_id])

    def search(self, query: np.ndarray, k: int, categories: Collection[str] | None = None,
               exclude: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """The k garments nearest a query embedding, of `categories` (None: any) but no `exclude`d
        position: (positions, exact cosines), best first; for IVF, the best of the probed lists."""
        return self.vectors.search(query, k, categories, exclude)

    def category_mask(self, categories: Collection[str]) -> np.ndarray:
        """[N] bool: which garments are of one of `categories`."""
        return self.vectors.category_mask(categories)

    def caption_scores(self, text: str) -> np.ndarray:
        """[N] float32 BM25 scores of every caption for `text` (the index is built on first use)."""
        return self._caption_index.scores(text)

    def embed_query(self, text: str | None, image: Image.Image | None, image_weight: float) -> np.ndarray:
        """(1 - w) * text + w * picture embedding (either alone at full weight): its inner product is
        the weighted sum of the two cosines. The picture is fitted first, as the build fits garments."""
        if self.encoder is None:
            raise ValueError(f"Index {self.name!r} was loaded without its text encoder; an embedding query "
                             "needs one (load_index(path, encoder)), or use mode 'caption'.")
        weight = float(image_weight) if text is not None and image is not None else float(image is not None)
        query = np.zeros(self.manifest.encoder.dim, dtype=np.float32)
        if text is not None and weight < 1:
            query += (1.0 - weight) * self.encoder.encode_texts([text])[0]
        if image is not None and weight > 0:
            query += weight * self.encoder.encode_images([fit_garment(image)])[0]
        return query

    def cosines(self, query: np.ndarray, positions: Sequence[int]) -> np.ndarray:
        """Exact cosines of a query embedding with the garments at `positions`."""
        return np.asarray(self.embeddings[list(positions)], dtype=np.float32) @ query

    def per_category(self) -> dict[str, int]:
        return dict(Counter(c or "uncategorised" for c in self.categories))

    @functools.cached_property
    def _caption_index(self) -> CaptionIndex:
        return CaptionIndex(self.captions)

    def info(self) -> dict[str, Any]:
        """A summary for people: what `index info` prints and the loader node shows."""
        return {
            "name": self.name,
            "path": str(self.index_dir),
            "version": self.version,
            "items": len(self),
            "per_category": self.per_category(),
            "encoder": describe_encoder(self.manifest.encoder),
            "random_demo_encoder": self.manifest.encoder.random_demo,
            "built": self.manifest.built,
            "stored_images_bytes": int(self._shard.nbytes) if self._shard is not None else 0,
            "vector_index": {"type": self.vectors.kind, "factory": self.vectors.factory,
                             "parts": len(self.vectors.parts)},
            "captions": sum(1 for c in self.captions if c.strip()),
        }


def load_index(index_dir: str | os.PathLike[str], encoder: GarmentEncoder | None = None) -> GarmentIndex:
    """Load an index; with an encoder, first check that it is the one the index was built with."""
    def check(manifest: Manifest) -> None:
        if encoder is not None:
            check_encoder(manifest, encoder, Path(index_dir).expanduser().resolve())

    def assemble(stored: StoredVersion) -> GarmentIndex:
        return GarmentIndex(stored.ver.index_dir, stored.manifest, stored.embeddings,
                            load_vector_store(stored), encoder, stored.ver.version, stored.garments)

    return read_version(index_dir, check, assemble)


# BM25 over the captions (bm25s), the lexical half of fusion retrieval: built when first needed,
# not stored (well under a second for tens of thousands of captions, and it cannot go stale).

_TOKEN = r"[a-z0-9]+"
# Words that say nothing about which garment is meant (kept small: "top", "short" matter).
_STOPWORDS = ("a an and the of in on with for to by from at or is are be this that it its as "
              "made wearing model photo picture image").split()


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """bm25s.tokenize with this module's words and stopwords, stemmed by Snowball's English stemmer
    (PyStemmer, as bm25s recommends) so 'stripes'/'striped' and 'dresses'/'dress' meet."""
    import bm25s
    import Stemmer

    return bm25s.tokenize(list(texts), lower=True, token_pattern=_TOKEN, stopwords=_STOPWORDS,
                          stemmer=Stemmer.Stemmer("english").stemWords, return_ids=False, show_progress=False)


class CaptionIndex:
    """BM25 scores of every caption for a query; captions without words simply never match."""

    def __init__(self, captions: Sequence[str]) -> None:
        import logging

        import bm25s

        # bm25s sets its own logger to DEBUG on import, which floods ComfyUI's console.
        logging.getLogger("bm25s").setLevel(logging.WARNING)
        self.size = len(captions)
        docs = tokenize(captions)
        self._bm25 = bm25s.BM25() if any(docs) else None
        if self._bm25 is not None:
            # bm25s needs one token per document; "" is its own empty token, matched by no query.
            self._bm25.index([d or [""] for d in docs], show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """[N] float32 BM25 scores (0 for captions sharing no word with the query)."""
        # get_scores refuses words it has never seen, and a query without words.
        tokens = [] if self._bm25 is None else [t for t in tokenize([query])[0] if t in self._bm25.vocab_dict]
        if not tokens:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self._bm25.get_scores(tokens), dtype=np.float32)


def encoder_for(record: EncoderRecord, weights: str | Path, image_tower: bool = True) -> Any:
    """The encoder of an index's manifest record, from the weights given: a file, a model folder,
    or, for an index built from a folder, that folder's weights file (what a file list shows)."""
    path = Path(weights).expanduser()
    if record.config_sha256 and path.is_file():
        path = path.parent
    from ..openclip_encoder import GarmentEncoder

    return GarmentEncoder(path, record.name, image_tower=image_tower)
