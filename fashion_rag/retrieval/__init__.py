"""The retrieval stage of Fashion-RAG: a garment catalog, its index on disk, text -> garments.

Modules by concept: catalog (which images), encoder (OpenCLIP), index_store (the index on
disk), lexical (BM25), search (text -> ranked garments), garments (what later stages get).
"""
