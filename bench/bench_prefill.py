"""A long prompt joins rows that are decoding: chunked prefill budgets side by side, one run.

The engine prefills at most `max_prefill_tokens` prompt tokens a step; a longer prompt is
prefilled in pieces over several steps while the other rows keep decoding. This benchmark
starts `--rows` requests decoding, then submits one `--long-prompt`-token prompt, and
times every engine step until that prompt's first token, once per budget: `whole` (the
prompt in one pass, which is what the engine did before chunked prefill) and smaller ones.
It reports the long prompt's time to first token, the longest gap the decoding rows saw
between two tokens (the stall), and their tokens/s over that time; the median of
`--repeats` runs, after one warm-up run per budget.

    python bench/bench_prefill.py                          # GPT-2 124M shape, random weights
    python bench/bench_prefill.py --checkpoint .cache/models/smollm2-135m-instruct --threads 2
"""

from __future__ import annotations

import copy
import platform
import statistics
import time
from pathlib import Path

import torch
from bench_quantize import fp32_model  # bench/ is on the path of its scripts

from raygpt.cli import JobParser
from raygpt.inference.engine import GenerationEngine, GenerationRequest, GenerationUpdate
from raygpt.model.int8 import quantize_model


def long_prompt_run(engine: GenerationEngine, rows: int, prompt_tokens: int, seed: int) -> dict:
    """Rows decoding, then one long prompt: (its TTFT, the rows' longest gap, their tok/s,
    engine steps to its first token)."""
    vocab = engine.model.config.vocab_size
    random = torch.Generator().manual_seed(seed)
    finished: list[GenerationUpdate] = []
    ids = []
    for prompt in torch.randint(0, vocab, (rows, 16), generator=random).tolist():
        request = GenerationRequest(tuple(prompt), 10_000, temperature=0, stop_at_eot=False)
        ids.append(engine.submit(request, lambda u: u.finish_reason and finished.append(u)))
    for _ in range(3):  # admitted, and decoding
        engine.step()
    long_prompt = torch.randint(0, vocab, (prompt_tokens,), generator=random).tolist()
    first: list[float] = []
    request = GenerationRequest(tuple(long_prompt), 1, temperature=0, stop_at_eot=False)
    start = time.perf_counter()
    engine.submit(request, lambda u: not first and first.append(time.perf_counter()))
    steps, step_times = 0, []
    while not first:
        began = time.perf_counter()
        engine.step()
        step_times.append(time.perf_counter() - began)
        steps += 1
    for request_id in ids:
        engine.cancel(request_id)
    while engine.stats().active:
        engine.step()
    elapsed = first[0] - start
    return {
        "ttft": elapsed,
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
    parser.add_argument("--long-prompt", type=int, default=768, help="tokens")
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
    results = []
    for budget in budgets:
        engine = GenerationEngine(
            model,
            tokenizer,
            max_slots=args.rows + 1,
            max_context=context,
            compile_decode=True,
            max_prefill_tokens=budget,
        )
        runs = [
            long_prompt_run(engine, args.rows, args.long_prompt, seed)
            for seed in range(args.repeats + 1)
        ][1:]  # the first compiles the decode steps
        results.append((budget, {key: statistics.median(r[key] for r in runs) for key in runs[0]}))
    config = model.config
    name = Path(args.checkpoint).name if args.checkpoint else "random weights"
    print(
        f"\n{name}: GPT {config.n_layer}L/{config.n_head}H/{config.n_embd}, "
        f"{'INT8' if args.quantize == 'int8' else 'fp32'}, {args.rows} rows decoding, "
        f"one {args.long_prompt}-token prompt joins; {args.threads} threads, "
        f"CPU {platform.machine()}, torch {torch.__version__}; median of {args.repeats}"
    )
    print(
        f"{'prefill budget':>16} {'steps':>6} {'TTFT long':>10} {'rows stall':>11} "
        f"{'rows tok/s':>11}"
    )
    for budget, r in results:
        label = f"{budget} (whole)" if budget == args.long_prompt else str(budget)
        print(
            f"{label:>16} {r['steps']:6.0f} {r['ttft'] * 1000:8.0f}ms "
            f"{r['stall'] * 1000:9.0f}ms {r['rows_rate']:11.1f}"
        )
    whole = results[0][1]
    for budget, r in results[1:]:
        print(
            f"budget {budget} vs whole: stall {r['stall'] / whole['stall']:.2f}x, "
            f"TTFT {r['ttft'] / whole['ttft']:.2f}x, rows tok/s "
            f"{r['rows_rate'] / whole['rows_rate']:.2f}x"
        )


if __name__ == "__main__":
    main()
