"""The per-step training math, with no Ray: optimizer, schedule, precision, one step, MFU.

raygpt.train.loop runs this inside Ray Train workers; bench/bench_train.py runs it in a bare
PyTorch loop. Both therefore train exactly the same way.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from raygpt.config import ModelConfig, TrainConfig
from raygpt.model import GPT
from raygpt.train.expert_load import ExpertLoad

# Dense peak FLOP/s per GPU by name fragment and compute dtype, from the vendors' datasheets.
# float32 training uses TF32 tensor cores on these parts. Checked in order: first match wins.
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bfloat16": 989e12, "float16": 989e12, "float32": 494.5e12}),
    ("H100 PCIe", {"bfloat16": 756e12, "float16": 756e12, "float32": 378e12}),
    ("H100", {"bfloat16": 989e12, "float16": 989e12, "float32": 494.5e12}),
    ("A100", {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12}),
    ("L40S", {"bfloat16": 362e12, "float16": 362e12, "float32": 183e12}),
    ("L40", {"bfloat16": 181e12, "float16": 181e12, "float32": 90.5e12}),
    ("L4", {"bfloat16": 121e12, "float16": 121e12, "float32": 60e12}),
    ("A10", {"bfloat16": 125e12, "float16": 125e12, "float32": 62.5e12}),
    ("V100", {"float16": 125e12, "float32": 15.7e12}),
    ("T4", {"float16": 65e12, "float32": 8.1e12}),
]


@dataclass
class Precision:
    """What the step computes in: autocast dtype (None: plain float32) and a loss scaler."""

    device_type: str
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None

    @property
    def name(self) -> str:
        return "float32" if self.dtype is None else str(self.dtype).removeprefix("torch.")

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def choose_precision(requested: str, device: torch.device) -> Precision:
    """'auto' picks bf16 on GPUs that support it and float32 elsewhere; float16 gets a scaler."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for whatever stays in float32
        torch.backends.cudnn.allow_tf32 = True
    if requested == "auto":
        bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        requested = "bfloat16" if bf16_ok else "float32"
    if requested == "float32":
        return Precision(device.type, None, None)
    dtype = getattr(torch, requested)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return Precision(device.type, dtype, scaler)


def configure_optimizer(
    model: nn.Module, train: TrainConfig, device_type: str
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (≥ 2-D) only: not on biases, LayerNorms."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": train.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
    return torch.optim.AdamW(
        groups, lr=train.learning_rate, betas=(train.beta1, train.beta2), fused=fused or None
    )


def learning_rate(step: int, train: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr at lr_decay_iters (nanoGPT's schedule)."""
    if not train.decay_lr:
        return train.learning_rate
    if step < train.warmup_iters:
        return train.learning_rate * (step + 1) / (train.warmup_iters + 1)
    decay_iters = train.lr_decay_iters or train.max_iters
    if step > decay_iters:
        return train.min_lr
    progress = (step - train.warmup_iters) / max(1, decay_iters - train.warmup_iters)
    coefficient = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return train.min_lr + coefficient * (train.learning_rate - train.min_lr)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    lr: float,
    grad_clip: float,
    precision: Precision,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    experts: ExpertLoad | None = None,
) -> float:
    """One optimizer step over gradient-accumulation micro-batches; returns the mean loss.

    `no_sync` (DDP's, or FSDP's equivalent) skips the gradient all-reduce on every
    micro-step but the last, where one all-reduce carries the accumulated gradients.
    A mixture of experts trains on its router losses too (`experts`); the loss returned is
    the cross-entropy alone.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    total = torch.zeros((), device=micro_batches[0][0].device)
    steps = len(micro_batches)
    for i, (x, y) in enumerate(micro_batches):
        last = i == steps - 1
        sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with sync:
            with precision.autocast():
                _, loss = model(x, y)
            total += loss.detach() / steps
            if experts is not None:
                loss = loss + experts.loss()
            loss = loss / steps
            if precision.scaler is not None:
                precision.scaler.scale(loss).backward()
            else:
                loss.backward()
    if grad_clip > 0:
        if precision.scaler is not None:
            precision.scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if precision.scaler is not None:
        precision.scaler.step(optimizer)
        precision.scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(total)


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], precision: Precision
) -> tuple[float, int]:
    """(sum of per-batch mean losses, number of batches): callers all-reduce both."""
    was_training = model.training
    model.eval()
    total = 0.0
    for x, y in batches:
        with precision.autocast():
            _, loss = model(x, y)
        total += float(loss)
    model.train(was_training)
    return total, len(batches)


def flops_per_token(config: ModelConfig, non_embedding_params: int) -> float:
    """Training FLOPs per token: 6N for the matmuls plus attention's 12 * L * d * T (PaLM, app. B)."""
    return 6 * non_embedding_params + 12 * config.n_layer * config.n_embd * config.block_size


def peak_flops(device: torch.device, precision_name: str) -> float | None:
    """The device's dense peak for this precision, or None where we do not know one (CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peaks in PEAK_FLOPS:
        if fragment in name:
            return peaks.get(precision_name)
    return None


def model_flops_utilization(
    tokens_per_second: float, flops_token: float, peak: float | None
) -> float | None:
    return None if peak is None else tokens_per_second * flops_token / peak


def set_activation_checkpointing(model: GPT, enabled: bool) -> None:
    """Recompute each block's activations during backward instead of storing them."""
    for block in model.transformer.h:
        block.activation_checkpointing = enabled
