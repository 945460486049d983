"""A preallocated key/value cache: decode writes one position at a time, never reallocates."""

from __future__ import annotations

import torch

from raygpt.config import ModelConfig


class KVCache:
    """Keys and values of every layer, each `(batch, n_kv_head, max_len, head_dim)`: with
    grouped-query attention the cache is n_head / n_kv_head times smaller.

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
        spare: int = 0,
    ) -> None:
        """`spare` positions past `max_len` take the padded tail of a row verifying fewer
        speculated tokens than its neighbours (never read)."""
        self.max_len = min(max_len or config.block_size, config.block_size)
        shape = (batch_size, config.kv_heads, self.max_len + spare, config.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.values = [
            torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)
        ]

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[index], self.values[index]

    def rows(self, start: int, stop: int) -> KVCache:
        """A cache over rows start..stop-1 that shares this one's memory (prefill of one slot)."""
        view = KVCache.__new__(KVCache)
        view.max_len = self.max_len
        view.keys = [k[start:stop] for k in self.keys]
        view.values = [v[start:stop] for v in self.values]
        return view

    def copy_row(self, source: int, target: int, length: int) -> None:
        """Copy the first `length` positions of row `source` into row `target`, every layer."""
        for cache in (*self.keys, *self.values):
            cache[target, :, :length] = cache[source, :, :length]
