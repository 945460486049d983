"""The real model, decoding: SmolLM2-135M-Instruct in raygpt (fp32 and INT8) beside
transformers' `generate` on the same weights, in one run, at batch 1 and batch 8; and the
INT8 model's val loss beside fp32's on stdlib code.

Every decoder runs greedily from the same code prompt for the same number of new tokens
(transformers with its KV cache, raygpt with its own): raygpt's `generate`, and its
continuous-batching engine as the service runs it (decode steps compiled). Warm-up runs and
compilation are excluded, the median of the repeats is reported.

    python bench/bench_pretrained.py                       # CPU, the machine's threads
    python bench/bench_pretrained.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from raygpt.checkpoint import load_model
from raygpt.checkpoint.pretrained import provision, source_file
from raygpt.cli import JobParser
from raygpt.data.corpus import resolve_inputs
from raygpt.data.shards import cut_windows
from raygpt.inference.engine import GenerationEngine, GenerationRequest
from raygpt.inference.load import checkpoint_tokenizer, load_for_inference
from raygpt.model.int8 import quantize_model
from raygpt.release.evaluation import mean_loss

NAME = "smollm2-135m-instruct"
PROMPT = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    fn()  # warm-up: allocator, thread pool, compiled INT8 kernels
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def engine_decoder(model, tokenizer, new_tokens: int, compiled: bool = True):
    """Decode every row of `ids` as its own request, all batched by one engine."""
    engines: dict[int, GenerationEngine] = {}

    def decode(ids: torch.Tensor) -> torch.Tensor:
        batch = ids.shape[0]
        if batch not in engines:  # one engine (and KV cache) per batch size, kept warm
            engines[batch] = GenerationEngine(
                model, tokenizer, max_slots=batch, max_context=1024, compile_decode=compiled
            )
        engine = engines[batch]
        tokens: dict[int, list[int]] = {row: [] for row in range(batch)}
        done: set[int] = set()
        for row, prompt in enumerate(ids.tolist()):
            request = GenerationRequest(tuple(prompt), new_tokens, temperature=0, stop_at_eot=False)

            def collect(update, row=row):
                tokens[row].extend(update.token_ids)
                if update.finish_reason:
                    done.add(row)

            engine.submit(request, collect)
        while len(done) < batch:
            engine.step()
        new = torch.tensor([tokens[row] for row in range(batch)], device=ids.device)
        return torch.cat([ids, new], dim=1)

    return decode


def main() -> None:
    parser = JobParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--windows", type=int, default=32, help="val windows of 256 tokens")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    from transformers import AutoModelForCausalLM  # a benchmark-only dependency (dev extra)

    folder = provision(NAME)
    ours, meta = load_for_inference(folder, device)
    ours = ours.to(dtype)
    int8, _ = load_model(folder, device)
    int8 = quantize_model(int8)
    tokenizer = checkpoint_tokenizer(meta)
    gguf = source_file(NAME)
    theirs = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    theirs = theirs.to(device).eval()
    prompt = tokenizer.encode(PROMPT)

    decoders = {
        f"transformers generate ({args.dtype})": lambda ids: theirs.generate(
            ids, max_new_tokens=args.new_tokens, do_sample=False, min_new_tokens=args.new_tokens
        ),
        f"raygpt ({args.dtype})": lambda ids: ours.generate(ids, args.new_tokens, temperature=0),
        "raygpt INT8": lambda ids: int8.generate(ids, args.new_tokens, temperature=0),
        f"raygpt engine ({args.dtype}, compiled)": engine_decoder(ours, tokenizer, args.new_tokens),
        "raygpt engine INT8 (compiled)": engine_decoder(int8, tokenizer, args.new_tokens),
    }
    batches = [int(b) for b in args.batches.split(",")]
    rates: dict[str, dict[int, float]] = {name: {} for name in decoders}
    outputs: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for batch in batches:
            ids = torch.tensor([prompt] * batch, device=device)
            for name, decode in decoders.items():
                seconds, out = timed(lambda d=decode, i=ids: d(i), args.repeats)
                rates[name][batch] = batch * args.new_tokens / seconds
                if batch == 1:
                    outputs[name] = out[0, len(prompt) :].cpu()

    base = f"raygpt ({args.dtype})"
    reference = next(iter(decoders))
    print(
        f"\nSmolLM2-135M-Instruct ({ours.num_params(non_embedding=False) / 1e6:.1f}M), "
        f"{args.new_tokens} new tokens, greedy, {args.device} ({platform.processor() or platform.machine()}), "
        f"{args.threads} threads, torch {torch.__version__}"
    )
    header = f"{'decoder':34}" + "".join(f"{'tok/s b' + str(b):>12}" for b in batches)
    header += f"{'vs transformers b1':>20}{'same tokens':>13}"
    print(header)
    for name in decoders:
        line = f"{name:34}" + "".join(f"{rates[name][b]:12.1f}" for b in batches)
        same = torch.equal(outputs[name], outputs[reference])
        line += f"{rates[name][1] / rates[reference][1]:19.2f}x{'yes' if same else 'no':>13}"
        print(line)
    served = f"raygpt engine ({args.dtype}, compiled)", "raygpt engine INT8 (compiled)"
    for label, (fp, q) in (("generate", (base, "raygpt INT8")), ("engine, as served", served)):
        print(
            f"INT8 vs raygpt {args.dtype} ({label}): "
            + ", ".join(f"b{b} {rates[q][b] / rates[fp][b]:.2f}x" for b in batches)
        )

    files = resolve_inputs(["stdlib"], include=["*/json/*.py", "*/email/*.py"]).files
    stream = np.concatenate([tokenizer.encode_array(Path(f).read_text()) for f in files])
    windows = cut_windows(stream, 256)[: args.windows]
    with torch.no_grad():
        fp32_model = ours.float()
        losses = {"fp32": mean_loss(fp32_model, windows), "INT8": mean_loss(int8, windows)}
    change = (losses["INT8"] - losses["fp32"]) / losses["fp32"]
    print(
        f"val loss on {len(windows)} windows of 256 stdlib tokens: fp32 {losses['fp32']:.4f}, "
        f"INT8 {losses['INT8']:.4f} ({change:+.2%})"
    )


if __name__ == "__main__":
    main()
