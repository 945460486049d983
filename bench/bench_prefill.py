"""Prompts joining decoding rows: chunked prefill budgets and mixed steps side by side, one run.

The engine prefills at most `max_prefill_tokens` prompt tokens a step; a longer prompt is
prefilled in pieces over several steps while the other rows keep decoding, and a step that
prefills runs its prefill and the other rows' decode as one forward pass (MixedStep) unless
told to run them as two. This benchmark starts `--rows` requests decoding, then submits
`--arrivals` prompts of `--long-prompt` tokens, one before each step (a burst reaching the
engine as requests do over HTTP), and times every engine step until the last of them has
its first token, once per budget and step kind: budget `whole` (a prompt in one pass,
which is what the engine did before chunked prefill) and smaller ones; steps `mixed` and
`two` (two passes, what it did before MixedStep). It reports the joining prompts' mean time
to first token, the longest gap the decoding rows saw between two tokens (the stall), and
their tokens/s over that time; the median of `--repeats` runs, after one warm-up run each.

    python bench/bench_prefill.py                          # GPT-2 124M shape, random weights
    python bench/bench_prefill.py --checkpoint .cache/models/smollm2-135m-instruct --threads 2
    python bench/bench_prefill.py --checkpoint .cache/models/smollm2-135m-instruct \
        --quantize none --long-prompt 32 --arrivals 8 --rows 16 --budgets 512
"""

from __future__ import annotations

import copy
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_quantize import fp32_model  # bench/ is on the path of its scripts

from raygpt.cli import JobParser
from raygpt.inference.engine import GenerationEngine, GenerationRequest, GenerationUpdate
from raygpt.model.int8 import quantize_model


def join_run(
    engine: GenerationEngine, rows: int, prompt_tokens: int, arrivals: int, seed: int
) -> dict:
    """Rows decoding, then `arrivals` prompts, one submitted before each step: (their mean
    TTFT, the rows' longest gap, their tok/s, engine steps to the last first token)."""
    vocab = engine.model.config.vocab_size
    random = torch.Generator().manual_seed(seed)
    ids = []
    for prompt in torch.randint(0, vocab, (rows, 16), generator=random).tolist():
        request = GenerationRequest(tuple(prompt), 10_000, temperature=0, stop_at_eot=False)
        ids.append(engine.submit(request, lambda u: None))
    for _ in range(3):  # admitted, and decoding
        engine.step()
    joining = torch.randint(0, vocab, (arrivals, prompt_tokens), generator=random).tolist()
    submitted: list[float] = []
    first: dict[int, float] = {}

    def on_first(i: int) -> Callable[[GenerationUpdate], None]:
        return lambda u: first.setdefault(i, time.perf_counter())

    steps, step_times = 0, []
    while len(first) < arrivals:
        if joining:
            request = GenerationRequest(tuple(joining.pop(0)), 1, temperature=0, stop_at_eot=False)
            submitted.append(time.perf_counter())
            engine.submit(request, on_first(len(submitted) - 1))
        began = time.perf_counter()
        engine.step()
        step_times.append(time.perf_counter() - began)
        steps += 1
    for request_id in ids:
        engine.cancel(request_id)
    while engine.stats().active:
        engine.step()
    return {
        "ttft": statistics.mean(first[i] - at for i, at in enumerate(submitted)),
        "stall": max(step_times),
        "rows_rate": rows * steps / sum(step_times),  # each decoding row: a token a step
        "steps": steps,
    }


def main() -> None:
    parser = JobParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a real model (default: random weights)")
    parser.add_argument("--n-layer", type=int, default=12)
    parser.add_argument("--n-head", type=int, default=12)
    parser.add_argument("--n-embd", type=int, default=768)
    parser.add_argument("--quantize", choices=["int8", "none"], default="int8")
    parser.add_argument("--rows", type=int, default=8, help="requests decoding meanwhile")
    parser.add_argument("--long-prompt", type=int, default=768, help="tokens a joining prompt")
    parser.add_argument("--arrivals", type=int, default=1, help="prompts joining, one a step")
    parser.add_argument("--steps", default="mixed,two", help="step kinds: mixed, two passes")
    parser.add_argument("--budgets", default="whole,256,64", help="max_prefill_tokens values")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = fp32_model(args)
    if args.quantize == "int8":
        model = quantize_model(copy.deepcopy(model))  # as the service does at load
    else:
        model.use_decode_layout()
    budgets = [args.long_prompt if b == "whole" else int(b) for b in args.budgets.split(",")]
    context = args.long_prompt + 64
    kinds = args.steps.split(",")
    results = []
    for budget in budgets:
        for kind in kinds:
            engine = GenerationEngine(
                model,
                tokenizer,
                max_slots=args.rows + args.arrivals,
                max_context=context,
                compile_decode=True,
                max_prefill_tokens=budget,
                mixed_steps=kind == "mixed",
            )
            runs = [
                join_run(engine, args.rows, args.long_prompt, args.arrivals, seed)
                for seed in range(args.repeats + 1)
            ][1:]  # the first compiles the decode steps
            median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            results.append((budget, kind, median))
    config = model.config
    name = Path(args.checkpoint).name if args.checkpoint else "random weights"
    joining = f"one {args.long_prompt}-token prompt joins"
    if args.arrivals > 1:
        joining = f"{args.arrivals} prompts of {args.long_prompt} tokens join, one a step"
    print(
        f"\n{name}: GPT {config.n_layer}L/{config.n_head}H/{config.n_embd}, "
        f"{'INT8' if args.quantize == 'int8' else 'fp32'}, {args.rows} rows decoding, "
        f"{joining}; {args.threads} threads, "
        f"CPU {platform.machine()}, torch {torch.__version__}; median of {args.repeats}"
    )
    print(
        f"{'prefill budget':>16} {'passes':>6} {'steps':>7} {'TTFT joining':>13} "
        f"{'rows stall':>11} {'rows tok/s':>11}"
    )
    for budget, kind, r in results:
        label = f"{budget} (whole)" if budget == args.long_prompt else str(budget)
        print(
            f"{label:>16} {kind:>6} {r['steps']:7.0f} {r['ttft'] * 1000:11.0f}ms "
            f"{r['stall'] * 1000:9.0f}ms {r['rows_rate']:11.1f}"
        )
    by = {(budget, kind): r for budget, kind, r in results}
    for budget in budgets:
        if {"mixed", "two"} <= set(kinds):
            print(
                compare(
                    f"budget {budget}, mixed vs two passes", by[budget, "mixed"], by[budget, "two"]
                )
            )
    if len(budgets) > 1:
        for budget in budgets[1:]:
            for kind in kinds:
                print(
                    compare(
                        f"{kind} steps, budget {budget} vs whole",
                        by[budget, kind],
                        by[budgets[0], kind],
                    )
                )


def compare(label: str, r: dict, base: dict) -> str:
    return (
        f"{label}: stall {r['stall'] / base['stall']:.2f}x, TTFT {r['ttft'] / base['ttft']:.2f}x, "
        f"rows tok/s {r['rows_rate'] / base['rows_rate']:.2f}x"
    )


if __name__ == "__main__":
    main()
