"""The mixture-of-experts MLP: a router sends each token to `n_expert_per_token` of
`n_expert` expert MLPs and adds their outputs, weighted by the router (Shazeer et al. 2017;
Switch Transformer, Fedus et al. 2021; Mixtral, Jiang et al. 2024).

    router      one (n_expert, n_embd) matrix: logits, softmax, top-k; the k weights
                renormalized to sum to 1 (Mixtral) or kept as probabilities (Qwen2-MoE)
    dispatch    dropless: the (token, expert) pairs are sorted by expert, each expert runs
                once on its contiguous slice, however many tokens chose it (no capacity,
                nothing dropped), and the outputs are added back at their tokens
    shared      optionally one more MLP every token goes through, scaled by a sigmoid gate
                of its own (Qwen2-MoE's shared expert)

Each expert is gpt.py's MLP (passed in: gpt.py builds this module), so its matrices are
nn.Linear layers that INT8 and oneDNN packing replace as they do the dense MLP's. The router
is no nn.Linear on purpose: it stays float, as a quantized router could flip near-tied
choices.

Under CUDA graph capture (the engine's static decode step on GPUs) the slice lengths cannot
depend on the tokens, nor the host wait for them: there every expert runs on every token,
the unchosen ones weighted 0 (`every_expert`), which a decode step of a few tokens can afford,
as it reads every expert's weights anyway.

A training forward leaves its router numbers on the module (`last`): the Switch
load-balancing loss, the router z-loss (ST-MoE, Zoph et al. 2022) and the tokens each
expert got. raygpt.train.expert_load adds the losses, weighted, into the training loss and
logs the load.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from raygpt.config import ModelConfig


@dataclass
class RouterOutput:
    """One training forward's routing numbers for one layer."""

    balance_loss: torch.Tensor  # Switch's n_expert * sum_i f_i * P_i: 1.0 when uniform
    z_loss: torch.Tensor  # mean over tokens of logsumexp(router logits)^2
    tokens_per_expert: torch.Tensor  # (n_expert,) (token, expert) pairs, no gradient


