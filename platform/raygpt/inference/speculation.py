"""Speculative decoding: how it is configured, and the rule that keeps it exact.

Each step a row proposes up to k tokens (copied from its own text by prompt lookup, or
drawn from a small draft model), the target model scores the row's last token and every
proposal in one pass, and the row keeps the longest prefix the target agrees with, plus one
token of the target's own: every step makes at least the one token plain decoding makes.

Greedy rows keep proposals while they equal the target's argmax, so the text is exactly
plain greedy decoding's. Sampled rows use the rejection rule of Leviathan et al. 2023 and
Chen et al. 2023: proposal x, drawn from the proposer's q, is kept with probability
min(1, p(x) / q(x)); on the first refusal the row draws from max(0, p - q), renormalized,
and stops; if every proposal is kept it draws one more from p. Each token is then
distributed as p, the target's (tempered, filtered) distribution, whatever q is. A
proposer that copies tokens has q = one-hot: x is kept with probability p(x), and a refusal
draws from p without x.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from raygpt.model.sampling import invert_cdf

Method = Literal["none", "ngram", "draft"]


@dataclass(frozen=True)
class SpeculationConfig:
    """`method`: none, ngram (prompt lookup) or draft (a small model: `draft` is its
    checkpoint, or `self:N` for the target's own first N layers and head). `k`: tokens a row
    proposes per step. `ngram_min`..`ngram_max`: the suffix lengths prompt lookup matches."""

    method: Method = "none"
    k: int = 4
    ngram_min: int = 2
    ngram_max: int = 4
    draft: str | None = None

    def __post_init__(self) -> None:
        if self.method not in ("none", "ngram", "draft"):
            raise ValueError(f"speculation method must be none, ngram or draft: {self.method!r}")
        if not 1 <= self.k <= 16:
            raise ValueError(f"speculation k must be in [1, 16], got {self.k}")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError(
                f"n-gram sizes must satisfy 1 <= ngram_min <= ngram_max, "
                f"got {self.ngram_min}..{self.ngram_max}"
            )
        if self.method == "draft" and not self.draft:
            raise ValueError("speculation method draft needs a draft checkpoint (or self:N)")

    @property
    def enabled(self) -> bool:
        return self.method != "none"


def accept_greedy(proposals: list[int], target: list[int]) -> list[int]:
    """The tokens a greedy row emits: `target` holds the argmax after the row's last token
    and after each proposal (len(proposals) + 1 of them)."""
    kept = 0
    while kept < len(proposals) and proposals[kept] == target[kept]:
        kept += 1
    return target[: kept + 1]


def accept_sampled(
    proposals: list[int],
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor | None,
    generator: torch.Generator | None,
) -> list[int]:
    """The tokens a sampled row emits. `target_probs` (m + 1, vocab): p after the row's last
    token and after each of its m proposals; `draft_probs` (m, vocab): the q each proposal
    was drawn from, None for copied tokens (q one-hot). Uniforms come from the row's own
    generator, one per kept proposal and one for the final draw."""
    p = target_probs.double()
    emitted = []
    for i, token in enumerate(proposals):
        q = None if draft_probs is None else draft_probs[i].double()
        ratio = p[i, token] if q is None else p[i, token] / q[token]
        if _uniform(generator, p) < ratio:
            emitted.append(token)
            continue
        if q is None:
            residual = p[i].clone()
            residual[token] = 0
        else:
            residual = (p[i] - q).clamp(min=0)
        emitted.append(_draw(residual, generator))
        return emitted
    emitted.append(_draw(p[len(proposals)], generator))
    return emitted


def _uniform(generator: torch.Generator | None, like: torch.Tensor) -> float:
    return float(torch.rand(1, generator=generator, dtype=torch.float64, device=like.device))


def _draw(weights: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token from non-negative weights (normalized by invert_cdf)."""
    uniform = torch.rand(1, generator=generator, dtype=torch.float64, device=weights.device)
    return int(invert_cdf(weights[None], uniform)[0])
