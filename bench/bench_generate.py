"""Decode speed at batch 1 on CPU: raygpt's KV cache vs full recompute vs transformers.

Full recompute is how nanoGPT's sample.py decodes (the whole context re-run for every new
token); transformers' `generate` runs the same weights, exported with raygpt's HF exporter.
All three decode greedily from the same prompt, so they must produce the same tokens.

    python bench/bench_generate.py                 # GPT-2 124M shape, 256 new tokens
    python bench/bench_generate.py --n-layer 6 --n-embd 384 --n-head 6 --new-tokens 128
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time

import torch

from raygpt.checkpoint import CheckpointMeta
from raygpt.checkpoint.hf_gpt2 import export_hf_gpt2
from raygpt.cli import JobParser
from raygpt.config import ModelConfig
from raygpt.model import GPT


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = JobParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-layer", type=int, default=12)
    parser.add_argument("--n-head", type=int, default=12)
    parser.add_argument("--n-embd", type=int, default=768)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="for the cached decoders")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--row-major", action="store_true", help="skip use_decode_layout()")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import GPT2LMHeadModel  # a benchmark-only dependency (dev extra)

    config = ModelConfig(
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        block_size=args.block_size,
        activation="gelu_tanh",
    )
    torch.manual_seed(0)
    model = GPT(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        export_hf_gpt2(model, CheckpointMeta(model=config), tmp)
        hf = GPT2LMHeadModel.from_pretrained(tmp).eval()
    if not args.row_major:
        model.use_decode_layout()  # what jobs/sample.py and serving do on CPU
    prompt = torch.randint(0, config.vocab_size, (1, args.prompt_tokens))
    n = args.new_tokens

    def raygpt_cached():
        return model.generate(prompt, n, temperature=0)

    def raygpt_recompute():
        return model.generate(prompt, n, temperature=0, use_cache=False)

    def transformers_generate():
        with torch.no_grad():
            return hf.generate(
                prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
            )

    for fn in (raygpt_cached, transformers_generate):  # warm-up: allocator, thread pools
        fn()
    rows = [
        ("raygpt KV cache", *timed(raygpt_cached, args.repeats)),
        ("transformers generate", *timed(transformers_generate, args.repeats)),
        ("raygpt full recompute (nanoGPT)", *timed(raygpt_recompute, 1)),
    ]
    reference = rows[0][2]
    cached_rate = n / rows[0][1]
    print(
        f"\nGPT {config.n_layer}L/{config.n_head}H/{config.n_embd}, "
        f"{model.num_params() / 1e6:.1f}M params, fp32, batch 1, prompt {args.prompt_tokens}, "
        f"{n} new tokens, {args.threads} threads, {platform.processor() or platform.machine()}, "
        f"{'row-major' if args.row_major else 'decode layout'}"
    )
    print(f"{'decoder':34} {'seconds':>8} {'tokens/s':>9} {'KV cache is':>12} {'same tokens':>12}")
    for name, seconds, out in rows:
        rate = n / seconds
        same = "yes" if torch.equal(out, reference) else "NO"
        print(f"{name:34} {seconds:8.2f} {rate:9.1f} {cached_rate / rate:11.2f}x {same:>12}")


if __name__ == "__main__":
    main()
