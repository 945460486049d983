"""Linear layers whose weights are packed once for oneDNN: the CPU inference matmul.

A CPU matmul from a plain (out, in) weight re-blocks it for the kernel on every call. oneDNN
can do that once: `_reorder_linear_weight` stores the weight in the blocked layout its GEMM
reads, and `_linear_pointwise` multiplies by it (what inductor's freezing does on CPU, and
what vLLM's CPU build serves with). A SmolLM2-135M decode step on 2 cores, compiled:
49 / 102 / 207 ms at 1 / 8 / 32 rows from column-major weights, 37 / 42 / 85 ms packed
(BENCHMARKS.md). Inference only: a packed layer has no gradient.

`packed_linear` is a custom op so that a compiled block keeps each matmul as one oneDNN call
(inductor cannot lower the opaque packed tensor itself) and fuses the small ops around it.
"""

from __future__ import annotations

import torch
from torch import nn

from raygpt.model.linear_layers import linear_layers

PACKED_DTYPES = (torch.float32, torch.bfloat16)


@torch.library.custom_op("raygpt::packed_linear", mutates_args=())
def packed_linear(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> torch.Tensor:
    """x @ W.T + bias with W packed by torch.ops.mkldnn._reorder_linear_weight."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@packed_linear.register_fake
def _(x, packed, bias, out_features):
    return x.new_empty(*x.shape[:-1], out_features)


class PackedLinear(nn.Module):
    """An nn.Linear's weight packed once for oneDNN (a copy: a tied weight stays for the
    embedding lookup), and its bias."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        # a plain attribute, not a buffer: the opaque tensor is neither saved nor moved
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return packed_linear(x, self.packed, self.bias, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


def can_pack(weight: torch.Tensor) -> bool:
    return (
        weight.device.type == "cpu"
        and weight.dtype in PACKED_DTYPES
        and torch.backends.mkldnn.is_available()
    )


def pack_linears(model: nn.Module) -> None:
    """Replace every float nn.Linear of `model` on the CPU with a PackedLinear."""
    for parent, name, linear in linear_layers(model):
        if can_pack(linear.weight):
            setattr(parent, name, PackedLinear(linear))
