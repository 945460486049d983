"""Bring existing token files into raygpt's shard format: llm.c .bin shards, nanoGPT .bin files.

Users who already tokenized FineWeb (llm.c, modded-nanogpt) or OpenWebText (nanoGPT) keep
their tokens: they are copied, memory-mapped, into Parquet shards with a manifest. The
streams carry their own end-of-text tokens; rows are fixed-size chunks of the stream.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from pathlib import Path

import numpy as np

from raygpt import storage
from raygpt.data.shards import (
    IMPORT_CHUNK_TOKENS,
    MANIFEST,
    SPLITS,
    Manifest,
    ShardWriter,
    read_llmc_bin,
    read_nanogpt_bin,
    token_dtype,
    write_manifest,
    write_tokenizer,
)
from raygpt.errors import RaygptError
from raygpt.tokenizer import get_tokenizer


def import_llmc(
    pattern: str,
    out: str,
    tokenizer: str = "gpt2",
    shard_tokens: int = 1 << 24,
    overwrite: bool = False,
) -> Manifest:
    """Shards matching `pattern`; files with 'val' in their name form the val split."""
    files = sorted(glob.glob(pattern)) or ([pattern] if Path(pattern).is_file() else [])
    if not files:
        raise RaygptError(f"no llm.c shards match {pattern}")
    by_split = {"train": [f for f in files if "val" not in Path(f).name]}
    by_split["val"] = [f for f in files if "val" in Path(f).name]
    return _import(by_split, read_llmc_bin, out, tokenizer, shard_tokens, overwrite, "llmc")


def import_nanogpt(
    folder: str,
    out: str,
    tokenizer: str = "gpt2",
    shard_tokens: int = 1 << 24,
    overwrite: bool = False,
) -> Manifest:
    """nanoGPT's data folder: train.bin and val.bin."""
    root = Path(folder)
    if not root.is_dir():
        raise RaygptError(f"nanoGPT data folder not found: {folder}")
    by_split = {split: [str(root / f"{split}.bin")] for split in SPLITS}
    for split, paths in by_split.items():
        if not Path(paths[0]).is_file():
            raise RaygptError(f"{folder} has no {split}.bin")
    return _import(by_split, read_nanogpt_bin, out, tokenizer, shard_tokens, overwrite, "nanogpt")


def _import(
    by_split: dict[str, list[str]],
    reader: Callable[[str], np.ndarray],
    out: str,
    tokenizer_name: str,
    shard_tokens: int,
    overwrite: bool,
    kind: str,
) -> Manifest:
    if not by_split["train"]:
        raise RaygptError(f"no train files among {by_split['val']}")
    tokenizer = get_tokenizer(tokenizer_name)
    dtype = token_dtype(tokenizer.vocab_size)
    streams = {split: [(path, reader(path)) for path in paths] for split, paths in by_split.items()}
    storage.prepare_output(out, overwrite)
    with storage.writing_dir(out, last=MANIFEST) as root:  # a staging folder when out is a URI
        writers = {split: ShardWriter(root, split, dtype, shard_tokens) for split in SPLITS}
        for split, files in streams.items():
            for path, tokens in files:
                for start in range(0, len(tokens), IMPORT_CHUNK_TOKENS):
                    chunk = np.asarray(tokens[start : start + IMPORT_CHUNK_TOKENS])
                    if chunk.size and int(chunk.max()) >= tokenizer.vocab_size:
                        raise RaygptError(
                            f"{path} has token id {int(chunk.max())}, outside the {tokenizer.name} "
                            f"vocabulary ({tokenizer.vocab_size}); pass the right --tokenizer"
                        )
                    # The stream's end-of-text tokens count its documents.
                    writers[split].add(chunk, int(np.count_nonzero(chunk == tokenizer.eot_token)))
            writers[split].flush()
        splits = {split: writer.stats for split, writer in writers.items()}
        manifest = Manifest(
            tokenizer=tokenizer.name,
            vocab_size=tokenizer.vocab_size,
            eot_token=tokenizer.eot_token,
            token_dtype=dtype.name,
            splits=splits,
            inputs=[path for paths in by_split.values() for path in paths],
            files_read=sum(len(paths) for paths in by_split.values()),
            extra={"imported_from": kind, "rows": f"chunks of {IMPORT_CHUNK_TOKENS} tokens"},
        )
        write_tokenizer(root, tokenizer)
        write_manifest(root, manifest)
    return manifest
