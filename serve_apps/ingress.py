"""The ingress deployment: HTTP in front of the generator (FastAPI).

It validates and authenticates requests, tokenizes prompts, enforces the limits, routes
each prompt to a generator replica through a streaming handle, and turns the generator's
updates into OpenAI-shaped JSON or server-sent events. Errors a client can cause are
answered here, in OpenAI's error shape, with a message that names the field or the limit;
the generator only ever sees requests it can run.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from raygpt.engine import GenerationRequest
from raygpt.tokenizer import get_tokenizer
from serve_apps.api import (
    CompleteRequest,
    CompleteResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    StreamOptions,
    Usage,
)
from serve_apps.settings import ServeSettings

ENDPOINTS = ["POST /v1/completions", "GET /v1/models", "POST /complete", "GET /health", "GET /"]


class BadRequest(HTTPException):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(400, message)
        self.param = param


@serve.deployment(name="Ingress", max_ongoing_requests=1024)
@serve.ingress()
class Ingress:
    async def __init__(self, generator: DeploymentHandle, settings: dict[str, Any]) -> None:
        self.generator = generator
        self.settings = ServeSettings.model_validate(settings)
        self.api_key = os.environ.get(self.settings.api_key_env) or None
        # Waits for a generator replica: the ingress is ready when the model is.
        self.info = await generator.info.remote()
        self.tokenizer = get_tokenizer(self.info["tokenizer"])
        self.created = int(time.time())

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self)

    # -- turning HTTP requests into generator requests --------------------------------------

    def requests(
        self, prompt: str | list[str] | list[int] | list[list[int]], **sampling: Any
    ) -> list[GenerationRequest]:
        """One generator request per prompt, tokenized and checked against the model and the
        service's limits (the engine's own check: a request that passes here runs there)."""
        token_ids = bool(prompt) and all(isinstance(p, int) for p in prompt)
        prompts = [prompt] if isinstance(prompt, str) or token_ids else list(prompt)
        if not prompts:
            raise BadRequest("prompt: give at least one prompt", "prompt")
        if len(prompts) > self.settings.max_prompts:
            raise BadRequest(
                f"prompt: {len(prompts)} prompts in one request; the limit is "
                f"{self.settings.max_prompts}",
                "prompt",
            )
        requests = []
        for p in prompts:
            tokens = self.tokenizer.encode(p) if isinstance(p, str) else list(p)
            # An empty prompt starts from end-of-text, as GPT-2 was trained.
            request = GenerationRequest(tuple(tokens or [self.tokenizer.eot_token]), **sampling)
            try:
                request.check(self.info["context_window"], self.info["vocab_size"])
            except ValueError as err:  # the other fields were checked by their schema
                raise BadRequest(f"prompt: {err}", "prompt") from None
            requests.append(request)
        return requests

    def check_max_tokens(self, max_tokens: int) -> None:
        if max_tokens > self.settings.max_tokens_limit:
            raise BadRequest(
                f"max_tokens: {max_tokens} is above this service's limit of "
                f"{self.settings.max_tokens_limit}",
                "max_tokens",
            )

    def generate(self, request: GenerationRequest):
        """The generator's stream of updates for one prompt."""
        return self.generator.options(stream=True).generate.remote(request)

    async def complete_one(self, request: GenerationRequest) -> dict[str, Any]:
        """Run one prompt to the end; the merged result."""
        text, last = [], None
        async for update in self.generate(request):
            text.append(update["text"])
            last = update
        _raise_if_failed(last)
        return {**last, "text": "".join(text)}


