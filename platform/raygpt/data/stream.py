"""Token shards to training windows, streamed by Ray Data.

The shards hold documents; a window is any block_size + 1 consecutive tokens of the split's
token stream (documents joined by their end-of-text tokens, as in nanoGPT's train.bin),
so x = window[:-1] and y = window[1:]. block_size is chosen at training time. Nothing
loads the corpus into memory: shards are read and cut batch by batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from raygpt.data.shards import cut_windows, read_manifest
from raygpt.errors import RaygptError

DOCS_PER_WINDOW_BATCH = (
    256  # documents joined before cutting: the tail lost per batch is < 1 window
)


def windows_of_batch(batch: pa.Table, block_size: int) -> dict[str, np.ndarray]:
    """map_batches function: a batch of documents -> a batch of windows (column `window`)."""
    stream = batch.column("tokens").combine_chunks().values.to_numpy()
    return {"window": cut_windows(stream, block_size)}


def window_dataset(root: str | Path, split: str, block_size: int, shuffle_seed: int | None = None):
    """A Ray Dataset of `window` rows (block_size + 1 tokens each) over one split's shards.

    With a seed, the shard blocks are read in a seeded random order; pass a per-epoch seed
    to iter_torch_batches(local_shuffle_seed=...) to shuffle windows within a buffer too.
    """
    import ray

    manifest = read_manifest(root)
    if split not in manifest.splits or not manifest.splits[split].shards:
        raise RaygptError(f"{root} has no '{split}' shards (splits: {list(manifest.splits)})")
    if block_size < 1:
        raise RaygptError(f"block_size must be >= 1, got {block_size}")
    files = manifest.shard_paths(root, split)
    # One block per shard: windows are cut the same way whatever the cluster's size.
    ds = ray.data.read_parquet(files, columns=["tokens"], override_num_blocks=len(files))
    if shuffle_seed is not None:
        ds = ds.randomize_block_order(seed=shuffle_seed)
    return ds.map_batches(
        windows_of_batch,
        fn_kwargs={"block_size": block_size},
        batch_format="pyarrow",
        batch_size=DOCS_PER_WINDOW_BATCH,
        num_cpus=0.25,  # light numpy work; leaves CPUs to the training workers
    )
