"""INT8 weights for the GPT: per-channel symmetric, quantized by torchao, run fast on CPU and GPU.

torchao's `quantize_` quantizes every nn.Linear (and the tied embedding / output head, the
largest matrix of all). The int8 values and per-output-channel scales then live in
`Int8Linear` modules whose matmul suits the device:

- on CPU, int8 x int8: each row of activations is written on the fly as two int8 digits
  with the row's own scale and multiplied by the int8 weight in int32 (`torch._int_mm`),
  then scaled back. It reads a quarter of fp32's weight bytes and runs an integer GEMM, so
  it beats oneDNN's packed fp32 at every batch: SmolLM2-135M decodes 40 / 213 / 414
  tokens/s at 1 / 8 / 32 rows through the engine, fp32 20 / 130 / 304 (BENCHMARKS.md). The
  integer sum is exact and each row has its own scale, so a row's result does not depend
  on the rows beside it;
- on GPUs: x @ int8.to(x.dtype).T * scale, gpt-fast's weight-only form, which torch.compile
  fuses.

The embedding reads the head's int8 rows, so the tied matrix is stored once, in int8. An
untied embedding stays a float lookup table (it costs no matmul).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from raygpt.errors import CheckpointError
from raygpt.model.gpt import GPT
from raygpt.model.linear_layers import linear_layers

# The stored method: int8 weights with one scale per output channel. How activations meet
# them is the device's choice (see above), not the checkpoint's.
WEIGHT_ONLY = "int8-weight-only"
METHODS = (WEIGHT_ONLY,)


def _dynamic_int8_linear(x: torch.Tensor, qdata: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(M, K) float x (N, K) int8 -> (M, N) float, with each row of x written as two int8
    digits: x ~ (high * 254 + low) * unit, unit = absmax(row) / (127 * 254).

    One int8 digit per activation (absmax / 127 steps) moved SmolLM2's val loss by 1.7%;
    the second digit resolves 254x finer (+0.12% weight-only, -0.21% two digits, same
    windows), and both digits share one _int_mm that reads the weight once."""
    absmax = x.abs().amax(-1, keepdim=True).clamp_min(1e-30)
    unit = absmax / (127 * 254)
    units = x / unit  # within +-127 * 254
    high = torch.round(units / 254).clamp(-127, 127)
    low = torch.round(units - high * 254).clamp(-127, 127)  # the product is exact
    digits = torch.cat([high, low]).to(torch.int8)
    # qdata.t() is a column-major view: the layout _int_mm's CPU kernel reads fastest
    y = torch._int_mm(digits, qdata.t()).to(x.dtype)
    m = x.shape[0]
    return (y[:m] * 254 + y[m:]) * unit * scale


class Int8Linear(nn.Module):
    """y = x @ (qdata * scale).T + bias, with qdata int8 (out, in) and one scale per output
    (on CPU through x's two int8 digits: within 2e-4 of it, tests/test_quantize.py)."""

    def __init__(self, qdata: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("qdata", qdata)
        self.register_buffer("scale", scale.reshape(-1).to(torch.float32))
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.in_features, self.out_features = qdata.shape[1], qdata.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        scale = self.scale.to(x.dtype)
        if x.device.type == "cpu":
            y = _dynamic_int8_linear(flat, self.qdata, scale)
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
    for parent, name, linear in linear_layers(model):
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
    for parent, name, linear in linear_layers(model):
        qdata = torch.empty(
            linear.out_features, linear.in_features, dtype=torch.int8, device="meta"
        )
        scale = torch.empty(linear.out_features, device="meta")
        setattr(parent, name, Int8Linear(qdata, scale, linear.bias))
    return _finish(model, method)


def is_quantized(model: nn.Module) -> bool:
    return getattr(model, "quantization", None) is not None


def _finish(model: GPT, method: str) -> GPT:
    if model.config.tie_embeddings:
        model.transformer.wte = Int8Embedding(model.lm_head)
    model.quantization = method
    return model.eval()
