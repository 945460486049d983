"""A draft model: a small GPT that proposes the next k tokens of many rows at once.

It keeps its own KV cache, row for row beside the engine's (row i of both is the same
request), and catches each row up on the tokens it has not seen (a new prompt in one packed
pass, then the one or two tokens the last step emitted) before it decodes k tokens for every
proposing row together. Proposals are drawn as the row itself samples (argmax for greedy
rows, its temperature, top-k and top-p otherwise), and for sampled rows the distribution
each was drawn from goes with it: the acceptance rule needs q (inference/speculation.py).

The draft can be any checkpoint with the target's tokenizer, or the target's own first
layers and output head (`layers_of`): self-speculation, no second model to ship.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from raygpt.model import GPT
from raygpt.model.gpt import PackedPrompts
from raygpt.model.kv_cache import KVCache
from raygpt.model.sampling import Setting, invert_cdf, row_probs


@dataclass
class DraftRow:
    """What the draft needs of one engine row this step."""

    context: list[int]  # prompt and completion so far
    cached: int  # positions of the context in the draft's cache
    limit: int  # tokens to propose (0: the row sits this step out)
    setting: Setting | None  # None: greedy
    generator: torch.Generator | None


def layers_of(model: GPT, n_layer: int) -> GPT:
    """The target's first `n_layer` blocks with its embedding, final norm and head, sharing
    their weights (nothing is copied)."""
    if not 1 <= n_layer < model.config.n_layer:
        raise ValueError(
            f"a self-draft takes 1 to {model.config.n_layer - 1} of the target's "
            f"{model.config.n_layer} layers, not {n_layer}"
        )
    draft = copy.copy(model)  # a shallow copy: the same submodules
    draft._modules = dict(model._modules)
    draft.transformer = nn.ModuleDict(dict(model.transformer.items()))
    draft.transformer.h = nn.ModuleList(list(model.transformer.h)[:n_layer])
    draft.config = copy.copy(model.config)
    draft.config.n_layer = n_layer
    return draft


class DraftModel:
    def __init__(
        self, model: GPT, max_slots: int, block_size: int, k: int, compiled: bool = False
    ) -> None:
        self.model = model.eval()
        self.vocab_size = model.config.vocab_size
        self.device, dtype = model.param_device_dtype
        # k + 1 spare positions: the padded tails of rows proposing fewer than the longest.
        self.cache = KVCache(model.config, max_slots, block_size, dtype, self.device, k + 1)
        self.compiled = compiled

    @torch.no_grad()
    def propose(self, rows: list[DraftRow]) -> list[tuple[list[int], torch.Tensor | None]]:
        """Every row's proposals (rows are the engine's first len(rows) rows), with the
        distributions sampled rows drew them from. Updates each row's `cached`."""
        self._catch_up(rows)
        proposing = [r.limit > 0 for r in rows]
        # First pass: each proposing row feeds what it has not fed yet (one or two tokens).
        feeds = [r.context[r.cached :] if r.limit else [0] for r in rows]
        starts = [r.cached for r in rows]
        tokens: list[list[int]] = [[] for _ in rows]
        probs: list[list[torch.Tensor]] = [[] for _ in rows]
        for _ in range(max(r.limit for r in rows)):
            logits = self._forward(feeds, starts, rows, proposing)
            chosen = self._sample(logits, rows, proposing, tokens, probs)
            for b, row in enumerate(rows):
                if proposing[b]:
                    row.cached = starts[b] + len(feeds[b])
                    starts[b] = row.cached
                    feeds[b] = [chosen[b]]
                    if len(tokens[b]) >= row.limit:
                        proposing[b] = False
                        feeds[b] = [0]
            if not any(proposing):
                break
        return [
            (t, torch.stack(p) if p and r.setting is not None else None)
            for t, p, r in zip(tokens, probs, rows, strict=True)
        ]

    def _catch_up(self, rows: list[DraftRow]) -> None:
        """Rows more than two tokens behind (a new prompt) are prefilled in one packed pass,
        up to their last token, which the first decode pass feeds."""
        behind = [
            (b, r) for b, r in enumerate(rows) if r.limit > 0 and len(r.context) - r.cached > 2
        ]
        if not behind:
            return
        pieces = [r.context[r.cached : -1] for _, r in behind]
        lengths, starts = [len(p) for p in pieces], [r.cached for _, r in behind]
        packed = PackedPrompts(lengths, [b for b, _ in behind], self.device, starts)
        idx = torch.tensor([[t for p in pieces for t in p]], device=self.device)
        self.model(idx, cache=self.cache, start_pos=packed)
        for _, row in behind:
            row.cached = len(row.context) - 1

    def _forward(
        self,
        feeds: list[list[int]],
        starts: list[int],
        rows: list[DraftRow],
        proposing: list[bool],
    ) -> torch.Tensor:
        """One decode pass over all rows, each its feed at its own position: the logits after
        each row's last fed token, (rows, vocab)."""
        width = max(len(f) for f in feeds)
        padded = [f + [0] * (width - len(f)) for f in feeds]
        ends = [s + len(f) for s, f, on in zip(starts, feeds, proposing, strict=True) if on]
        logits, _ = self.model(
            torch.tensor(padded, device=self.device),
            cache=self.cache.rows(0, len(rows)),
            start_pos=torch.tensor(starts, device=self.device),
            attend_to=max(ends),
            compiled=self.compiled,
        )
        last = torch.tensor([len(f) - 1 for f in feeds], device=self.device)
        return logits[torch.arange(len(rows), device=self.device), last, : self.vocab_size]

    def _sample(
        self,
        logits: torch.Tensor,
        rows: list[DraftRow],
        proposing: list[bool],
        tokens: list[list[int]],
        probs: list[list[torch.Tensor]],
    ) -> list[int]:
        """Every proposing row's next token, as the row itself samples; sampled rows (one
        softmax for all of them) keep the distribution they drew from."""
        chosen = logits.argmax(dim=-1).tolist()
        sampled = [b for b, row in enumerate(rows) if proposing[b] and row.setting is not None]
        if sampled:
            q = row_probs(logits[sampled], [rows[b].setting for b in sampled])
            uniforms = torch.cat(
                [
                    torch.rand(
                        1, generator=rows[b].generator, dtype=torch.float64, device=self.device
                    )
                    for b in sampled
                ]
            )
            drawn = invert_cdf(q, uniforms).tolist()
            for i, (b, token) in enumerate(zip(sampled, drawn, strict=True)):
                chosen[b] = token
                probs[b].append(q[i])
        for b in range(len(rows)):
            if proposing[b]:
                tokens[b].append(chosen[b])
        return chosen
