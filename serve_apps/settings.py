"""The completion service's settings: the `args` of serve_config.yaml, checked on deploy."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from raygpt.inference.speculation import SpeculationConfig


class AutoscalingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    # Requests a generator replica holds at once before Serve adds one: its engine batches
    # them, so this is about the number of KV-cache slots, not 1 or 2 as for a plain model.
    target_ongoing_requests: float = Field(24, gt=0)
    upscale_delay_s: float = Field(10, ge=0)
    downscale_delay_s: float = Field(120, ge=0)


class ServeSettings(BaseModel):
    """What a deployment of raygpt's completion service needs to know."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str  # raygpt, HF GPT-2 or nanoGPT checkpoint: a folder, ckpt.pt, or a URI
    model_name: str | None = None  # the id in /v1/models (default: the checkpoint's folder name)
    quantize: Literal["int8", "none"] = "int8"  # quantize at load unless the checkpoint is INT8
    dtype: Literal["float32", "bfloat16"] = "float32"  # for quantize: none
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_gpus: float = Field(0, ge=0)  # per generator replica; fractions share a GPU
    num_cpus: float = Field(1, gt=0)  # per generator replica
    torch_threads: int | None = Field(None, ge=1)  # CPU decode threads (default: num_cpus)
    # Continuous batching: KV-cache slots per replica, requests waiting beyond them.
    max_slots: int = Field(32, ge=1)
    max_queue: int = Field(256, ge=1)
    # Prompt tokens one engine step prefills in a single packed pass (a longer prompt goes on
    # in the next steps: chunked prefill): more amortizes the pass, less shortens the pause of
    # the rows already decoding (SmolLM2 on 2 CPU cores, a 768-token prompt joining 8 rows:
    # 512 halves their stall and does not delay its first token, bench/bench_prefill.py).
    max_prefill_tokens: int = Field(512, ge=1)
    # The context window served (prompt + completion), at most the model's: the KV cache holds
    # max_slots x max_context tokens (SmolLM2: 1.5 GB at 32 x 1024; its full 8192 would be 12).
    max_context: int = Field(1024, ge=2)
    # Decode steps run compiled (all blocks in one compiled call, each block compiled once:
    # SmolLM2 INT8 on CPU 2.6x the eager fp32 rate); the replica compiles at start, about a
    # minute per model on a fresh node (SmolLM2, 2 cores; 20 s from inductor's cache).
    compile_decode: bool = True
    # Speculative decoding: method none | ngram (prompt lookup: tokens copied from the
    # request's own text) | draft (a small model: `draft` is its checkpoint, or self:N for
    # the model's own first N layers); k tokens proposed a row per step; a request opts out
    # with "speculate": false. Exact: greedy text is unchanged, sampled text keeps its
    # distribution (bench/bench_speculative.py measures what it buys).
    speculation: SpeculationConfig = SpeculationConfig()
    # Backpressure: requests a caller (a proxy, an ingress replica) queues for a deployment
    # beyond what its replicas hold; past it the answer is 429 with Retry-After, at once.
    max_queued_requests: int = Field(64, ge=1)
    retry_after_s: float = Field(1, ge=0)
    # An engine with work waiting and no finished step for this long is unhealthy: its
    # requests end with an error and Serve replaces the replica.
    engine_stall_s: float = Field(120, gt=0)
    # A stream sends its first token at once, then at most one chunk per interval (merged
    # tokens): keeps the HTTP path's per-chunk cost from capping many streams' throughput.
    stream_interval_s: float = Field(0.1, ge=0)
    autoscaling: AutoscalingSettings = AutoscalingSettings()
    # The engine inside the ingress replica: one process per replica, no hop per streamed
    # chunk (SmolLM2 fp32 on 2 CPU cores: see BENCHMARKS.md); HTTP and engines then scale
    # together. false: the deployment graph, Ingress -> Generator, each scaled on its own.
    colocate: bool = False
    # Request limits: answered 400 (413 for the body) with the limit in the message.
    max_tokens_limit: int = Field(256, ge=1)
    max_prompts: int = Field(8, ge=1)  # prompts in one /v1/completions request
    max_request_bytes: int = Field(1_000_000, ge=1024)
    request_timeout_s: float = Field(120, gt=0)  # a non-streaming request past this: 504
    # Auth: the API key is read from a file (api_key_file: a mounted secret) or else from this
    # environment variable of the ingress replicas (set from a Kubernetes secret, or in the
    # nodes' environment); neither set means no auth. Never put the key in a job's runtime_env:
    # the dashboard and the Jobs API show those.
    api_key_env: str = "RAYGPT_API_KEY"
    api_key_file: str | None = None
