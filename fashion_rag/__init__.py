"""Fashion-RAG as a plain library, one sub-package per stage of the method:

- retrieval/  text -> the catalog's best-matching garments (OpenCLIP + FAISS + BM25)
- inversion/  garment image -> 16 pseudo-word embeddings -> the reference prompt
- inpaint/    the 27-channel UNet's inputs (pose heatmaps, mask), its layouts and the DDIM sampler
- cli/        `python -m fashion_rag` (index build/query, UNet conversion)

It never imports ComfyUI; `nodes/` adapts it to ComfyUI's types.
"""

__version__ = "0.1.0"
