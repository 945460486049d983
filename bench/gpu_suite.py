"""Every GPU number raygpt reports, in one run on one GPU, as markdown tables.

    train    tokens/s and MFU of GPT-2 124M (block 1024, bf16, compiled, fused AdamW): a bare
             PyTorch loop vs the same step through Ray Train + Ray Data (the overhead ratio),
             and SmolLM2-135M at its fine-tuning config's batch
    decode   decode tokens/s at batch 1, 8 and 32, GPT-2 124M and SmolLM2-135M: raygpt's
             engine in bf16 and INT8 (static decode steps, CUDA graphs) and transformers'
             generate on the same weights, beside batch 1's memory-bandwidth roofline
    engine   the engine in process with 1, 8, 32 and 64 concurrent requests: tokens/s, TTFT

Random weights of each model's shape: speed does not depend on the values, and nothing has to
be carried but the code. A part whose dependency is missing (Ray, torchao, transformers) says
so and the others run. `--smoke` runs every part at toy size on the CPU (CI runs it).

    bash bench/gpu_suite.sh               # on a GPU machine
    bash bench/gpu_suite.sh --smoke       # anywhere
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from raygpt.config import ModelConfig
from raygpt.model import GPT

GPT2_124M = ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257)
SMOLLM2_135M = ModelConfig(
    n_layer=30, n_head=9, n_embd=576, block_size=8192, vocab_size=49152, bias=False,
    n_kv_head=3, position="rope", rope_theta=1e5, norm="rmsnorm", mlp="swiglu",
    mlp_hidden=1536, tie_embeddings=True,
)  # fmt: skip
# Toy shapes of the same two layouts for --smoke.
TOY_GPT2 = dataclasses.replace(GPT2_124M, n_layer=2, n_head=2, n_embd=64, block_size=128)
TOY_SMOLLM2 = dataclasses.replace(
    SMOLLM2_135M, n_layer=2, n_head=3, n_kv_head=1, n_embd=96, mlp_hidden=192, block_size=256
)

# Dense memory bandwidth by name fragment (datasheets), for the batch-1 roofline when the copy
# measurement is not wanted; the suite measures it on the card it runs on.
HBM_BYTES_PER_S = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}


@dataclass(frozen=True)
class Sizes:
    gpt2: ModelConfig
    smollm2: ModelConfig
    train_block: int
    train_batch: int
    smollm2_batch: int  # configs/smollm2_135m_code.yaml's per-GPU micro-batch
    train_steps: int
    warmup_steps: int
    decode_batches: tuple[int, ...]
    new_tokens: int
    engine_streams: tuple[int, ...]
    prompt_tokens: int
    compile: bool


FULL = Sizes(
    GPT2_124M, SMOLLM2_135M, 1024, 16, 16, 20, 5, (1, 8, 32), 128, (1, 8, 32, 64), 128, True
)
SMOKE = Sizes(TOY_GPT2, TOY_SMOLLM2, 64, 4, 4, 3, 1, (1, 8), 8, (1, 8), 16, False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU")
    parser.add_argument("--parts", default="train,decode,engine")
    parser.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_suite")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else FULL
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.smoke:
        raise SystemExit("no GPU here: run with --smoke for the CPU check of every part")
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out / "gpu_suite.md")
    report.line(f"# raygpt GPU suite{' (smoke, CPU)' if args.smoke else ''}\n")
    report.line(
        f"{machine(device)}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')}\n"
    )
    parts = {"train": train_part, "decode": decode_part, "engine": engine_part}
    failed = []
    for name in args.parts.split(","):
        started = time.perf_counter()
        try:
            parts[name](sizes, device, report)
        except Exception as err:  # one broken part must not hide the others' numbers
            report.line(f"**{name}: failed**: {type(err).__name__}: {err}\n")
            failed.append(name)
        report.line(f"_{name}: {time.perf_counter() - started:.0f} s_\n")
    print(f"\nwritten: {report.path}")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


class Report:
    """Markdown to the console and to a file, as it is made (a run cut short keeps its part)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text("")

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        with self.path.open("a") as f:
            f.write(text + "\n")

    def table(self, title: str, header: list[str], rows: list[list[str]], notes=()) -> None:
        self.line(f"## {title}\n")
        self.line("| " + " | ".join(header) + " |")
        self.line("|" + "---|" * len(header))
        for row in rows:
            self.line("| " + " | ".join(row) + " |")
        for note in notes:
            self.line(f"\n{note}")
        self.line()

    def skipped(self, what: str, why: str) -> None:
        self.line(f"_{what}: skipped, {why}_\n")


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    return f"CPU {platform.machine()}, {torch.get_num_threads()} threads"


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# -- train ------------------------------------------------------------------------------------


