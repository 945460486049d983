"""Dense vs mixture of experts at equal active parameters per token, same data, same steps.

    dense        every block's MLP n_embd -> 4 n_embd -> n_embd (GPT-2's)
    moe          8 experts of 2 n_embd each, top-2: a token goes through 4 n_embd of MLP,
                 as in the dense model, out of 16 n_embd held; balance loss on
                 (--balance-loss-weight, 0.01 as in train's default)
    moe-no-bal   the same mixture with the balance loss off (the z-loss stays)

Each run starts from the same seed and sees the same windows of the byte-level stdlib corpus
(configs/tiny_cpu.yaml's data) in the same order, in a bare PyTorch loop around
raygpt.train.step.train_step (what each Ray Train worker runs). It prints a table (val loss,
tokens/s, the experts' load at the end and at its worst) and draws the val loss and the
most loaded expert's share against the step. Tokens/s is timed after training, the trained
models taking turns step by step on one batch, so whatever else runs on the machine weighs
on each alike.

    python bench/bench_moe.py                                  # 400 steps each, as tiny_cpu
    python bench/bench_moe.py --steps 100 --plot docs/moe_loss.png
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from raygpt.cli import JobParser
from raygpt.config import ModelConfig, TrainConfig
from raygpt.data.shards import cut_windows, read_manifest, split_tokens, val_windows
from raygpt.model import GPT
from raygpt.model.moe import active_params
from raygpt.train.expert_load import ExpertLoad, load_range
from raygpt.train.step import (
    choose_precision,
    configure_optimizer,
    evaluate_loss,
    learning_rate,
    train_step,
)

N_EXPERT, TOP_K = 8, 2
BASE = dict(n_layer=4, n_head=4, n_embd=128, block_size=256, bias=False)  # configs/tiny_cpu.yaml
RUNS = {
    "dense": ({}, {}),
    "moe": ({"n_expert": N_EXPERT, "n_expert_per_token": TOP_K, "expert_hidden": 256}, {}),
    "moe-no-bal": (
        {"n_expert": N_EXPERT, "n_expert_per_token": TOP_K, "expert_hidden": 256},
        {"balance_loss_weight": 0.0},
    ),
}


def run(name: str, args, train_windows: np.ndarray, val: list, vocab: int) -> dict:
    model_changes, train_changes = RUNS[name]
    if name == "moe":
        train_changes = {"balance_loss_weight": args.balance_loss_weight}
    config = ModelConfig(**BASE, vocab_size=vocab, **model_changes)
    train = TrainConfig(
        max_iters=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        min_lr=args.lr / 10,
        warmup_iters=20,
        **train_changes,
    )
    torch.manual_seed(train.seed)
    model = GPT(config).train()
    experts = ExpertLoad.of(model, train)
    precision = choose_precision("float32", torch.device("cpu"))
    optimizer = configure_optimizer(model, train, "cpu")
    rng = np.random.default_rng(0)  # the same windows, in the same order, for every run
    history = []
    for step in range(1, args.steps + 1):
        picks = rng.integers(0, len(train_windows), args.batch_size)
        batch = torch.from_numpy(train_windows[picks].astype(np.int64))
        loss = train_step(
            model,
            optimizer,
            [(batch[:, :-1], batch[:, 1:])],
            learning_rate(step - 1, train),
            train.grad_clip,
            precision,
            experts=experts,
        )
        if step % args.log_interval == 0 or step == args.steps:
            record = {"step": step, "loss": loss}
            if experts is not None:
                record.update(experts.summary())
            if step % args.eval_interval == 0 or step == args.steps:
                record["val_loss"] = evaluate_loss(model, val, precision)[0] / len(val)
            history.append(record)
            print(f"  {name:11} {line(record)}", flush=True)
    non_embedding = model.num_params()
    return {
        "name": name,
        "history": history,
        "active": active_params(model, non_embedding),
        "total": non_embedding,
        "step": (model, optimizer, experts, train),
    }


def time_in_turns(results: list[dict], batch: torch.Tensor, rounds: int) -> None:
    """Median seconds of a training step for each model, the models taking turns."""
    precision = choose_precision("float32", torch.device("cpu"))
    seconds = {result["name"]: [] for result in results}
    for _ in range(rounds):
        for result in results:
            model, optimizer, experts, train = result["step"]
            start = time.perf_counter()
            micro = [(batch[:, :-1], batch[:, 1:])]
            train_step(model, optimizer, micro, train.min_lr, 1.0, precision, experts=experts)
            seconds[result["name"]].append(time.perf_counter() - start)
    for result in results:
        result["tokens_per_s"] = batch[:, 1:].numel() / statistics.median(seconds[result["name"]])


def line(record: dict) -> str:
    text = f"step {record['step']:>4} | loss {record['loss']:.4f}"
    if "val_loss" in record:
        text += f" | val {record['val_loss']:.4f}"
    if "experts" in record:
        low, high = worst(record)
        text += f" | balance {record['balance_loss']:.2f} | load {low:.2f}-{high:.2f}x uniform"
    return text


def worst(record: dict) -> tuple[float, float]:
    """The least and most loaded expert over every layer, as multiples of a uniform share."""
    ranges = [load_range(layer) for layer in record["experts"]]
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (losses, loads) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for result in results:
        history = result["history"]
        vals = [(r["step"], r["val_loss"]) for r in history if "val_loss" in r]
        line_ = losses.plot(*zip(*vals, strict=True), "o-", markersize=3, label=result["name"])
        if result["name"] != "dense":
            # a share of tokens: with top-2 an expert in every token's pair has 1.0
            steps = [r["step"] for r in history]
            high = [worst(r)[1] * TOP_K / N_EXPERT for r in history]
            low = [worst(r)[0] * TOP_K / N_EXPERT for r in history]
            color = line_[0].get_color()
            loads.plot(steps, high, color=color, label=f"{result['name']}: most loaded")
            loads.plot(steps, low, color=color, linestyle="--", label=f"{result['name']}: least")
    losses.set(xlabel="step", ylabel="val loss (nats/byte)", title="val loss")
    even = TOP_K / N_EXPERT
    loads.axhspan(even / 2, even * 2, color="grey", alpha=0.15, label="0.5x-2x an even share")
    loads.set(
        xlabel="step",
        ylabel="share of tokens routed to the expert",
        title="most and least loaded expert, over all layers",
        ylim=(0, 1.05),
    )
    for ax in (losses, loads):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def print_layers(result: dict) -> None:
    """Each sparse layer's load at the end: its least and most loaded expert (x an even
    share), the share of tokens its busiest expert takes, the load's entropy."""
    for layer in result["history"][-1]["experts"]:
        low, high = load_range(layer)
        tokens = max(layer["load"]) * TOP_K
        print(
            f"  {result['name']:11} layer {layer['layer']}: {low:.2f}-{high:.2f}x even, busiest "
            f"expert in {tokens:.0%} of tokens, entropy {layer['entropy']:.2f} "
            f"(even: {math.log(N_EXPERT):.2f})"
        )


