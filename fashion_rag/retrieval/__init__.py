"""The retrieval stage of Fashion-RAG: text -> garments of a catalog index.

catalog     which images, under which ids, categories and captions (and which are skipped)
encoder     the OpenCLIP model giving text and image embeddings
build       building an index: incremental, reported, published as a new version; its steps:
            build_plan (hash, decide what to encode), engines (encode here) or ray_engine +
            ray_workers (encode on a Ray cluster), build_write (write the version, streamed)
storage     an index folder on disk: versions behind one pointer file, replaced without a gap
manifest    what an index records, and the checks it passes at load
index       a loaded index (load_index)
vectors     FAISS indexes and nprobe tuning; vector_store: one per category group;
            vector_rows: embeddings read a block at a time
lexical     BM25 over captions; search: text -> ranked garments; garments: what later stages get
paths       the one path rule; limits: bounds on what a request may ask
"""
