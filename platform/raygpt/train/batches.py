"""Each rank's micro-batches, cut from one shared, deterministic window stream.

Every rank iterates the same Ray Data stream (same seed, same order) and groups it into
optimizer steps of world_size x grad_accum batches; a rank keeps the batches of a step whose
index is its rank modulo world_size. So:

- every rank runs the same number of steps per epoch (an incomplete last step is dropped by
  all), and DDP never waits on a rank that ran out of data;
- the global batch of a step is the same set of windows whatever the world size: 2 workers
  x 1 micro-batch see what 1 worker x 2 micro-batches sees;
- a resumed run skips the batches already trained on and continues the same order.

Reading the whole stream on each rank costs little: a training step consumes far more
compute than the few MB of tokens it reads.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def to_xy(windows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, block+1) token windows -> inputs x and targets y (x shifted by one)."""
    tokens = torch.from_numpy(windows.astype(np.int64))
    if device.type == "cuda":
        tokens = tokens.pin_memory().to(device, non_blocking=True)
    else:
        tokens = tokens.to(device)
    return tokens[:, :-1], tokens[:, 1:]


def epoch_windows(
    iterator, batch_size: int, seed: int, shuffle_buffer: int
) -> Iterator[np.ndarray]:
    """The epoch's global batches, in an order fixed by `seed` (identical on every rank)."""
    batches = iterator.iter_batches(
        batch_size=batch_size,
        batch_format="numpy",
        drop_last=True,
        local_shuffle_buffer_size=shuffle_buffer or None,
        local_shuffle_seed=seed if shuffle_buffer else None,
    )
    for batch in batches:
        yield batch["window"]


def rank_steps(
    global_batches: Iterator[np.ndarray],
    rank: int,
    world_size: int,
    grad_accum: int,
    skip_batches: int = 0,
) -> Iterator[list[np.ndarray]]:
    """Group the global stream into steps; yield this rank's grad_accum batches of each."""
    per_step = world_size * grad_accum
    group: list[np.ndarray] = []
    for index, batch in enumerate(global_batches):
        if index < skip_batches:
            continue
        group.append(batch)
        if len(group) == per_step:
            yield group[rank::world_size]
            group = []


def eval_batches(
    windows: np.ndarray, batch_size: int, rank: int, world_size: int
) -> list[np.ndarray]:
    """The val windows cut into batches, strided across ranks.

    Every rank gets the same number (FSDP's forward is a collective): the batches rounded down
    to a multiple of world_size.
    """
    batches = [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
    usable = len(batches) // world_size * world_size
    if usable == 0:
        raise ValueError(
            f"the val split yields {len(batches)} batches of {batch_size}: fewer than the "
            f"{world_size} workers need (one each); lower train.batch_size"
        )
    return batches[rank:usable:world_size]
