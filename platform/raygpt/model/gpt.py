"""The GPT: nanoGPT's architecture and the modern (Llama-family) block in one file, with a
preallocated KV cache for generation.

Pre-norm transformer blocks and causal self-attention through `scaled_dot_product_attention`,
then one switch per improvement of the last five years (ModelConfig; the defaults are GPT-2):

    positions   learned (GPT-2)          or rotary, RoPE (`position: rope`, `rope_theta`)
    norm        LayerNorm                or RMSNorm
    MLP         GELU, 4x wide            or SwiGLU (`mlp_hidden` wide); either dense, or a
                                         mixture of experts (`n_expert`, model/moe.py)
    attention   one key/value per head   or grouped-query / multi-query (`n_kv_head`)
    biases      everywhere or nowhere    or on q, k, v only (`qkv_bias`, Qwen2)
    output      tied to the embedding    or its own matrix (`tie_embeddings: false`)

The vocabulary is padded to a multiple of 64. Parameter names are nanoGPT's: q, k and v are
one matrix (c_attn), and SwiGLU's gate and up projections are one (c_fc), so each is one
matmul; the HF converters split and join them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from raygpt.config import ModelConfig
from raygpt.model.kv_cache import KVCache
from raygpt.model.moe import MoE
from raygpt.model.packed_linear import can_pack, pack_linears
from raygpt.model.sampling import sample_next_token

LayerCache = tuple[torch.Tensor, torch.Tensor]
Rotation = tuple[torch.Tensor, torch.Tensor]  # cos and sin, broadcastable to (B, H, T, hd/2)


class RowPositions:
    """Where each row's new tokens go when rows sit at different lengths (batched decode of
    independent sequences): row b's T tokens take cache positions `positions[b]` + 0..T-1,
    and each attends to its row's positions up to its own, whatever stale values lie beyond.
    T is 1 for plain decode and 1 + k when a step verifies k speculated tokens a row; a row
    with fewer pads its tail, whose keys land beyond its length, where nothing reads them
    before a later step writes the real ones.

    Every row reads the first `end` cache positions (masked per row). A caller that knows the
    longest row on the host (the engine does) passes `end`, so a step has no host sync;
    otherwise it is read off the positions, one sync per step, not one per layer."""

    def __init__(self, positions: torch.Tensor, end: int | None = None, tokens: int = 1) -> None:
        self.rows = torch.arange(positions.numel(), device=positions.device)[:, None]  # (B, 1)
        offsets = torch.arange(tokens, device=positions.device)
        self.positions = positions[:, None] + offsets  # (B, T)
        self.end = int(positions.max()) + tokens if end is None else end
        keys = torch.arange(self.end, device=positions.device)
        self.mask = (keys <= self.positions[..., None])[:, None]  # (B, 1, T, end)


class PackedPrompts:
    """Several prompts, or pieces of prompts, in one forward pass (the engine's prefill of
    a step): `idx` is (1, L), the pieces back to back. Piece i fills cache row `rows[i]` from
    position `starts[i]`: 0 for a whole prompt, later for the rest of a prompt whose
    beginning an earlier pass cached (chunked prefill). Each piece attends to its row's
    positions before it and causally within itself (a block-diagonal mask), so each gets what
    a pass of its own gives it, at one matmul per weight for all."""

    def __init__(
        self,
        lengths: list[int],
        rows: list[int],
        device: torch.device,
        starts: list[int] | None = None,
    ) -> None:
        starts = starts or [0] * len(lengths)
        length = torch.tensor(lengths, device=device)
        start = torch.tensor(starts, device=device)
        row = torch.tensor(rows, device=device)
        piece = torch.repeat_interleave(
            torch.arange(len(lengths), device=device), length, output_size=sum(lengths)
        )
        offsets = length.cumsum(0) - length  # where each piece begins in idx
        self.rows = row[piece]  # (L,): each token's cache row
        self.positions = torch.arange(sum(lengths), device=device) - offsets[piece]
        self.positions += start[piece]
        self.last = offsets + length - 1  # each piece's last token: where its logits are read
        self.end = max(s + n for s, n in zip(starts, lengths, strict=True))
        # One piece attends as a pass of its own (causal, reading its row's cache in place):
        # it needs neither the key gather nor the block mask below.
        self.one_row = (rows[0], starts[0]) if len(lengths) == 1 else None
        self.key_rows = self.key_positions = None  # None: attention sees only the new keys
        self.mask = None
        if self.one_row is not None:
            return
        key_piece, key_positions = piece, self.positions
        if any(starts):  # keys are read back from the cache: each row from position 0
            span = start + length
            key_piece = torch.repeat_interleave(torch.arange(len(lengths), device=device), span)
            key_offsets = span.cumsum(0) - span
            self.key_rows = row[key_piece]
            self.key_positions = torch.arange(int(span.sum()), device=device)
            self.key_positions -= key_offsets[key_piece]
            key_positions = self.key_positions
        same = piece[:, None] == key_piece[None, :]
        self.mask = same & (self.positions[:, None] >= key_positions[None, :])  # (L, keys)


class MixedStep:
    """A step's prefill and its decode in one pass, one matmul per weight for both: `idx` is
    (1, P + D), the prefill pieces back to back (`prefill`, P tokens), then one token for
    each decoding row, cache rows 0..D-1 at their own positions (`decode`, as a batched
    decode step of D rows). The logits are each piece's last, then each decoding row's:
    (pieces + D, 1, vocab). Attention runs as the two passes would; only the matmuls and the
    per-layer overhead are shared."""

    def __init__(self, prefill: PackedPrompts, decode: RowPositions) -> None:
        if decode.positions.shape[1] != 1:
            raise ValueError("a mixed step decodes one token a row")
        self.prefill, self.decode = prefill, decode
        self.prefill_tokens = prefill.positions.numel()
        self.positions = torch.cat([prefill.positions, decode.positions[:, 0]])  # (P + D,)
        self.end = max(prefill.end, decode.end)
        rows = torch.arange(decode.positions.shape[0], device=self.positions.device)
        self.last = torch.cat([prefill.last, self.prefill_tokens + rows])


@functools.cache
def compiled_decode_blocks():
    """Every block of a decode step as one compiled call: `run(blocks, x, caches, start_pos,
    rotation)`. Each block is a nested compile region, compiled once and reused by every
    layer (each layer's weights are its inputs), and the step pays one call's guards and
    wrappers instead of one per layer: SmolLM2 fp32 on 2 cores, 8-18% shorter steps than
    one compiled call per block, for a longer compile (67 s against 19 s on a fresh
    machine, 20 s from inductor's cache; BENCHMARKS.md). Inside the block, fusing its small
    ops (norms, RoPE, SwiGLU, INT8's activation digits) removes most of a CPU decode step's
    per-op overhead (bench/bench_pretrained.py). Graphs: one per decode shape family (one
    row; more, dynamic in batch and length) of each model shape and dtype."""
    block = torch.compiler.nested_compile_region(Block._forward)

    def run(blocks, x, caches, start_pos, rotation):
        for layer, layer_cache in zip(blocks, caches, strict=True):
            # a mixture runs eagerly (MoE.forward), a graph break no region may hold:
            # its block is traced inline, the graph split around the dispatch
            forward = Block._forward if isinstance(layer.mlp, MoE) else block
            x = forward(layer, x, layer_cache, start_pos, rotation)
        return x

    compiled = torch.compile(run, dynamic=True)

    def call(*args):
        # A region lifts its modules' float attributes (norm eps, dropout p) as inputs;
        # traced symbolic, they fail inductor: they are constants of the model. Every model
        # shape and dtype in the process has its own graphs of this one function (two per
        # model: one row, more): past dynamo's default limit of 8 it would run eagerly.
        with torch._dynamo.config.patch(specialize_float=True, recompile_limit=64):
            return compiled(*args)

    return call


def rope_tables(config: ModelConfig, device: torch.device | None = None) -> Rotation:
    """cos and sin of every position's rotation angles, (block_size, head_dim / 2), float32.
    Pair i of a head turns by position * theta^(-2i / head_dim) (Su et al. 2021)."""
    half = config.head_dim // 2
    inverse_frequency = config.rope_theta ** -(
        torch.arange(0, half, dtype=torch.float32, device=device) / half
    )
    angles = torch.outer(
        torch.arange(config.block_size, dtype=torch.float32, device=device), inverse_frequency
    )
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, rotation: Rotation) -> torch.Tensor:
    """Rotate each head's pairs (x[i], x[i + hd/2]) by their angles: HF Llama's layout."""
    cos, sin = rotation
    first, second = x.float().chunk(2, dim=-1)
    turned = torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)
    return turned.to(x.dtype)


def norm_layer(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.dropout = config.dropout
        kv_width = self.n_kv_head * self.head_dim
        self.split = (config.n_embd, kv_width, kv_width)  # q, k, v out of one matmul
        self.c_attn = nn.Linear(config.n_embd, sum(self.split), bias=config.has_qkv_bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        cache: LayerCache | None,
        start_pos: int | RowPositions | PackedPrompts | MixedStep,
        rotation: Rotation | None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.split, dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, K, T, hd)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rotation is not None:
            q, k = rotate(q, rotation), rotate(k, rotation)
        if isinstance(start_pos, MixedStep):  # the pieces, then one token per decoding row
            P = start_pos.prefill_tokens
            y = self._attend(q[:, :, :P], k[:, :, :P], v[:, :, :P], cache, start_pos.prefill)
            # (1, H, D, hd) -> (D, H, 1, hd): each decoding row its own batch entry
            rows = (t[:, :, P:].transpose(0, 2) for t in (q, k, v))
            y_rows = self._attend(*rows, cache, start_pos.decode)
            y = torch.cat([y, y_rows.transpose(0, 2)], dim=2)
        else:
            y = self._attend(q, k, v, cache, start_pos)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cache: LayerCache | None,
        start_pos: int | RowPositions | PackedPrompts,
    ) -> torch.Tensor:
        """Write the new keys and values into the cache and attend: (B, H, T, hd)."""
        B, _, T, _ = q.shape
        mask, causal = None, True
        if isinstance(start_pos, PackedPrompts) and start_pos.one_row is not None:
            row, start = start_pos.one_row
            cache_k, cache_v = cache
            return self._attend(q, k, v, (cache_k[row : row + 1], cache_v[row : row + 1]), start)
        if isinstance(start_pos, PackedPrompts):
            cache_k, cache_v = cache
            cache_k[start_pos.rows, :, start_pos.positions] = k[0].transpose(0, 1)
            cache_v[start_pos.rows, :, start_pos.positions] = v[0].transpose(0, 1)
            if start_pos.key_rows is not None:  # some pieces continue a cached prompt
                keys = (start_pos.key_rows, slice(None), start_pos.key_positions)
                k, v = cache_k[keys].transpose(0, 1)[None], cache_v[keys].transpose(0, 1)[None]
            mask, causal = start_pos.mask, False
        elif isinstance(start_pos, RowPositions):  # each row's new tokens at its own positions
            cache_k, cache_v = cache
            cache_k[start_pos.rows, :, start_pos.positions] = k.transpose(1, 2)
            cache_v[start_pos.rows, :, start_pos.positions] = v.transpose(1, 2)
            k, v = cache_k[:B, :, : start_pos.end], cache_v[:B, :, : start_pos.end]
            mask, causal = start_pos.mask, False
        elif cache is not None:
            end = start_pos + T
            cache_k, cache_v = cache
            cache_k[:B, :, start_pos:end] = k
            cache_v[:B, :, start_pos:end] = v
            k, v = cache_k[:B, :, :end], cache_v[:B, :, :end]
            if start_pos > 0:
                # new queries see every cached position and the causal part of their own
                causal = False
                if T > 1:
                    mask = torch.ones(T, end, dtype=torch.bool, device=q.device).tril(start_pos)
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal,
            enable_gqa=self.n_kv_head != self.n_head,  # each k/v head serves n_head/K queries
        )


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, hidden: int | None = None) -> None:
        """`hidden` wide (a mixture's expert), or config.hidden."""
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        hidden = hidden or config.hidden
        width = 2 * hidden if self.swiglu else hidden  # SwiGLU: gate and up
        self.c_fc = nn.Linear(config.n_embd, width, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:  # Shazeer 2020: silu(x W_gate) * (x W_up)
            gate, up = self.c_fc(x).chunk(2, dim=-1)
            hidden = F.silu(gate) * up
        else:
            hidden = self.gelu(self.c_fc(x))
        return self.dropout(self.c_proj(hidden))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.ln_1 = norm_layer(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = norm_layer(config)
        self.mlp = MoE(config, MLP) if config.is_sparse(layer) else MLP(config)
        self.activation_checkpointing = False  # set by train.step.set_activation_checkpointing

    def forward(
        self,
        x: torch.Tensor,
        cache: LayerCache | None = None,
        start_pos: int | RowPositions | PackedPrompts | MixedStep = 0,
        rotation: Rotation | None = None,
    ) -> torch.Tensor:
        if self.activation_checkpointing and self.training and cache is None:
            return checkpoint(self._forward, x, None, 0, rotation, use_reentrant=False)
        return self._forward(x, cache, start_pos, rotation)

    def _forward(
        self,
        x: torch.Tensor,
        cache: LayerCache | None,
        start_pos: int | RowPositions | PackedPrompts | MixedStep,
        rotation: Rotation | None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, start_pos, rotation)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        layers = dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
            ln_f=norm_layer(config),
        )
        if config.position == "learned":
            layers["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.transformer = nn.ModuleDict(layers)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # one matrix, two uses
        self.apply(self._init_weights)
        # GPT-2's scaled init: residual projections shrink with depth so the stream's
        # variance stays put as 2 * n_layer branches add into it.
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        self.reset_rope()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def reset_rope(self) -> None:
        """(Re)build the rotation tables: they are no weights, so a checkpoint holds none and
        a model built on the meta device and then loaded needs them made here."""
        if self.config.position == "rope":
            cos, sin = rope_tables(self.config, self.transformer.ln_f.weight.device)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    def _apply(self, fn, recurse=True):
        """.to(), .cuda(), .bfloat16() move the rotation tables too, then they are rebuilt in
        float32: angles rounded to bf16 would turn far positions wrong."""
        module = super()._apply(fn, recurse)
        self.reset_rope()
        return module

    @property
    def param_device_dtype(self) -> tuple[torch.device, torch.dtype]:
        """Where the model lives and its float dtype (ln_f stays float in INT8 models)."""
        weight = self.transformer.ln_f.weight
        return weight.device, weight.dtype

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count, each matrix once. Non-embedding (nanoGPT's convention, and the N
        of 6N FLOPs per token) leaves out lookup tables: learned positions, and the token
        embedding when it is not also the output head."""
        n = sum(p.numel() for p in self.parameters())
        if not non_embedding:
            return n
        if "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        if not self.config.tie_embeddings:
            n -= self.transformer.wte.weight.numel()
        return n

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        start_pos: int | torch.Tensor | PackedPrompts | MixedStep = 0,
        last_logits_only: bool = False,
        attend_to: int | None = None,
        compiled: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits over the padded vocabulary, and the mean cross-entropy when targets are given.

        With a cache, `idx` holds positions start_pos.. of each sequence; their keys and values
        are written into the cache and attention reads everything before them from it. A
        tensor `start_pos` (one position per row, `idx` of shape (B, T)) decodes rows of
        different lengths together: continuous batching, T tokens a row from its own
        position (T > 1: speculated tokens verified in one pass, logits at each); every row
        then reads the first `attend_to` cache positions (at least the longest row's real
        tokens, default: read off start_pos), and `compiled` runs the blocks through
        compiled_decode_blocks (the first step of each shape family compiles, seconds).
        With PackedPrompts, `idx` (1, L) holds several prompts or pieces and the logits are
        each one's last: (pieces, 1, vocab); with MixedStep, pieces and then decoding rows.
        Targets of -1 are ignored.
        """
        B, T = idx.shape
        if isinstance(start_pos, (PackedPrompts, MixedStep)):
            if cache is None or B != 1 or start_pos.positions.shape != (T,):
                raise ValueError("packed prompts need a cache and one (1, L) row of tokens")
            last = start_pos.end - 1
            pos = start_pos.positions
        elif isinstance(start_pos, torch.Tensor):
            if cache is None or start_pos.shape != (B,):
                raise ValueError("per-row positions need a cache and (B,) positions")
            start_pos = RowPositions(start_pos, attend_to, T)
            last = start_pos.end - 1
            pos = start_pos.positions  # (B, T)
            if T > 1:  # a padded tail may run past the window: its tokens are never read
                pos = pos.clamp(max=self.config.block_size - 1)
        else:
            last = start_pos + T - 1
            pos = torch.arange(start_pos, start_pos + T, dtype=torch.long, device=idx.device)
        if last >= self.config.block_size:
            raise ValueError(f"position {last} exceeds block_size={self.config.block_size}")
        x = self.transformer.wte(idx)
        rotation = None
        if self.config.position == "rope":  # (T, hd/2) or (B, 1, hd/2) -> broadcast over heads
            rotation = (self.rope_cos[pos].unsqueeze(-3), self.rope_sin[pos].unsqueeze(-3))
        else:
            x = x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)
        if compiled and isinstance(start_pos, RowPositions):
            caches = [cache.layer(i) for i in range(len(self.transformer.h))]
            x = compiled_decode_blocks()(self.transformer.h, x, caches, start_pos, rotation)
        else:
            for i, block in enumerate(self.transformer.h):
                layer_cache = cache.layer(i) if cache is not None else None
                x = block(x, layer_cache, start_pos, rotation)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1
            )
            return logits, loss
        if isinstance(start_pos, (PackedPrompts, MixedStep)):
            x = x[0, start_pos.last, None]  # (prompts, 1, C)
        elif last_logits_only:
            x = x[:, -1:, :]
        return self.lm_head(x), None

    @torch.no_grad()
    def use_decode_layout(self) -> GPT:
        """Lay every matmul weight out for CPU inference (same values), for serving only:
        training keeps row-major. Call it last: .to() moves no packed weight.

        Where oneDNN runs, each nn.Linear becomes a PackedLinear, its weight blocked once
        for oneDNN's GEMM (model/packed_linear.py; the tied head gets a packed copy). Else
        each weight is stored column-major: F.linear computes x @ W.T, and with W.T
        contiguous CPU GEMV kernels stream it faster at small batch (GPT-2 124M decode: 28
        -> 35 tokens/s on 2 cores, bench/bench_generate.py). INT8 models have their own
        kernels and are left as they are.
        """
        if can_pack(self.transformer.ln_f.weight):
            pack_linears(self)
            return self
        tied = self.config.tie_embeddings
        for module in self.modules():
            if isinstance(module, nn.Linear) and not (tied and module is self.lm_head):
                module.weight.data = module.weight.data.t().contiguous().t()
        if tied and isinstance(self.transformer.wte, nn.Embedding):  # INT8 has its own
            wte = self.transformer.wte.weight  # also the tied output head
            wte.data = wte.data.t().contiguous().t()
        return self

    def crop_block_size(self, block_size: int) -> None:
        """Shrink the context window (e.g. load GPT-2's 1024 and train at 256)."""
        if not 1 <= block_size <= self.config.block_size:
            raise ValueError(
                f"block_size must be in [1, {self.config.block_size}], got {block_size}"
            )
        self.config.block_size = block_size
        if "wpe" in self.transformer:
            wpe = self.transformer.wpe
            wpe.weight = nn.Parameter(wpe.weight.detach()[:block_size].clone())
            wpe.num_embeddings = block_size
        self.reset_rope()

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_tokens: Iterable[int] = (),
        seed: int | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Continue each row of `idx` (batch, T) by up to max_new_tokens tokens.

        A row ends at its first stop token (kept in the output); rows that end early are padded
        with that token until every row has ended or max_new_tokens are made. Positions past
        block_size slide the window, recomputing it (as nanoGPT's sample.py always does).
        """
        block_size = self.config.block_size
        batch, prompt_len = idx.shape
        stops = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=idx.device)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=idx.device).manual_seed(seed)
        out = torch.empty(batch, prompt_len + max_new_tokens, dtype=torch.long, device=idx.device)
        out[:, :prompt_len] = idx
        length = prompt_len
        finished = torch.zeros(batch, dtype=torch.bool, device=idx.device)
        cache = None
        if use_cache:
            device, dtype = self.param_device_dtype
            cache = KVCache(self.config, batch, prompt_len + max_new_tokens, dtype, device)
        cached = 0  # positions of `out` whose keys/values are in the cache
        for _ in range(max_new_tokens):
            if cache is not None and length <= cache.max_len:
                logits, _ = self(
                    out[:, cached:length], cache=cache, start_pos=cached, last_logits_only=True
                )
                cached = length
            else:
                window = out[:, max(0, length - block_size) : length]
                logits, _ = self(window, last_logits_only=True)
            # Padded vocabulary rows are not tokens: never sample them.
            logits = logits[:, -1, : self.config.vocab_size]
            token = sample_next_token(logits, temperature, top_k, top_p, generator)
            if stops.numel():
                token = torch.where(finished, out[:, length - 1], token)
                finished |= torch.isin(token, stops)
            out[:, length] = token
            length += 1
            if stops.numel() and bool(finished.all()):
                break
        return out[:, :length]
