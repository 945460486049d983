"""Every nn.Linear of a model with the module that holds it: the places where INT8 and
oneDNN-packed layers replace them."""

from __future__ import annotations

from torch import nn


def linear_layers(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute name, layer) for each nn.Linear, listed before any is replaced."""
    return [
        (parent, name, child)
        for parent in list(model.modules())
        for name, child in list(parent.named_children())
        if isinstance(child, nn.Linear)
    ]
