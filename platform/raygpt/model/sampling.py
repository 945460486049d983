"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus).

A sampled token is drawn by inverting the row's cumulative distribution at one uniform
number from the row's own generator. That costs one random number per row, where
torch.multinomial draws one per vocabulary entry (SmolLM2: 49,152 a row, a fifth of a
32-row CPU decode step), and it batches: the engine samples all its rows in one pass, each
from its own seeded stream, and a row draws the same token alone or in a batch.
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
    """Row b of `logits` sampled with its own settings at `uniforms[b]`: one softmax and one
    inversion for every row (the engine's rows each have their own request's settings)."""
    return invert_cdf(row_probs(logits, settings), uniforms)


def row_probs(logits: torch.Tensor, settings: list[Setting]) -> torch.Tensor:
    """The distribution each row samples from, float32: row b's logits tempered and
    filtered by its own settings, then normalized."""
    temperature = torch.tensor([t for t, _, _ in settings], device=logits.device)
    tempered = logits.float() / temperature[:, None]
    for b, (_, top_k, top_p) in enumerate(settings):
        if top_k or (top_p is not None and top_p < 1):
            tempered[b] = filter_logits(tempered[b : b + 1], top_k, top_p)[0]
    return torch.softmax(tempered, dim=-1)


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Tempered logits with everything outside the top-k and the top-p nucleus at -inf."""
    if top_k is not None and top_k > 0 and top_k < logits.size(-1):
        kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        logits = _keep_nucleus(logits, top_p)
    return logits


def invert_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Row b's token: the first whose cumulative probability exceeds uniforms[b] (in [0, 1))
    times the row's total. Scaling by the total absorbs the cumulative sum's rounding; the
    target stays below the total, so a token of zero probability is never chosen."""
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    target = (uniforms[:, None].to(cdf.dtype) * total).minimum(total.nextafter(total.new_zeros(())))
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)


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
