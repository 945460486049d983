"""The study's answer: for a compute budget, which model of the rule, on how many tokens.

N comes from the measured frontier (approach 2's N_opt = k_N C^a at the budget), rounded to the
rule's nearest depth; D is what the budget buys for that model (C / F); the expected loss is
approach 3's L(N, D). Each carries the bootstrap's interval. Approach 3's own choice (the
depth with the lowest L(N, C / F) over the rule's models) is given beside it: the two agree
when the parametric law describes the runs well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from raygpt.tune.scaling_config import ScalingStudy
from raygpt.tune.scaling_fit import ScalingFit
from raygpt.tune.scaling_sizes import ModelSize

MAX_DEPTH = 256


@dataclass(frozen=True)
class Choice:
    size: ModelSize
    tokens: float  # D = C / F
    loss: float  # approach 3's L(N, D)


@dataclass(frozen=True)
class Recommendation:
    flops: float
    gpu_hours: float  # of `gpu` at `mfu`
    gpu: str
    dtype: str
    mfu: float
    source: str  # what chose N: "approach 2" or, without it, "approach 3"
    params_opt: float  # N_opt at the budget, before rounding to a depth
    params_interval: tuple[float, float] | None
    chosen: Choice  # the rule's model nearest N_opt
    loss_interval: tuple[float, float] | None
    approach3: Choice  # approach 3's own best model of the rule

    def line(self) -> str:
        size, tokens = self.chosen.size, self.chosen.tokens
        interval = (
            f" (80% interval {self.loss_interval[0]:.3f}-{self.loss_interval[1]:.3f})"
            if self.loss_interval
            else ""
        )
        return (
            f"for a budget of {self.flops:.3g} FLOPs ({self.gpu_hours:.3g} {self.gpu}-hours at "
            f"{self.mfu:.0%} MFU, {self.dtype}) train N = {count(size.params)} parameters "
            f"(depth {size.depth}, n_embd {size.n_embd}) on D = {count(tokens)} tokens "
            f"({tokens / size.params:.0f} tokens per parameter), expected val loss "
            f"{self.chosen.loss:.3f}{interval}"
        )


def recommend(study: ScalingStudy, fit: ScalingFit) -> Recommendation:
    flops = study.recommend_flops
    settings = study.recommend
    sizes = rule_sizes(study, fit, flops)
    choices = [choose(size, flops, fit) for size in sizes]
    best3 = min(choices, key=lambda c: c.loss)
    if fit.approach2 is not None:
        source, params_opt = "approach 2", float(fit.approach2.params(flops))
        params_interval = fit.interval(
            lambda a2, _: None if a2 is None else float(a2.params(flops))
        )
        chosen = min(choices, key=lambda c: abs(math.log(c.size.params / params_opt)))
    else:
        source, params_opt, params_interval, chosen = "approach 3", best3.size.params, None, best3
    n, d = chosen.size.params, chosen.tokens
    return Recommendation(
        flops=flops,
        gpu_hours=settings.gpu_hours_for(flops),
        gpu=settings.gpu,
        dtype=settings.dtype,
        mfu=settings.mfu,
        source=source,
        params_opt=params_opt,
        params_interval=params_interval,
        chosen=chosen,
        loss_interval=fit.interval(lambda _, a3: float(a3.loss(n, d))),
        approach3=best3,
    )


def choose(size: ModelSize, flops: float, fit: ScalingFit) -> Choice:
    tokens = flops / size.flops_per_token
    return Choice(size, tokens, float(fit.approach3.loss(size.params, tokens)))


def rule_sizes(study: ScalingStudy, fit: ScalingFit, flops: float) -> list[ModelSize]:
    """The rule's models from depth 1 up to well past N_opt at this budget (approach 2's, or
    without it approach 3's)."""
    if fit.approach2 is not None:
        target = float(fit.approach2.params(flops))
    else:
        target = fit.approach3.optimal_params(flops)
    ceiling = 4 * target if np.isfinite(target) else math.inf
    sizes = []
    for depth in range(1, MAX_DEPTH + 1):
        sizes.append(study.size(depth))
        if sizes[-1].params > ceiling:
            break
    return sizes


def count(value: float) -> str:
    """1.2M, 340k, 3.4B: a count as people say it."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"
