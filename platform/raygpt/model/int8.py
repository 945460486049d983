"""INT8 weights for the GPT: per-channel symmetric, quantized by torchao, run fast on CPU and GPU.

torchao's `quantize_` quantizes every nn.Linear (and the tied embedding / output head, the
largest matrix of all). The int8 values and per-output-channel scales then live in
`Int8Linear` modules whose matmul suits the device:

- decode on CPU, up to SMALL_BATCH rows: one fused, compiled dequantize-and-reduce kernel that
  reads the int8 weights once (batch-1 decode is bound by reading weights: int8 reads 4x
  fewer bytes than fp32);
- larger batches, and GPUs: x @ int8.to(x.dtype).T * scale, gpt-fast's form, which
  torch.compile fuses on GPU.

The embedding reads the head's int8 rows, so the tied matrix is stored once, in int8. An
untied embedding stays a float lookup table (it costs no matmul).
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

from raygpt.errors import CheckpointError
from raygpt.model.gpt import GPT

WEIGHT_ONLY = "int8-weight-only"
# torchao's dynamic-activation int8 measured slower at batch-1 decode on CPU and on its
# matmuls (BENCHMARKS.md), so weight-only is the method on both targets for now.
METHODS = (WEIGHT_ONLY,)
# Rows up to which the fused CPU kernel beats dequantize-then-matmul: at 32 rows (the
# service's default slots) a compiled SmolLM2 decode step takes 118-134 ms with it and
# 175-208 ms dequantizing (fp32: 166-203 ms), as writing every fp32 weight out and reading it
# back costs more memory traffic than fp32 weights themselves. Prefills stay above it.
SMALL_BATCH = 32


def _int8_matvec(x: torch.Tensor, qdata: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # (M, K) x (N, K) int8 -> (M, N): compiled into one loop that converts int8 on the fly
    return (x.unsqueeze(-2) * qdata.to(x.dtype)).sum(-1) * scale


@functools.cache
def _compiled_int8_matvec():
    return torch.compile(_int8_matvec, dynamic=True)


class Int8Linear(nn.Module):
    """y = x @ (qdata * scale).T + bias, with qdata int8 (out, in) and one scale per output."""

    def __init__(self, qdata: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("qdata", qdata)
        self.register_buffer("scale", scale.reshape(-1).to(torch.float32))
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.in_features, self.out_features = qdata.shape[1], qdata.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        scale = self.scale.to(x.dtype)
        if x.device.type == "cpu" and flat.shape[0] <= SMALL_BATCH:
            # inside a compiled block the block's own compile fuses it
            if torch.compiler.is_compiling():
                y = _int8_matvec(flat, self.qdata, scale)
            else:  # a fresh copy (a few KB): views at other offsets would recompile it
                y = _compiled_int8_matvec()(flat.clone(), self.qdata, scale)
        else:
            y = F.linear(flat, self.qdata.to(x.dtype)) * scale
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int8Embedding(nn.Module):
    """Token embedding that reads rows of the (tied) int8 output head and scales them."""

    def __init__(self, head: Int8Linear) -> None:
        super().__init__()
        self.head = [head]  # a plain list: the head's buffers are saved once, under lm_head

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        head = self.head[0]
        return head.qdata[idx].to(torch.float32) * head.scale[idx].unsqueeze(-1)


def quantize_model(model: GPT, method: str = WEIGHT_ONLY) -> GPT:
    """Quantize `model` in place with torchao; returns it, ready for inference."""
    Int8WeightOnlyConfig, quantize_ = _torchao_quantization()
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; choose one of {list(METHODS)}")
    if is_quantized(model):
        raise CheckpointError("this model is already INT8: quantize the original checkpoint")
    model = model.float().eval()
    if model.config.tie_embeddings:
        # The tied head is quantized as a Linear of its own; its per-row scales serve the
        # embedding.
        model.lm_head.weight = nn.Parameter(model.transformer.wte.weight.detach().clone())
    quantize_(
        model, Int8WeightOnlyConfig(), filter_fn=lambda module, _: isinstance(module, nn.Linear)
    )
    for parent, name, linear in _linears(model):
        weight = linear.weight
        setattr(parent, name, Int8Linear(weight.qdata, weight.scale, linear.bias))
    return _finish(model, method)


def _torchao_quantization():
    """torchao's int8 weight-only config and quantize_. Its import logs that its CUDA-only
    kernels (mxfp8, cutlass) do not load on a CPU build of torch, and torch warns about an
    enum it registers: neither concerns the int8 path, so neither reaches the console."""
    quiet = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    return Int8WeightOnlyConfig, quantize_


def int8_skeleton(model: GPT, method: str) -> GPT:
    """The structure of a quantized model (empty int8 buffers), for loading a saved one."""
    if method not in METHODS:
        raise CheckpointError(f"unknown quantization method {method!r} in the checkpoint")
    for parent, name, linear in _linears(model):
        qdata = torch.empty(
            linear.out_features, linear.in_features, dtype=torch.int8, device="meta"
        )
        scale = torch.empty(linear.out_features, device="meta")
        setattr(parent, name, Int8Linear(qdata, scale, linear.bias))
    return _finish(model, method)


def is_quantized(model: nn.Module) -> bool:
    return getattr(model, "quantization", None) is not None


def _linears(model: nn.Module):
    return [
        (parent, name, child)
        for parent in list(model.modules())
        for name, child in list(parent.named_children())
        if isinstance(child, nn.Linear)
    ]


def _finish(model: GPT, method: str) -> GPT:
    if model.config.tie_embeddings:
        model.transformer.wte = Int8Embedding(model.lm_head)
    model.quantization = method
    return model.eval()