def train_part(sizes: Sizes, device: torch.device, report: Report) -> None:
    from bench_train import bare_loop, bench_experiment, ray_train

    from raygpt.train.step import flops_per_token, model_flops_utilization, peak_flops

    dtype = "bfloat16" if device.type == "cuda" else "float32"
    peak = peak_flops(device, dtype)
    rows, notes = [], []

    def row(label: str, model: ModelConfig, batch: int, seconds: list[float]) -> float:
        tokens = batch * sizes.train_block
        median = statistics.median(seconds)
        with torch.device("meta"):
            n = GPT(model).num_params()
        mfu = model_flops_utilization(tokens / median, flops_per_token(model, n), peak)
        mfu_text = "n/a" if mfu is None else f"{mfu:.1%}"
        rows.append([label, f"{median * 1000:.1f}", f"{tokens / median:,.0f}", mfu_text])
        return median

    data = random_dataset(sizes.gpt2.vocab_size, sizes.train_block, sizes.train_batch)
    total = sizes.train_steps + sizes.warmup_steps
    experiment = bench_experiment(
        model={**model_fields(sizes.gpt2), "block_size": sizes.train_block},
        data_dir=data,
        run_dir=Path(tempfile.mkdtemp(prefix="gpu_suite_train_")) / "run",
        steps=total,
        batch_size=sizes.train_batch,
        gpu=device.type == "cuda",
        compile=sizes.compile,
        threads=1 if device.type == "cpu" else 8,  # on a small CPU, Ray Data keeps a core
    )
    bare = bare_loop(experiment, data, total, device)[sizes.warmup_steps :]
    base = row("GPT-2 124M, bare PyTorch loop", experiment.model, sizes.train_batch, bare)
    if has("ray"):
        from raygpt.ray_runtime import init_ray

        init_ray()  # quiet: the job's own lines, not Ray's
        through_ray = ray_train(experiment, data)[sizes.warmup_steps :]
        ray_median = row(
            "GPT-2 124M, Ray Train + Ray Data", experiment.model, sizes.train_batch, through_ray
        )
        notes.append(f"Ray Train overhead: {ray_median / base - 1:+.1%} of step time")
    else:
        notes.append(
            "Ray Train: skipped, Ray is not installed (carry ../shared/tools/gpu-ray-bundle.sh's bundle)"
        )
    smollm2 = dataclasses.replace(sizes.smollm2, block_size=sizes.train_block)
    small = dataclasses.replace(
        experiment,
        model=smollm2,
        train=dataclasses.replace(experiment.train, batch_size=sizes.smollm2_batch),
    )
    times = bare_loop(
        small, random_dataset(smollm2.vocab_size, sizes.train_block, 4), total, device
    )
    row(
        "SmolLM2-135M, bare PyTorch loop", smollm2, sizes.smollm2_batch, times[sizes.warmup_steps :]
    )
    notes.append(
        f"{sizes.train_block}-token windows; batch {sizes.train_batch} (GPT-2) and "
        f"{sizes.smollm2_batch} (SmolLM2, its fine-tuning config's micro-batch); {dtype}, "
        f"{'compiled' if sizes.compile else 'eager'}, fused AdamW on CUDA; median of "
        f"{sizes.train_steps} steps after {sizes.warmup_steps}; MFU against "
        f"{'n/a' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'} dense"
    )
    report.table("Training", ["path", "ms/step", "tokens/s", "MFU"], rows, notes)


def model_fields(config: ModelConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(config).items() if k != "vocab_size"}


def random_dataset(vocab_size: int, block: int, batch: int) -> Path:
    """A shard folder of uniform random tokens (train and val), enough for the timed steps."""
    from raygpt.data.shards import Manifest, ShardWriter, token_dtype, write_manifest

    root = Path(tempfile.mkdtemp(prefix="gpu_suite_data_"))
    dtype = token_dtype(vocab_size)
    generator = np.random.default_rng(0)
    splits = {}
    for split, tokens in (("train", 64 * batch * (block + 1)), ("val", 8 * (block + 1))):
        writer = ShardWriter(root, split, dtype, shard_tokens=1 << 22)
        for start in range(0, tokens, 1 << 16):
            document = generator.integers(0, vocab_size - 1, min(1 << 16, tokens - start))
            writer.add(document)
        writer.flush()
        splits[split] = writer.stats
    # Labelled GPT-2's: training checks the name; the ids fit its vocabulary either way.
    write_manifest(root, Manifest("gpt2", vocab_size, vocab_size - 1, np.dtype(dtype).name, splits))
    return root


