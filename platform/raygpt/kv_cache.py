"""A preallocated key/value cache: decode writes one position at a time, never reallocates."""

from __future__ import annotations

import torch

from raygpt.config import ModelConfig


class KVCache:
    """Keys and values of every layer, each `(batch, n_head, max_len, head_dim)`.

    Allocated once for the longest sequence it will hold; attention writes new positions
    in place and reads the filled prefix, so a decode step costs no copies of the past.
    """

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_len: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.max_len = min(max_len or config.block_size, config.block_size)
        shape = (batch_size, config.n_head, self.max_len, config.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.values = [
            torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)
        ]

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[index], self.values[index]
