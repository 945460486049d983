"""Server-sent events for /v1/completions with `stream: true`, in OpenAI's chunk format."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from raygpt.inference.engine import GenerationRequest
from serve_apps.api import CompletionChoice, CompletionResponse, StreamOptions, Usage


async def completion_events(
    streams: list,
    requests: list[GenerationRequest],
    completion_id: str,
    created: int,
    model_name: str,
    options: StreamOptions,
) -> AsyncIterator[str]:
    """One chunk per update of any prompt (tagged by its index), then a usage chunk if asked
    for, then `data: [DONE]`. With `continuous_usage_stats` (as vLLM) every chunk carries its
    prompt's token counts so far. A client that disconnects cancels this generator, and with
    it every generator stream (their slots are freed)."""
    merged: asyncio.Queue[tuple[int, dict[str, Any] | None]] = asyncio.Queue()

    async def pump(index: int, stream) -> None:
        async for update in stream:
            await merged.put((index, update))
        await merged.put((index, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    completion_tokens, open_streams = 0, len(tasks)
    try:
        while open_streams:
            index, update = await merged.get()
            if update is None:
                open_streams -= 1
                continue
            if update["error"]:
                yield sse({"error": {"message": update["error"], "type": "server_error"}})
                return
            reason = update["finish_reason"]
            if reason is not None:
                completion_tokens += update["completion_tokens"]
            if not update["text"] and reason is None:
                continue
            chunk = CompletionResponse(
                id=completion_id,
                created=created,
                model=model_name,
                choices=[CompletionChoice(text=update["text"], index=index, finish_reason=reason)],
            )
            if options.continuous_usage_stats:
                prompt, done = update["prompt_tokens"], update["completion_tokens"]
                chunk.usage = Usage(
                    prompt_tokens=prompt, completion_tokens=done, total_tokens=prompt + done
                )
            yield sse(chunk.model_dump(exclude_none=True))
        for task in tasks:
            task.result()  # a failed generator call surfaces here
        if options.include_usage:
            prompt_tokens = sum(len(r.prompt) for r in requests)
            usage = Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            )
            yield sse(
                {
                    "id": completion_id,
                    "object": "text_completion",
                    "created": created,
                    "model": model_name,
                    "choices": [],
                    "usage": usage.model_dump(),
                }
            )
        yield "data: [DONE]\n\n"
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            stream.cancel()


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"
