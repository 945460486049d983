"""Model sizes in a scaling study: one knob, depth, and a rule that derives the rest.

    n_embd    = aspect_ratio x n_layer, rounded up to whole heads (and whole KV groups)
    n_head    = n_embd / head_dim
    n_kv_head = n_head / kv_group                  (1: every head its own keys and values)
    mlp_hidden = mlp_ratio x n_embd                (None: the block's own width, 4 x n_embd)
    learning_rate x (lr_width / n_embd)^lr_exponent   (lr_width None: one rate for all)

(nanochat's rule: depth sets the width through a fixed aspect ratio, heads of a fixed size.
The learning rate falls with width as muP's does for Adam (exponent 1): one rate for every
size would favour the sizes it happens to suit, and the IsoFLOP curves would measure that.)
Everything else, the block type included (GPT-2's, or the modern one: RoPE, RMSNorm, SwiGLU),
comes from the base experiment's model section.

N is raygpt's non-embedding parameter count, `GPT.num_params()`, the same N the training
loop's MFU uses: every weight multiplied once per token (the blocks and the output head; a
tied token embedding counts once, as the head), lookup tables left out (learned positions,
an untied token embedding); in a mixture of experts, only the experts a token is routed to
(`model.moe.active_params`). FLOPs per token are the training loop's too
(`train.step.flops_per_token`):

    F = 6 N + 12 x n_layer x n_embd x block_size

6N for the matmuls of the forward and backward passes, and 12·L·d·T for attention's scores and
weighted values over a full context (PaLM, appendix B; nanoGPT's estimate_mfu). A run of D
tokens costs C = F x D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from raygpt.config import ModelConfig, Problem
from raygpt.train.step import flops_per_token

FLOPS_FORMULA = "6N + 12 x n_layer x n_embd x block_size"


@dataclass
class SizeRule:
    aspect_ratio: int = 64  # n_embd per layer
    head_dim: int = 64  # channels per attention head
    kv_group: int = 1  # query heads per key/value head: >1 is grouped-query attention
    mlp_ratio: float | None = None  # the MLP's inner width over n_embd; None: the block's own
    lr_width: int | None = None  # the width train.learning_rate is for; None: the same for all
    lr_exponent: float = 1.0  # other widths: learning_rate x (lr_width / n_embd)^lr_exponent

    def problems(self) -> list[Problem]:
        found = []
        for name in ("aspect_ratio", "head_dim", "kv_group"):
            if getattr(self, name) < 1:
                found.append(((name,), f"must be >= 1, got {getattr(self, name)}"))
        if self.mlp_ratio is not None and self.mlp_ratio <= 0:
            found.append((("mlp_ratio",), f"must be > 0, got {self.mlp_ratio}"))
        if self.lr_width is not None and self.lr_width < 1:
            found.append((("lr_width",), f"must be >= 1, got {self.lr_width}"))
        return found

    def learning_rate_scale(self, n_embd: int) -> float:
        """What multiplies train.learning_rate (and min_lr) at this width."""
        if self.lr_width is None:
            return 1.0
        return (self.lr_width / n_embd) ** self.lr_exponent

    def model(self, base: ModelConfig, depth: int) -> ModelConfig:
        """The base model at this depth, its width and heads from the rule."""
        heads_per_group = self.head_dim * self.kv_group
        n_head = math.ceil(self.aspect_ratio * depth / heads_per_group) * self.kv_group
        n_embd = n_head * self.head_dim
        return replace(
            base,
            n_layer=depth,
            n_embd=n_embd,
            n_head=n_head,
            n_kv_head=None if self.kv_group == 1 else n_head // self.kv_group,
            mlp_hidden=None if self.mlp_ratio is None else round(self.mlp_ratio * n_embd),
        )


@dataclass(frozen=True)
class ModelSize:
    """One model of the study, as its runs are fitted: N and the FLOPs of a token."""

    depth: int
    n_embd: int
    n_head: int
    params: int  # N: non-embedding parameters
    flops_per_token: float  # F


def measure(config: ModelConfig) -> ModelSize:
    """N counted on the real model, built on the meta device (shapes only, no memory)."""
    import torch

    from raygpt.model import GPT
    from raygpt.model.moe import active_params

    with torch.device("meta"):
        model = GPT(config)
    params = active_params(model, model.num_params())
    return ModelSize(
        depth=config.n_layer,
        n_embd=config.n_embd,
        n_head=config.n_head,
        params=params,
        flops_per_token=flops_per_token(config, params),
    )
