"""The retrieval stage of Fashion-RAG: text -> garments of a catalog index (embeddings from
fashion_rag.openclip_encoder; paths checked by fashion_rag.paths).

catalog   which images, under which ids, categories and captions (read by builds only)
ondisk    the index on disk, and the only module that knows its files: typed checks of the
          manifest, versions behind one pointer, the build lock, embeddings (.npy), FAISS part
          files, the stored garment images; read_version() / write_version()
ann       the FAISS indexes (one per category group), nprobe tuning, exact top-k and recall
index     GarmentIndex: a loaded index answering search, image(id), caption scores (BM25)
search    text -> ranked garments (image, caption or fused)
garments  what retrieval hands the later stages (the GARMENTS socket)
build     building an index: plan (hash, decide what to encode), engines (encode here or on a
          Ray cluster, one protocol), then the version written through ondisk

Build and search both depend on ondisk and ann, never on each other.
"""
