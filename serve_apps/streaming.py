"""Server-sent events for `stream: true`, in OpenAI's chunk formats: text completions
(`text_completion` chunks with `text`) and chat (`chat.completion.chunk` with `delta`).

The ingress starts every prompt's generator stream and waits for each one's first update
before it answers (so a refusal is still a plain 4xx/5xx); from then on the answer is 200 and
whatever happens ends in an error event and `data: [DONE]`, never in a stream left open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from raygpt.inference.engine import UNAVAILABLE, GenerationRequest
from serve_apps.api import StreamOptions, Usage
from serve_apps.errors import error_body, failed, generation_error

DONE = "data: [DONE]\n\n"


@dataclass(frozen=True)
class ChunkShape:
    """What one response's chunks look like: their id, model, and completions' or chat's form."""

    id: str
    created: int
    model: str
    chat: bool = False

    def chunk(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> dict[str, Any]:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage.model_dump()
        return body

    def opening(self, index: int) -> dict[str, Any] | None:
        """Chat streams open each choice with the speaker's role, as OpenAI's do."""
        if not self.chat:
            return None
        delta = {"role": "assistant", "content": ""}
        return self.chunk(
            [{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}]
        )

    def piece(self, index: int, text: str, reason: str | None) -> dict[str, Any]:
        if self.chat:
            delta = {"content": text} if text else {}
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"text": text, "index": index}
            if reason is not None:
                choice["finish_reason"] = reason
        return self.chunk([choice])


async def completion_events(
    started: list[tuple[dict[str, Any], Any]],
    requests: list[GenerationRequest],
    shape: ChunkShape,
    options: StreamOptions,
    retry_after_s: float,
) -> AsyncIterator[str]:
    """One chunk per update of any prompt (tagged by its index), then a usage chunk if asked
    for, then `data: [DONE]`. `started` holds each prompt's first update and the rest of its
    stream. With `continuous_usage_stats` (as vLLM) every chunk carries its prompt's token
    counts so far. A client that disconnects cancels this generator, and with it every
    generator stream (their slots are freed)."""
    merged: asyncio.Queue[tuple[int, dict[str, Any] | None]] = asyncio.Queue()

    async def pump(index: int, first: dict[str, Any], stream) -> None:
        last = first
        await merged.put((index, first))
        try:
            if first["finish_reason"] is None:
                async for update in stream:
                    last = update
                    await merged.put((index, update))
        except Exception as err:  # the replica died, the call failed: end with an error
            last = {"finish_reason": "error", "error": f"{type(err).__name__}: {err}"}
            await merged.put((index, {**last, "error_kind": UNAVAILABLE}))
        if last["finish_reason"] is None:  # the stream ended without a last update
            last = {"finish_reason": "error", "error": "the stream ended early"}
            await merged.put((index, {**last, "error_kind": UNAVAILABLE}))
        await merged.put((index, None))

    streams = [stream for _, stream in started]
    tasks = [
        asyncio.create_task(pump(i, first, stream)) for i, (first, stream) in enumerate(started)
    ]
    completion_tokens, open_streams = 0, len(tasks)
    try:
        for index in range(len(started)):
            if (opening := shape.opening(index)) is not None:
                yield sse(opening)
        while open_streams:
            index, update = await merged.get()
            if update is None:
                open_streams -= 1
                continue
            reason = update["finish_reason"]
            if reason is not None and failed(update):
                error = generation_error(update, shape.id, retry_after_s)
                yield sse(error_body(error.status_code, error.detail))
                yield DONE
                return
            if reason is not None:
                completion_tokens += update["completion_tokens"]
            if not update["text"] and reason is None:
                continue
            chunk = shape.piece(index, update["text"], reason)
            if options.continuous_usage_stats:
                so_far = usage_of(update["prompt_tokens"], update["completion_tokens"])
                chunk["usage"] = so_far.model_dump()
            yield sse(chunk)
        if options.include_usage:
            prompt_tokens = sum(len(r.prompt) for r in requests)
            yield sse(shape.chunk([], usage_of(prompt_tokens, completion_tokens)))
        yield DONE
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            cancel_stream(stream)


def usage_of(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def cancel_stream(stream) -> None:
    """Stop a generator call and free its slot. A call that never started (refused by
    backpressure) re-raises its refusal from cancel(): there is nothing to stop then."""
    with contextlib.suppress(Exception):
        stream.cancel()


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"
