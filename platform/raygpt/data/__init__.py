"""Data: a corpus to token shards, and shards to training windows.

    corpus.py         input files, documents, the dedup hash and the train/val split
    shards.py         the Parquet shard format, its manifest, windows, llm.c / nanoGPT .bin
    import_tokens.py  existing token files (llm.c, nanoGPT) into shards
    prepare.py        corpus to shards on Ray Data
    stream.py         shards to training windows, streamed by Ray Data

Only prepare.py and stream.py import Ray.
"""