def build_api(service: Ingress) -> FastAPI:
    api = FastAPI(
        title="raygpt",
        description="Code completion from a raygpt GPT: OpenAI-compatible /v1/completions "
        "with streaming, and the seed's /complete.",
        version="0.1.0",
    )
    settings = service.settings
    model_name = service.info["model"]

    @api.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "param", None), exc.headers)

    @api.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, *_describe_invalid(exc.errors()))

    @api.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.max_request_bytes:
            return _error(
                413,
                f"the request body is {length} bytes; the limit is {settings.max_request_bytes}",
            )
        return await call_next(request)

    async def authorized(request: Request) -> None:
        if service.api_key is None:
            return
        sent = request.headers.get("authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {service.api_key}".encode()):
            raise HTTPException(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @api.get("/", summary="What this service is")
    async def root() -> dict[str, Any]:
        return {
            "service": "raygpt",
            **service.info,
            "limits": {
                "max_tokens": settings.max_tokens_limit,
                "max_prompts": settings.max_prompts,
                "max_request_bytes": settings.max_request_bytes,
                "request_timeout_s": settings.request_timeout_s,
            },
            "auth": "bearer" if service.api_key else "none",
            "endpoints": ENDPOINTS,
            "docs": "/docs",
        }

    @api.get("/health", summary="200 when a generator replica answers")
    async def health() -> JSONResponse:
        try:
            stats = await asyncio.wait_for(service.generator.stats.remote(), timeout=10)
        except Exception as err:
            return _error(503, f"the generator does not answer: {type(err).__name__}: {err}")
        return JSONResponse({"status": "ok", "model": model_name, "engine": stats})

    @api.get("/v1/models", dependencies=[Depends(authorized)])
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=model_name, created=service.created)])

    @api.post("/v1/completions", dependencies=[Depends(authorized)], response_model=None)
    async def completions(body: CompletionRequest) -> CompletionResponse | StreamingResponse:
        if body.model is not None and body.model != model_name:
            raise HTTPException(
                404, f"model: {body.model!r} is not served here; use {model_name!r}"
            )
        if body.n != 1:
            raise BadRequest("n: only n=1 is supported", "n")
        if body.logprobs is not None:
            raise BadRequest("logprobs: not supported", "logprobs")
        if body.echo:
            raise BadRequest("echo: not supported", "echo")
        service.check_max_tokens(body.max_tokens)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > 4:
            raise BadRequest(f"stop: {len(stop)} stop strings; the limit is 4", "stop")
        requests = service.requests(
            body.prompt,
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            top_k=body.top_k,
            top_p=body.top_p,
            seed=body.seed,
            stop=tuple(stop),
            stop_at_eot=not body.ignore_eos,
        )
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.stream:
            options = body.stream_options or StreamOptions()
            events = _stream_events(service, requests, completion_id, created, model_name, options)
            return StreamingResponse(events, media_type="text/event-stream")
        results = await _within(
            asyncio.gather(*(service.complete_one(r) for r in requests)), settings
        )
        prompt_tokens = sum(len(r.prompt) for r in requests)
        completion_tokens = sum(r["completion_tokens"] for r in results)
        return CompletionResponse(
            id=completion_id,
            created=created,
            model=model_name,
            choices=[
                CompletionChoice(text=r["text"], index=i, finish_reason=r["finish_reason"])
                for i, r in enumerate(results)
            ],
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
        )

    @api.post("/complete", dependencies=[Depends(authorized)])
    async def complete(body: CompleteRequest) -> CompleteResponse:
        service.check_max_tokens(body.max_tokens)
        (request,) = service.requests(
            body.code,
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            top_k=body.top_k or None,
        )
        result = await _within(service.complete_one(request), settings)
        return CompleteResponse(
            completion=result["text"],
            full_code=body.code + result["text"],
            tokens_generated=result["completion_tokens"],
            finish_reason=result["finish_reason"],
            model=model_name,
        )

    return api


async def _stream_events(
    service: Ingress,
    requests: list[GenerationRequest],
    completion_id: str,
    created: int,
    model_name: str,
    options: StreamOptions,
) -> AsyncIterator[str]:
    """Server-sent events: one chunk per update of any prompt (tagged by its index), then a
    usage chunk if asked for, then `data: [DONE]`. With `continuous_usage_stats` (as vLLM)
    every chunk carries its prompt's token counts so far. A client that disconnects cancels this
    generator, and with it every generator stream (their slots are freed)."""
    merged: asyncio.Queue[tuple[int, dict[str, Any] | None]] = asyncio.Queue()
    streams = [service.generate(r) for r in requests]

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
                yield _sse({"error": {"message": update["error"], "type": "server_error"}})
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
            yield _sse(chunk.model_dump(exclude_none=True))
        for task in tasks:
            task.result()  # a failed generator call surfaces here
        if options.include_usage:
            prompt_tokens = sum(len(r.prompt) for r in requests)
            usage = Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            )
            yield _sse(
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


def _describe_invalid(errors) -> tuple[str, str | None]:
    """One line naming each bad field. A field of several accepted types (prompt) fails once
    per type: say which types it takes instead of repeating the failure."""
    by_field: dict[str, list] = {}
    for error in errors:
        where = [str(part) for part in error["loc"] if part != "body"] or ["body"]
        by_field.setdefault(where[0], []).append((where, error["msg"]))
    problems = []
    for name, found in by_field.items():
        if len(found) > 1 and all(len(where) > 1 for where, _ in found):
            kinds = ", ".join(dict.fromkeys(where[1] for where, _ in found))
            problems.append(f"{name}: should be one of {kinds}")
        else:
            problems.extend(f"{'.'.join(where)}: {message}" for where, message in found)
    return "; ".join(problems), next(iter(by_field), None)


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def _within(awaitable, settings: ServeSettings):
    try:
        return await asyncio.wait_for(awaitable, timeout=settings.request_timeout_s)
    except asyncio.TimeoutError:
        raise HTTPException(
            504, f"generation took longer than request_timeout_s={settings.request_timeout_s}"
        ) from None


def _raise_if_failed(update: dict[str, Any] | None) -> None:
    if update is None or update["finish_reason"] not in ("stop", "length"):
        reason = "no result" if update is None else update["error"] or update["finish_reason"]
        raise HTTPException(500, f"generation failed: {reason}")


def _error(
    status: int, message: str, param: str | None = None, headers: dict | None = None
) -> JSONResponse:
    kinds = {401: "authentication_error", 404: "not_found_error", 413: "request_too_large"}
    kind = kinds.get(status, "invalid_request_error" if status < 500 else "server_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)