class Router(nn.Module):
    """Token -> expert logits; a bare float matrix, never quantized or packed."""

    def __init__(self, n_embd: int, n_expert: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_expert, n_embd))
        nn.init.normal_(self.weight, mean=0.0, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def top_k_routing(
    logits: torch.Tensor, k: int, renormalize: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probabilities (N, E), gate weights (N, k), chosen experts (N, k)): softmax in float32,
    then the k most probable experts. Renormalized, the k weights are a softmax over the k
    chosen logits (top-k then softmax is the same function)."""
    probs = logits.float().softmax(dim=-1)
    weights, experts = probs.topk(k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return probs, weights, experts


def balance_loss(probs: torch.Tensor, tokens_per_expert: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's auxiliary loss, n_expert * sum_i f_i * P_i: f_i the fraction of
    (token, expert) pairs routed to expert i (no gradient), P_i the mean router probability
    of expert i (the gradient). 1.0 at a uniform load, n_expert when one expert takes all."""
    n_expert = probs.shape[-1]
    fraction = tokens_per_expert.float() / tokens_per_expert.sum().clamp_min(1)
    return n_expert * (fraction * probs.mean(dim=0)).sum()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE's router z-loss: keeps the router's logits small, so its softmax stays in
    float range and its choices stable."""
    return logits.float().logsumexp(dim=-1).square().mean()


def dispatch(
    x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor, modules: nn.ModuleList
) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_j weights[n, j] * modules[experts[n, j]](x[n]) for every token n, each expert run
    once on the tokens that chose it; and the tokens each expert got.

    x (N, C); weights and experts (N, k). The N * k (token, expert) pairs are sorted by
    expert (stable: ties keep token order), so each expert's tokens are one slice."""
    n_tokens, k = experts.shape
    flat = experts.reshape(-1)
    order = flat.argsort(stable=True)
    token_of_pair = order // k  # pair j of a token sits at flat index token * k + j
    tokens_per_expert = torch.bincount(flat, minlength=len(modules))
    grouped = x[token_of_pair]
    outputs = []
    # Training runs an expert even on no tokens: its weights then get a zero gradient, not
    # none, so DDP's all-reduce and FSDP's reduce-scatter see every parameter every step.
    # Inference skips it (INT8 and packed kernels want at least one row).
    run_empty = torch.is_grad_enabled()
    for module, part in zip(modules, grouped.split(tokens_per_expert.tolist()), strict=True):
        if part.shape[0] or run_empty:
            outputs.append(module(part))
    combined = torch.cat(outputs) * weights.reshape(-1)[order, None].to(outputs[0].dtype)
    out = combined.new_zeros(n_tokens, combined.shape[-1])
    return out.index_add_(0, token_of_pair, combined), tokens_per_expert


def every_expert(
    x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor, modules: nn.ModuleList
) -> torch.Tensor:
    """dispatch's sum with static shapes and no host sync: each expert on every token, the
    tokens that did not choose it weighted 0. n_expert / k times the expert FLOPs."""
    gates = torch.zeros(experts.shape[0], len(modules), dtype=x.dtype, device=x.device)
    gates.scatter_(1, experts, weights.to(x.dtype))  # (N, n_expert), k nonzero a row
    out = torch.zeros_like(x)
    for e, module in enumerate(modules):
        out = out + gates[:, e, None] * module(x)
    return out


class MoE(nn.Module):
    """The sparse MLP of one block: router, `n_expert` experts, an optional shared expert."""

    def __init__(self, config: ModelConfig, expert: type[nn.Module]) -> None:
        """`expert(config, hidden)` builds one MLP `hidden` wide: gpt.py's MLP."""
        super().__init__()
        self.k, self.renormalize = config.n_expert_per_token, config.router_renormalize
        self.router = Router(config.n_embd, config.n_expert)
        self.experts = nn.ModuleList(
            expert(config, config.expert_width) for _ in range(config.n_expert)
        )
        self.shared_expert = self.shared_expert_gate = None
        if config.shared_expert_hidden:
            self.shared_expert = expert(config, config.shared_expert_hidden)
            self.shared_expert_gate = nn.Linear(config.n_embd, 1, bias=False)
        self.last: RouterOutput | None = None  # the last training forward's, for the loss

    # Each expert's slice is as long as the tokens that chose it: shapes that depend on the
    # data, which torch.compile would recompile for; the block around it stays compiled.
    @torch.compiler.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = self.router(x)
        probs, weights, experts = top_k_routing(logits, self.k, self.renormalize)
        if x.is_cuda and torch.cuda.is_current_stream_capturing():  # inference, never training
            y, tokens_per_expert = every_expert(x, weights, experts, self.experts), None
        else:
            y, tokens_per_expert = dispatch(x, weights, experts, self.experts)
        if self.shared_expert is not None:
            y = y + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        if self.training:
            self.last = RouterOutput(
                balance_loss(probs, tokens_per_expert), z_loss(logits), tokens_per_expert
            )
        return y.reshape(shape)


def moe_layers(model: nn.Module) -> list[tuple[int, MoE]]:
    """(block index, its MoE) for every sparse block of a GPT, wrapped (DDP, FSDP,
    torch.compile) or not."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, MoE):
            parts = name.split(".")  # ...transformer.h.<index>.mlp
            found.append((int(parts[parts.index("h") + 1]), module))
    return found


def active_params(model: nn.Module, non_embedding: int) -> int:
    """Parameters a token goes through: `non_embedding` (GPT.num_params()) less the experts
    it is not routed to. 6 times this is a training step's FLOPs per token."""
    inactive = 0
    for _, layer in moe_layers(model):
        per_expert = sum(p.numel() for p in layer.experts[0].parameters())
        inactive += (len(layer.experts) - layer.k) * per_expert
    return non_embedding - inactive
