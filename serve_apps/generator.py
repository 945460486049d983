"""The generator deployment: one GenerationEngine per replica, INT8 by default.

Requests arrive as GenerationRequests (the ingress has tokenized and checked them) and
leave as a stream of updates. The engine runs on its own thread; its per-token callbacks
hop onto the replica's event loop through a buffer, and whatever piled up since the last
yield goes out as one chunk, so a busy replica sends fewer, larger chunks.

A stream always ends: with a finished update, or with one whose `error_kind` says why not
(a request the engine refused, a failed row, an engine that stopped or stalls). Serve's
health check asks the engine, so a broken replica is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import torch
from ray import serve

from raygpt import storage
from raygpt.device import cpu_threads, pick_device
from raygpt.errors import RequestError
from raygpt.inference.engine import (
    INVALID,
    UNAVAILABLE,
    EngineError,
    GenerationEngine,
    GenerationRequest,
    GenerationUpdate,
)
from raygpt.inference.load import checkpoint_tokenizer, load_draft, load_for_serving
from serve_apps.metrics import ServingMetrics
from serve_apps.settings import ServeSettings

logger = logging.getLogger("ray.serve")

HEALTH_POLL_S = 5.0  # a stream with no update for this long asks whether the engine is healthy


@serve.deployment(name="Generator", health_check_period_s=10, health_check_timeout_s=30)
class Generator:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = ServeSettings.model_validate(settings)
        self.device = pick_device(self.settings.device)
        threads = None
        if self.device.type == "cpu":
            # All of the model's CPU work runs on the engine's thread: OpenMP keeps a pool of
            # workers for each thread that uses it, and with two pools on a small machine
            # every decode step waits for sleeping workers (SmolLM2 INT8 on 2 cores: 61 ->
            # 29 tokens/s). Loading here uses one thread; the engine's thread uses them all.
            threads = cpu_threads(self.settings.num_cpus, self.settings.torch_threads)
            torch.set_num_threads(1)
        int8, dtype = self.settings.quantize == "int8", getattr(torch, self.settings.dtype)
        self.model, meta = load_for_serving(self.settings.checkpoint, self.device, int8, dtype)
        if meta.tokenizer is None:
            raise ValueError(f"{self.settings.checkpoint}: the checkpoint names no tokenizer")
        speculation = self.settings.speculation
        draft = None
        if speculation.method == "draft":
            draft = load_draft(speculation.draft, self.model, meta, self.device, int8, dtype)
        self.meta = meta
        self.tokenizer = checkpoint_tokenizer(meta)
        self.model_name = self.settings.model_name or storage.name_of(self.settings.checkpoint)
        self.engine = GenerationEngine(
            self.model,
            self.tokenizer,
            self.settings.max_slots,
            self.settings.max_queue,
            self.settings.max_context,
            compile_decode=self.settings.compile_decode,
            max_prefill_tokens=self.settings.max_prefill_tokens,
            speculation=speculation,
            draft_model=draft,
        ).start(threads)
        if not self._warm_up() and self.engine.compile_decode:
            # torch.compile needs a C++ compiler on CPU: without one, decode eagerly
            logger.warning("raygpt: compiled decode steps failed; decoding eagerly instead")
            self.engine.compile_decode = False
            self._warm_up()
        self.metrics = ServingMetrics(self.model_name)
        self._stop_metrics = self.metrics.watch(self.engine.stats)

    def _warm_up(self) -> bool:
        """Run a batch of one, then of two, before taking traffic: the decode steps of both
        shape families compile here (on the engine's thread) instead of inside the first
        users' requests. Whether every warm-up request finished cleanly."""
        done: list[GenerationUpdate] = []
        finished = threading.Condition()

        def collect(update: GenerationUpdate) -> None:
            if update.finish_reason:
                with finished:
                    done.append(update)
                    finished.notify()

        for batch in (1, 2):
            for _ in range(batch):  # decodes whatever it samples: an end token ends nothing
                request = GenerationRequest(
                    (self.tokenizer.eot_token,), 3, temperature=0, stop_at_eot=False
                )
                self.engine.submit(request, collect)
            with finished:  # finished so far: 1, then 1 + 2
                finished.wait_for(lambda b=batch: len(done) >= {1: 1, 2: 3}[b])
        return all(u.error is None for u in done)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[dict[str, Any]]:
        """Stream a request's updates: dicts of GenerationUpdate's fields. The first token
        goes out at once; later ones at most every stream_interval_s, merged, so 32 streams
        cost the HTTP path 32 chunks per interval instead of 32 per decode step. The last
        one goes out at once too: a client waiting for its answer's end (and then sending
        its next request) never waits out the interval."""
        buffer = _UpdateBuffer(asyncio.get_running_loop())
        arrived = time.perf_counter()
        try:
            request_id = self.engine.submit(request, buffer.put)
        except (RequestError, EngineError) as err:
            kind = INVALID if isinstance(err, RequestError) else err.kind
            yield _refusal(request, str(err), kind)
            return
        interval = self.settings.stream_interval_s
        finished, last_yield = False, None
        try:
            while not finished:
                if last_yield is not None:
                    await buffer.hold(last_yield + interval - time.perf_counter())
                updates = await buffer.take(timeout=HEALTH_POLL_S)
                if not updates:  # nothing for a while: is the engine still working?
                    health = self.engine.health(self.settings.engine_stall_s)
                    if not health.healthy:
                        yield _refusal(request, health.problem, UNAVAILABLE)
                        return
                    continue
                update = _merge(updates)
                if update.token_ids:
                    if last_yield is None:
                        self.metrics.time_to_first_token.observe(time.perf_counter() - arrived)
                    self.metrics.tokens.inc(len(update.token_ids))
                finished = update.finish_reason is not None
                last_yield = time.perf_counter()
                yield dataclasses.asdict(update)
        finally:
            if not finished:  # the caller went away (client disconnect, timeout): free the slot
                self.engine.cancel(request_id)

    def info(self) -> dict[str, Any]:
        config = self.model.config
        return {
            "model": self.model_name,
            "checkpoint": self.settings.checkpoint,
            "tokenizer": self.tokenizer.name,
            "context_window": self.engine.block_size,
            "vocab_size": config.vocab_size,
            "parameters": self.model.num_params(),
            "quantization": getattr(self.model, "quantization", None),
            "device": str(self.device),
            "max_slots": self.settings.max_slots,
        }

    def vocabulary(self) -> dict[str, Any]:
        """What the ingress needs to tokenize prompts exactly as the model was trained."""
        meta = self.meta
        return {
            "kind": meta.tokenizer,
            "tokenizer_json": meta.tokenizer_json,
            "special_tokens": meta.special_tokens,
            "chat_template": meta.chat_template,
        }

    def stats(self) -> dict[str, Any]:
        return dataclasses.asdict(self.engine.stats())

    def health(self) -> dict[str, Any]:
        """The engine's health and its numbers, for the ingress's /health."""
        health = self.engine.health(self.settings.engine_stall_s)
        return {**dataclasses.asdict(health), "engine": self.stats()}

    def check_health(self) -> None:
        """Serve's periodic probe: raising marks this replica unhealthy and replaces it."""
        health = self.engine.health(self.settings.engine_stall_s)
        if not health.healthy:
            raise RuntimeError(health.problem)

    def __del__(self) -> None:
        if hasattr(self, "_stop_metrics"):
            self._stop_metrics.set()
        if hasattr(self, "engine"):
            self.engine.stop()


class _UpdateBuffer:
    """Updates from the engine's thread, picked up by the request's coroutine. The loop is
    woken once per batch of updates (when the buffer turns non-empty), not once per token,
    and once more by the request's last update."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: list[GenerationUpdate] = []
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._finished = asyncio.Event()

    def put(self, update: GenerationUpdate) -> None:  # on the engine's thread
        with self._lock:
            self._items.append(update)
            wake = len(self._items) == 1
        if wake:
            self._loop.call_soon_threadsafe(self._ready.set)
        if update.finish_reason is not None:
            self._loop.call_soon_threadsafe(self._finished.set)

    async def hold(self, seconds: float) -> None:
        """Let updates pile up for `seconds` (to go out merged), unless the last one comes."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._finished.wait()

    async def take(self, timeout: float | None = None) -> list[GenerationUpdate]:
        """What arrived since the last take; [] when nothing did within `timeout`."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError:
            return []
        with self._lock:
            items, self._items = self._items, []
            self._ready.clear()
        return items


def _refusal(request: GenerationRequest, message: str, kind: str) -> dict[str, Any]:
    """The one update of a request that never ran, or that the engine cannot finish."""
    update = GenerationUpdate("", [], len(request.prompt), 0, "error", message, kind)
    return dataclasses.asdict(update)


def _merge(updates: list[GenerationUpdate]) -> GenerationUpdate:
    last = updates[-1]
    return dataclasses.replace(
        last,
        text="".join(u.text for u in updates),
        token_ids=[t for u in updates for t in u.token_ids],
    )
