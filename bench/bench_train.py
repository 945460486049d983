"""Ray's training overhead: the same model and step as a bare PyTorch loop and through Ray Train.

(a) bare: one process, windows cut from the shards with numpy, raygpt.train.step.train_step;
    run twice: alone, and beside an idle local Ray (Ray's daemons share the machine's cores).
(b) Ray: jobs/train.py's path: a TorchTrainer worker fed by the Ray Data window stream,
    same step function, same threads.
Both report the median time of a step after warm-up, excluding start-up and evaluation.

    python bench/bench_train.py                       # CPU: 6L/6H/384, block 256, byte tokens
    python bench/bench_train.py --gpu --preset gpt2   # GPT-2 124M, block 1024, bf16 (GPU)
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from raygpt.cli import JobParser
from raygpt.config import experiment_from_dict
from raygpt.data.shards import cut_windows, read_manifest, split_tokens
from raygpt.model import GPT
from raygpt.train.run_log import read_metrics
from raygpt.train.step import (
    choose_precision,
    configure_optimizer,
    flops_per_token,
    learning_rate,
    model_flops_utilization,
    peak_flops,
    train_step,
)

PRESETS = {
    "cpu": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "bias": False},
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "bias": False},
}


def bare_loop(config, data_dir: Path, steps: int, device: torch.device) -> list[float]:
    train = config.train
    windows = cut_windows(split_tokens(data_dir, "train"), config.model.block_size)
    torch.manual_seed(train.seed)
    model = GPT(config.model).to(device)
    precision = choose_precision(train.dtype, device)
    optimizer = configure_optimizer(model, train, device.type)
    step_model = torch.compile(model) if train.compile else model
    rng = np.random.default_rng(0)
    times = []
    per_step = train.batch_size * train.gradient_accumulation_steps
    for step in range(steps):
        picks = rng.integers(0, len(windows), per_step)
        batch = torch.from_numpy(windows[picks].astype(np.int64)).to(device)
        micro = [(chunk[:, :-1], chunk[:, 1:]) for chunk in batch.split(train.batch_size)]
        start = time.perf_counter()
        train_step(
            step_model, optimizer, micro, learning_rate(step, train), train.grad_clip, precision
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def ray_train(config, data_dir: Path) -> list[float]:
    from raygpt.train.launch import plan_training, run_training

    result = run_training(plan_training(config))
    records = [r for r in read_metrics(result.run_dir) if "ms_per_step" in r]
    interval = config.train.log_interval  # each record: the mean of the steps since the last
    return [r["ms_per_step"] / 1000 for r in records for _ in range(interval)]


def bench_experiment(
    model: dict,
    data_dir: Path,
    run_dir: Path,
    steps: int,
    batch_size: int,
    gpu: bool,
    compile: bool,
    threads: int,
    grad_accum: int = 1,
    log_interval: int = 5,
):
    """The experiment both paths run: `steps` steps, evaluation only at the end (excluded)."""
    return experiment_from_dict(
        {
            "model": model,
            "data": {"dataset": str(data_dir), "tokenizer": read_manifest(data_dir).tokenizer},
            "train": {
                "out_dir": str(run_dir),
                "max_iters": steps,
                "batch_size": batch_size,
                "gradient_accumulation_steps": grad_accum,
                "eval_interval": steps,
                "eval_iters": 1,
                "log_interval": log_interval,
                "warmup_iters": 2,
                "dtype": "bfloat16" if gpu else "float32",
                "compile": compile,
                "shuffle_buffer": 1024,
            },
            "scaling": {
                "num_workers": 1,
                "use_gpu": gpu,
                "cpus_per_worker": threads,
                "torch_threads": threads,
            },
        }
    )


def main() -> None:
    parser = JobParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESETS, default="cpu")
    parser.add_argument("--data", default="data/stdlib_byte", help="prepared shards")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--log-interval", type=int, default=5, help="Ray path: steps per report")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    data_dir = Path(args.data)
    if not data_dir.exists():
        from raygpt.data.prepare import PrepareOptions, prepare_dataset
        from raygpt.ray_runtime import init_ray

        init_ray()
        prepare_dataset(PrepareOptions(out_dir=str(data_dir), tokenizer="byte"))
    manifest = read_manifest(data_dir)
    total = args.steps + args.warmup
    run_dir = Path(tempfile.mkdtemp(prefix="bench_train_")) / "run"
    config = bench_experiment(
        {**PRESETS[args.preset], "vocab_size": manifest.vocab_size},
        data_dir,
        run_dir,
        total,
        args.batch_size,
        args.gpu,
        args.compile,
        args.threads,
        args.grad_accum,
        args.log_interval,
    )
    device = torch.device("cuda" if args.gpu else "cpu")
    torch.set_num_threads(args.threads)
    bare = bare_loop(config, data_dir, total, device)[args.warmup :]
    from raygpt.ray_runtime import init_ray

    init_ray()  # the same loop again beside an idle Ray: what Ray's own processes cost
    time.sleep(5)
    beside = bare_loop(config, data_dir, total, device)[args.warmup :]
    ray = ray_train(config, data_dir)[args.warmup :]

    tokens = args.batch_size * args.grad_accum * config.model.block_size
    with torch.device("meta"):
        flops = flops_per_token(config.model, GPT(config.model).num_params())
    peak = peak_flops(device, "bfloat16" if args.gpu else "float32")
    name = torch.cuda.get_device_name() if args.gpu else platform.processor() or platform.machine()
    print(
        f"\n{args.preset}: {config.model.n_layer}L/{config.model.n_embd}, block {config.model.block_size}, "
        f"{tokens} tokens/step, {args.steps} timed steps, {name}, {args.threads} threads"
    )
    print(f"{'path':34} {'median ms/step':>15} {'tokens/s':>10} {'MFU':>6}")
    base = statistics.median(bare)
    rows = (
        ("bare PyTorch loop", bare),
        ("bare loop beside an idle Ray", beside),
        ("Ray Train + Ray Data stream", ray),
    )
    for label, times in rows:
        median = statistics.median(times)
        mfu = model_flops_utilization(tokens / median, flops, peak)
        mfu_text = "n/a" if mfu is None else f"{mfu * 100:.1f}%"
        print(f"{label:34} {median * 1000:15.1f} {tokens / median:10,.0f} {mfu_text:>6}")
    overhead = statistics.median(ray) / base - 1
    idle = statistics.median(beside) / base - 1
    print(
        f"Ray overhead: {overhead * 100:+.1f}% of step time ({idle * 100:+.1f}% from Ray's idle processes)"
    )


if __name__ == "__main__":
    main()