# -- decode -----------------------------------------------------------------------------------


def decode_part(sizes: Sizes, device: torch.device, report: Report) -> None:
    bandwidth = copy_bandwidth(device)
    float_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    float_name = str(float_dtype).removeprefix("torch.")
    batches = sizes.decode_batches
    for label, config in (("GPT-2 124M", sizes.gpt2), ("SmolLM2-135M", sizes.smollm2)):
        label += " (toy shape)" if sizes is SMOKE else ""
        model = GPT(config).eval()
        params = sum(p.numel() for p in model.parameters())
        rows = []
        variants = [
            (f"raygpt {float_name}", lambda m=model: copy.deepcopy(m).to(device, float_dtype), None)
        ]
        int8_missing = None if has("torchao") else "torchao is not installed"
        variants.append(("raygpt INT8", lambda m=model: int8_copy(m, device), int8_missing))
        for name, make, missing in variants:
            if missing:
                rows.append([name] + ["skipped"] * len(batches) + [missing])
                continue
            engine = decode_engine(make(), sizes, device)
            rates = [engine_decode_rate(engine, sizes, batch, device) for batch in batches]
            rows.append(
                [name, *[f"{r:,.0f}" for r in rates], f"static steps over {max(batches)} slots"]
            )
        if has("transformers"):
            hf = hf_model(model, device, float_dtype)
            rates = [hf_generate_rate(hf, sizes, batch, device) for batch in batches]
            rows.append(
                [
                    "transformers generate",
                    *[f"{r:,.0f}" for r in rates],
                    "same weights, its default cache",
                ]
            )
        else:
            rows.append(["transformers generate"] + ["skipped"] * len(batches) + ["not installed"])
        for name, width in ((f"roofline {float_name}", float_dtype.itemsize), ("roofline INT8", 1)):
            ceiling = bandwidth / (params * width)  # every weight read once per token
            rows.append(
                [name, f"{ceiling:,.0f}"] + ["-"] * (len(batches) - 1) + ["weights / bandwidth"]
            )
        report.table(
            f"Decode: {label} ({params / 1e6:.1f}M parameters), tokens/s",
            ["decoder", *[f"batch {b}" for b in batches], "note"],
            rows,
            [f"{sizes.prompt_tokens}-token prompts, {sizes.new_tokens} new tokens each, greedy, "
             f"prefill excluded; memory bandwidth {bandwidth / 1e12:.2f} TB/s (measured: a "
             "device-to-device copy, bytes read and written)"],
        )  # fmt: skip


def int8_copy(model: GPT, device: torch.device) -> GPT:
    from raygpt.model.int8 import quantize_model

    return quantize_model(copy.deepcopy(model).to(device, torch.float32))


def copy_bandwidth(device: torch.device) -> float:
    """Bytes read plus written per second by a large device-to-device copy."""
    size = (1 << 30) if device.type == "cuda" else (1 << 26)
    source = torch.empty(size, dtype=torch.uint8, device=device).random_()
    target = torch.empty_like(source)
    target.copy_(source)
    synchronize(device)
    times = []
    for _ in range(10):
        start = time.perf_counter()
        target.copy_(source)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * size / statistics.median(times)


def decode_engine(model: GPT, sizes: Sizes, device: torch.device, slots: int | None = None):
    """The engine as a GPU replica runs it: static decode steps (CUDA graphs on CUDA)."""
    from raygpt.inference.engine import GenerationEngine
    from raygpt.tokenizer import get_tokenizer

    if device.type == "cpu":
        model.use_decode_layout()
    return GenerationEngine(
        model,
        get_tokenizer("gpt2"),  # decodes any id of either model (SmolLM2's are fewer)
        max_slots=slots or max(sizes.decode_batches),
        max_context=sizes.prompt_tokens + sizes.new_tokens + 1,
        compile_decode=sizes.compile,
        static_decode=True,
    )