def main() -> None:
    parser = JobParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/stdlib_byte", help="prepared byte-level shards")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--log-interval", type=int, default=10)
    parser.add_argument("--eval-interval", type=int, default=50)
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--balance-loss-weight", type=float, default=0.01, help="the moe run's")
    parser.add_argument("--timing-rounds", type=int, default=10)
    parser.add_argument("--runs", default=",".join(RUNS), help=f"some of {list(RUNS)}")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--plot", type=Path, default=None, help="where to draw the PNG")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = Path(args.data)
    if not data_dir.exists():
        from raygpt.data.prepare import PrepareOptions, prepare_dataset
        from raygpt.ray_runtime import init_ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        init_ray()
        prepare_dataset(PrepareOptions(out_dir=str(data_dir), tokenizer="byte"))
    vocab = read_manifest(data_dir).vocab_size
    block = BASE["block_size"]
    train_windows = cut_windows(split_tokens(data_dir, "train"), block)
    windows = val_windows(data_dir, block, args.eval_batches * args.batch_size)
    val = [
        (torch.from_numpy(w[:, :-1].astype(np.int64)), torch.from_numpy(w[:, 1:].astype(np.int64)))
        for w in np.split(windows, args.eval_batches)
    ]
    results = [run(name, args, train_windows, val, vocab) for name in args.runs.split(",")]
    batch = torch.from_numpy(train_windows[: args.batch_size].astype(np.int64))
    time_in_turns(results, batch, args.timing_rounds)

    cpu = platform.processor() or platform.machine()
    print(
        f"\n{BASE['n_layer']}L/{BASE['n_embd']}, block {block}, byte tokens, {args.steps} steps of "
        f"{args.batch_size} windows, lr {args.lr:g}, {cpu}, {args.threads} threads"
    )
    print(
        f"{'run':11} {'active':>8} {'total':>8} {'val loss':>9} {'tokens/s':>9} "
        f"{'load at end':>13} {'worst load':>11}"
    )
    dense = next((r for r in results if r["name"] == "dense"), None)
    for result in results:
        history = result["history"]
        val_loss = [r["val_loss"] for r in history if "val_loss" in r][-1]
        end = worst_peak = "-"
        if "experts" in history[-1]:
            low, high = worst(history[-1])
            end = f"{low:.2f}-{high:.2f}x"
            worst_peak = f"{max(worst(r)[1] for r in history):.2f}x"
        print(
            f"{result['name']:11} {result['active'] / 1e6:7.2f}M {result['total'] / 1e6:7.2f}M "
            f"{val_loss:9.4f} {result['tokens_per_s']:9,.0f} {end:>13} {worst_peak:>11}"
        )
    for result in results:
        if "experts" in result["history"][-1]:
            print_layers(result)
    if dense is not None:
        for result in results:
            if result is not dense:
                speed = result["tokens_per_s"] / dense["tokens_per_s"]
                print(f"{result['name']} vs dense: {speed:.2f}x the tokens/s")
    if args.plot is not None:
        title = f"dense vs {N_EXPERT} experts top-{TOP_K} at equal active parameters, {args.threads} CPU threads"
        plot(results, args.plot, title)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
