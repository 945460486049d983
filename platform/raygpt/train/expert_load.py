"""Training a mixture of experts: the router's losses go into the loss, the experts' load into
the run's record.

After each training forward every sparse layer holds its router numbers (model/moe.py). The
step adds `balance_loss_weight * balance + router_z_loss_weight * z`, each the mean over the
sparse layers, to the cross-entropy; the tokens each expert got are tallied until the next
log line, which shows, per layer, the fraction of (token, expert) pairs each expert took and
that distribution's entropy (log n_expert when uniform). Only the cross-entropy is reported
as `loss`, so a dense and a sparse run compare on the same number.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from raygpt.config import TrainConfig
from raygpt.model.moe import moe_layers


class ExpertLoad:
    """The router losses of a model's sparse layers, and their load since the last summary."""

    def __init__(self, model: nn.Module, train: TrainConfig) -> None:
        self.layers = moe_layers(model)
        self.balance_weight = train.balance_loss_weight
        self.z_weight = train.router_z_loss_weight
        self._tally: torch.Tensor | None = None  # (layers, n_expert) pairs routed
        self._sums: torch.Tensor | None = None  # balance, z, forwards

    @staticmethod
    def of(model: nn.Module, train: TrainConfig) -> ExpertLoad | None:
        """An ExpertLoad for a model with sparse layers; None for a dense one."""
        return ExpertLoad(model, train) if moe_layers(model) else None

    def loss(self) -> torch.Tensor:
        """The weighted router losses of the forward just run (and its load, tallied)."""
        outputs = [layer.last for _, layer in self.layers]
        balance = torch.stack([o.balance_loss for o in outputs]).mean()
        z = torch.stack([o.z_loss for o in outputs]).mean()
        counts = torch.stack([o.tokens_per_expert for o in outputs]).double()
        sums = torch.stack([balance.detach().double(), z.detach().double(), counts.new_ones(())])
        if self._tally is None:
            self._tally, self._sums = counts, sums
        else:
            self._tally += counts
            self._sums += sums
        return self.balance_weight * balance + self.z_weight * z

    def summary(self, all_reduce: Callable[[torch.Tensor], None] | None = None) -> dict[str, Any]:
        """The record's expert numbers since the last summary (every rank's, through
        `all_reduce` when given: a collective, so every rank calls it), and a fresh tally."""
        if self._tally is None:
            return {}
        numbers = torch.cat([self._tally.flatten(), self._sums])
        if all_reduce is not None:
            all_reduce(numbers)
        tally = numbers[: self._tally.numel()].view_as(self._tally)
        balance, z, forwards = numbers[self._tally.numel() :].tolist()
        self._tally = self._sums = None
        fractions = tally / tally.sum(dim=-1, keepdim=True).clamp_min(1)
        experts = []
        for (index, _), load in zip(self.layers, fractions, strict=True):
            entropy = -sum(f * math.log(f) for f in load.tolist() if f > 0)
            experts.append({"layer": index, "load": load.tolist(), "entropy": entropy})
        return {
            "balance_loss": balance / forwards,
            "router_z_loss": z / forwards,
            "experts": experts,
        }


def load_range(layer: dict[str, Any]) -> tuple[float, float]:
    """A layer's least and most loaded expert, as multiples of a uniform share."""
    uniform = 1 / len(layer["load"])
    return min(layer["load"]) / uniform, max(layer["load"]) / uniform