def engine_decode_rate(engine, sizes: Sizes, batch: int, device: torch.device) -> float:
    """Decode tokens/s of `batch` requests together (the clock starts once every request
    has its first token). The first run compiles and captures the step, the second counts."""
    from raygpt.inference.engine import GenerationRequest

    vocab = engine.model.config.vocab_size
    for _ in range(2):
        made: list[int] = []  # tokens of every update, in order
        for _ in range(batch):
            prompt = torch.randint(0, vocab, (sizes.prompt_tokens,)).tolist()
            request = GenerationRequest(
                tuple(prompt), sizes.new_tokens, temperature=0, stop_at_eot=False
            )
            engine.submit(request, lambda u, made=made: made.append(len(u.token_ids)))
        engine.step()  # every prompt prefilled (within the step's budget), first tokens made
        synchronize(device)
        start, before = time.perf_counter(), sum(made)
        while engine.stats().active:
            engine.step()
        synchronize(device)
        seconds = time.perf_counter() - start
    return (sum(made) - before) / seconds


def hf_model(model: GPT, device: torch.device, dtype: torch.dtype):
    """The same weights through transformers: exported as an HF folder, loaded back."""
    from transformers import AutoModelForCausalLM

    from raygpt.checkpoint import CheckpointMeta, export_hf

    folder = Path(tempfile.mkdtemp(prefix="gpu_suite_hf_"))
    export_hf(copy.deepcopy(model).float().cpu(), CheckpointMeta(model=model.config), folder)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()


def hf_generate_rate(hf, sizes: Sizes, batch: int, device: torch.device) -> float:
    """transformers' generate, greedy, `new_tokens` for each of `batch` prompts (prefill
    included: generate does not report it apart)."""
    prompt = torch.randint(0, hf.config.vocab_size, (batch, sizes.prompt_tokens), device=device)
    kwargs = dict(do_sample=False, pad_token_id=0)
    with torch.no_grad():
        hf.generate(prompt, max_new_tokens=4, min_new_tokens=4, **kwargs)  # warm up
        synchronize(device)
        start = time.perf_counter()
        hf.generate(
            prompt, max_new_tokens=sizes.new_tokens, min_new_tokens=sizes.new_tokens, **kwargs
        )
        synchronize(device)
    return batch * sizes.new_tokens / (time.perf_counter() - start)


# -- engine -----------------------------------------------------------------------------------


def engine_part(sizes: Sizes, device: torch.device, report: Report) -> None:
    from raygpt.inference.engine import GenerationRequest

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = GPT(sizes.smollm2).eval().to(device, dtype)
    engine = decode_engine(model, sizes, device, slots=max(sizes.engine_streams))
    vocab = sizes.smollm2.vocab_size

    def serve(streams: int) -> tuple[float, list[float]]:
        """All requests submitted at once: (tokens/s, each one's time to first token)."""
        submitted, first, done, made = {}, {}, set(), [0]

        def on_update(update, i):
            if update.token_ids and i not in first:
                first[i] = time.perf_counter()
            made[0] += len(update.token_ids)
            if update.finish_reason:
                done.add(i)

        start = time.perf_counter()
        for i in range(streams):
            prompt = torch.randint(0, vocab, (sizes.prompt_tokens,)).tolist()
            request = GenerationRequest(
                tuple(prompt), sizes.new_tokens, temperature=0, stop_at_eot=False
            )
            submitted[i] = time.perf_counter()
            engine.submit(request, lambda u, i=i: on_update(u, i))
        while len(done) < streams:
            engine.step()
        return made[0] / (time.perf_counter() - start), [
            first[i] - submitted[i] for i in range(streams)
        ]

    serve(2)  # compiles and captures the decode step
    rows, single = [], None
    for streams in sizes.engine_streams:
        rate, ttft = serve(streams)
        single = single or rate
        rows.append([
            str(streams), f"{rate:,.0f}", f"{rate / single:.1f}x",
            f"{percentile(ttft, 50) * 1000:.0f}", f"{percentile(ttft, 99) * 1000:.0f}",
        ])  # fmt: skip
    report.table(
        f"Engine in process: SmolLM2-135M shape, {str(dtype).removeprefix('torch.')}",
        ["streams", "tokens/s", "vs 1", "TTFT p50 ms", "TTFT p99 ms"],
        rows,
        [f"all requests submitted at once; {sizes.prompt_tokens}-token prompts, "
         f"{sizes.new_tokens} tokens each, prefill included; {max(sizes.engine_streams)} slots, "
         f"static decode steps{' captured as CUDA graphs' if device.type == 'cuda' else ''}"],
    )  # fmt: skip


def percentile(sorted_values: list[float], q: float) -> float:
    return float(np.percentile(sorted_values, q))


if __name__ == "__main__":
    main()
