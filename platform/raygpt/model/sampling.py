"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus).

A sampled token is drawn by inverting the row's cumulative distribution at one uniform
number from the row's own generator. That costs one random number per row, where
torch.multinomial draws one per vocabulary entry (SmolLM2: 49,152 a row, a fifth of a
32-row CPU decode step), and it batches: the engine samples all its rows in one pass, each
from its own seeded stream, and a row draws the same token alone or in a batch.

The inversion runs on unnormalized weights (exp of the tempered logits less their maximum:
inverting scales by the total anyway) and in two levels, blocks then tokens, so that the
only passes over the whole vocabulary are ones that vectorize. Choosing 32 sampled rows of
SmolLM2's tokens inside the engine on 2 cores: 12.3 ms with a softmax and a cumulative sum
of every row, 3.9 ms so (BENCHMARKS.md).
"""

from __future__ import annotations

import math

import torch

from raygpt.errors import RequestError

# Below this temperature sampling is greedy (as vLLM does): dividing logits by a tinier one
# overflows to inf, and softmax of inf is NaN.
GREEDY_BELOW = 1e-5


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise RequestError (a ValueError) naming the first setting out of range."""
    if not (math.isfinite(temperature) and temperature >= 0):
        raise RequestError("temperature", f"must be a finite number >= 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise RequestError("top_p", f"must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 0:
        raise RequestError("top_k", f"must be >= 0, got {top_k}")


def is_greedy(temperature: float) -> bool:
    return temperature < GREEDY_BELOW


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of `logits` (batch, vocab). temperature 0 means greedy."""
    check_sampling(temperature, top_k, top_p)
    if is_greedy(temperature):
        return logits.argmax(dim=-1)
    uniforms = torch.rand(
        logits.shape[0], generator=generator, dtype=torch.float64, device=logits.device
    )
    return sample_rows(logits, [(temperature, top_k, top_p)] * logits.shape[0], uniforms)


Setting = tuple[float, int | None, float | None]  # temperature (not greedy), top_k, top_p


def sample_rows(
    logits: torch.Tensor, settings: list[Setting], uniforms: torch.Tensor
) -> torch.Tensor:
    """Row b of `logits` sampled with its own settings at `uniforms[b]`: one pass of
    weights and one inversion for every row (the engine's rows each have their own
    request's settings)."""
    tempered = _tempered(logits, settings)
    weights = tempered.sub_(tempered.amax(dim=-1, keepdim=True)).exp_()
    return invert_cdf(weights, uniforms)


def row_probs(logits: torch.Tensor, settings: list[Setting]) -> torch.Tensor:
    """The distribution each row samples from, float32: row b's logits tempered and
    filtered by its own settings, then normalized."""
    return torch.softmax(_tempered(logits, settings), dim=-1)


def _tempered(logits: torch.Tensor, settings: list[Setting]) -> torch.Tensor:
    """A new float32 tensor: row b's logits over its temperature, filtered by its top-k and
    top-p."""
    temperature = torch.tensor([t for t, _, _ in settings], device=logits.device)
    tempered = logits.float() / temperature[:, None]
    for b, (_, top_k, top_p) in enumerate(settings):
        if top_k or (top_p is not None and top_p < 1):
            tempered[b] = filter_logits(tempered[b : b + 1], top_k, top_p)[0]
    return tempered


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Tempered logits with everything outside the top-k and the top-p nucleus at -inf."""
    if top_k is not None and top_k > 0 and top_k < logits.size(-1):
        kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        logits = _keep_nucleus(logits, top_p)
    return logits


# Tokens a block of the two-level inversion: its sums and one block's cumulative sum are
# both short.
CDF_BLOCK = 1024


def invert_cdf(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Row b's token: the first whose cumulative weight exceeds uniforms[b] (in [0, 1)) times
    the row's total, for non-negative weights (rows, vocab). First the block that holds that
    point, from the blocks' sums, then the token inside it, from that block's cumulative
    sum. Each level keeps its target below its own total, which absorbs rounding: a token
    of weight 0 is never chosen."""
    rows, vocab = weights.shape
    blocks = vocab // CDF_BLOCK
    full = blocks * CDF_BLOCK
    sums = [weights[:, :full].reshape(rows, blocks, CDF_BLOCK).sum(dim=-1)]
    if full < vocab:
        sums.append(weights[:, full:].sum(dim=-1, keepdim=True))
    block_cdf = torch.cat(sums, dim=1).cumsum(dim=-1)
    point = uniforms[:, None].to(block_cdf.dtype) * block_cdf[:, -1:]
    block, rest = _locate(block_cdf, point)
    columns = block * CDF_BLOCK + torch.arange(CDF_BLOCK, device=weights.device)
    inside = weights.gather(1, columns.clamp(max=vocab - 1)).masked_fill(columns >= vocab, 0)
    offset, _ = _locate(inside.cumsum(dim=-1), rest)
    return (block * CDF_BLOCK + offset).squeeze(-1)


def _locate(cdf: torch.Tensor, point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the first index whose cumulative value exceeds `point` (rows, 1), held just
    below the row's total, and how far past the indices before it the point lies."""
    total = cdf[:, -1:]
    point = point.minimum(total.nextafter(total.new_zeros(())))
    index = torch.searchsorted(cdf, point, right=True)
    before = cdf.gather(1, (index - 1).clamp(min=0)).masked_fill(index == 0, 0)
    return index, point - before


def _keep_nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask all but the smallest set of most likely tokens whose probability reaches top_p."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    # Drop a token when the tokens before it already reach top_p. The most likely token always
    # stays, even for a top_p too small for float32 (5e-324 rounds to 0).
    drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
