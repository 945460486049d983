"""GPT-2's block against the modern one, from scratch, at equal size, steps and data.

Both models have the same non-embedding parameters (the modern block's SwiGLU width is chosen
for it), see the same batches of the same byte-level stdlib shards in the same order, with
the same optimizer and schedule; the table gives each one's val loss on the same val windows
and its training speed (median step after warm-up).

    python bench/bench_blocks.py                 # 4 layers, 256 wide, block 256, 300 steps
    python bench/bench_blocks.py --steps 1000
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from raygpt.cli import JobParser
from raygpt.config import ModelConfig, TrainConfig
from raygpt.data.shards import cut_windows, split_tokens
from raygpt.model import GPT
from raygpt.release.evaluation import mean_loss
from raygpt.train.step import choose_precision, configure_optimizer, learning_rate, train_step


def modern_width(config: ModelConfig, kv_heads: int) -> int:
    """SwiGLU's inner width that gives the modern block GPT-2's parameter count:
    GPT-2: 4d² (attention) + 8d² (MLP); modern: 2d² + 2d·kv·hd (GQA) + 3d·h (SwiGLU)."""
    d = config.n_embd
    attention = 2 * d * d + 2 * d * kv_heads * config.head_dim
    return (12 * d * d - attention) // (3 * d)


def run(config: ModelConfig, train: TrainConfig, windows, val, steps: int, seed: int):
    torch.manual_seed(seed)
    model = GPT(config)
    optimizer = configure_optimizer(model, train, "cpu")
    precision = choose_precision("float32", torch.device("cpu"))
    picks = np.random.default_rng(seed).integers(0, len(windows), (steps, train.batch_size))
    times = []
    for step in range(steps):
        batch = torch.from_numpy(windows[picks[step]].astype(np.int64))
        start = time.perf_counter()
        train_step(
            model,
            optimizer,
            [(batch[:, :-1], batch[:, 1:])],
            learning_rate(step, train),
            train.grad_clip,
            precision,
        )
        times.append(time.perf_counter() - start)
    model.eval()
    with torch.no_grad():
        loss = mean_loss(model, val)
    step_time = statistics.median(times[5:])
    return model, loss, train.batch_size * config.block_size / step_time, step_time


def main() -> None:
    parser = JobParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/stdlib_byte", help="byte-level shards")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-head", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--val-windows", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = Path(args.data)
    windows = cut_windows(split_tokens(data, "train"), args.block_size)
    val = cut_windows(split_tokens(data, "val"), args.block_size)[: args.val_windows]
    gpt2 = ModelConfig(
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        block_size=args.block_size,
        vocab_size=257,
        bias=False,
    )
    modern = dataclasses.replace(
        gpt2,
        position="rope",
        norm="rmsnorm",
        mlp="swiglu",
        n_kv_head=args.kv_heads,
        mlp_hidden=modern_width(gpt2, args.kv_heads),
    )
    train = TrainConfig(
        max_iters=args.steps,
        batch_size=args.batch_size,
        learning_rate=2e-3,
        min_lr=2e-4,
        warmup_iters=20,
        dtype="float32",
    )
    results = {
        "GPT-2 (learned, LayerNorm, GELU, MHA)": run(gpt2, train, windows, val, args.steps, 0),
        f"modern (RoPE, RMSNorm, SwiGLU, GQA {args.n_head}/{args.kv_heads})": run(
            modern, train, windows, val, args.steps, 0
        ),
    }
    print(
        f"\n{args.n_layer}L/{args.n_head}H/{args.n_embd}, block {args.block_size}, batch "
        f"{args.batch_size}, {args.steps} steps, byte-level stdlib ({data}), CPU "
        f"({platform.processor() or platform.machine()}), {args.threads} threads, "
        f"torch {torch.__version__}"
    )
    print(f"{'block':46}{'params':>10}{'val loss':>10}{'tok/s':>10}{'ms/step':>9}")
    for name, (model, loss, rate, step_time) in results.items():
        print(
            f"{name:46}{model.num_params() / 1e6:9.2f}M{loss:10.4f}{rate:10,.0f}"
            f"{step_time * 1000:9.0f}"
        )
    (gpt2_loss, modern_loss) = (r[1] for r in results.values())
    print(f"modern vs GPT-2: val loss {(modern_loss - gpt2_loss) / gpt2_loss:+.2%}")


if __name__ == "__main__":
    main()
