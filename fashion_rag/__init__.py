"""Fashion-RAG as a plain library: catalog indexing and retrieval, garment inversion helpers,
pose heatmaps and UNet key layouts. It never imports ComfyUI; `nodes/` adapts it."""

__version__ = "0.1.0"
