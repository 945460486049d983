"""The ingress deployment: HTTP in front of the generator (FastAPI).

It validates and authenticates requests, tokenizes prompts, enforces the limits, routes
each prompt to a generator replica through a streaming handle, and turns the generator's
updates into OpenAI-shaped JSON or server-sent events. Errors a client can cause are
answered here (serve_apps.errors); the generator only ever sees requests it can run.
Each route is a method of Ingress; `ROUTES` is the table of them.
"""

# No `from __future__ import annotations` here: Serve ships this class to its replicas by
# value (cloudpickle), where string annotations could not be resolved, and FastAPI reads the
# routes' parameter types from their annotations.
import asyncio
import hmac
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from raygpt.errors import ConfigError, RequestError
from raygpt.inference.chat import ChatMessage, ChatTemplateError, render_chat, template_tokens
from raygpt.inference.engine import UNAVAILABLE, GenerationRequest
from raygpt.inference.load import load_tokenizer
from serve_apps.api import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessageIn,
    ChatMessageOut,
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
from serve_apps.errors import (
    BadRequest,
    error_response,
    failed,
    generation_error,
    http_error,
    invalid_body,
    overloaded,
)
from serve_apps.generator import Generator
from serve_apps.generator_client import GeneratorClient, LocalGenerator, RemoteGenerator
from serve_apps.limits import BodyLimit
from serve_apps.metrics import IngressMetrics
from serve_apps.settings import ServeSettings
from serve_apps.streaming import ChunkShape, cancel_stream, completion_events, usage_of

logger = logging.getLogger("ray.serve")
PLAYGROUND = Path(__file__).with_name("playground.html")
# OpenAI takes 4 stop sequences; HumanEval's harness uses 5 (vLLM has no limit): 8 here.
MAX_STOP_STRINGS = 8

# (method, path, Ingress method, needs the API key, JSON response, summary)
ROUTES = [
    ("GET", "/", "describe", False, None, "What this service is"),
    ("GET", "/health", "health", False, None, "200 when a generator replica answers"),
    ("GET", "/v1/models", "models", True, ModelList, "The model served here"),
    ("POST", "/v1/completions", "completions", True, CompletionResponse, "OpenAI completions"),
    (
        "POST",
        "/v1/chat/completions",
        "chat_completions",
        True,
        ChatCompletionResponse,
        "OpenAI chat completions, prompted with the model's chat template",
    ),
    ("POST", "/complete", "complete", True, CompleteResponse, "The seed's code completion"),
    ("GET", "/playground", "playground", False, None, "A chat and code page in the browser"),
]
ENDPOINTS = [f"{method} {path}" for method, path, *_ in ROUTES]


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    async def __init__(self, generator: DeploymentHandle | None, settings: dict[str, Any]) -> None:
        self.settings = ServeSettings.model_validate(settings)
        # No handle: the app is colocated, and this replica holds the engine itself.
        self.generator: GeneratorClient = (
            LocalGenerator(Generator.func_or_class(settings))
            if generator is None
            else RemoteGenerator(generator)
        )
        self.api_key = read_api_key(self.settings)
        if self.api_key is None:
            logger.warning(
                "raygpt: no API key is set (api_key_file, $%s): anyone who reaches this "
                "service can use it",
                self.settings.api_key_env,
            )
        # Waits for a generator replica: the ingress is ready when the model is.
        self.info = await self.generator.info()
        self.model_name = self.info["model"]
        vocabulary = await self.generator.vocabulary()
        self.tokenizer = load_tokenizer(
            vocabulary["kind"], vocabulary["tokenizer_json"], vocabulary["special_tokens"]
        )
        self.chat_template = vocabulary["chat_template"]
        self.template_tokens = template_tokens(
            vocabulary["special_tokens"] or {}, self.tokenizer.decode
        )
        self.created = int(time.time())
        self.metrics = IngressMetrics(self.model_name)

    def __serve_build_asgi_app__(self) -> FastAPI:
        api = FastAPI(
            title="raygpt",
            description="Code completion and chat from a raygpt GPT: OpenAI-compatible "
            "/v1/completions and /v1/chat/completions with streaming, the seed's /complete, "
            "and a playground page at /playground.",
            version="0.1.0",
        )
        api.add_exception_handler(HTTPException, http_error)
        api.add_exception_handler(RequestValidationError, invalid_body)
        api.add_middleware(BodyLimit, limit=self.settings.max_request_bytes)
        for method, path, name, private, response, summary in ROUTES:
            api.add_api_route(
                path,
                getattr(self, name),
                methods=[method],
                summary=summary,
                dependencies=[Depends(self.authorized)] if private else None,
                response_model=response,  # a StreamingResponse passes through as it is
            )
        return api

    def check_health(self) -> None:
        """Serve's periodic probe; a colocated engine that stalls or stopped fails it."""
        self.generator.check_health()

    # -- guards ------------------------------------------------------------------------------

    async def authorized(self, request: Request) -> None:
        if self.api_key is None:
            return
        sent = request.headers.get("authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {self.api_key}".encode()):
            raise HTTPException(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    # -- routes ------------------------------------------------------------------------------

    async def describe(self) -> dict[str, Any]:
        settings = self.settings
        info = dict(self.info)
        if self.api_key is not None:  # where the weights live is not a stranger's business
            info.pop("checkpoint", None)
        return {
            "service": "raygpt",
            **info,
            "limits": {
                "max_tokens": settings.max_tokens_limit,
                "max_prompts": settings.max_prompts,
                "max_request_bytes": settings.max_request_bytes,
                "request_timeout_s": settings.request_timeout_s,
            },
            "chat": self.chat_template is not None,  # whether /v1/chat/completions can answer
            "auth": "bearer" if self.api_key else "none",
            "endpoints": ENDPOINTS,
            "docs": "/docs",
        }

    async def health(self) -> JSONResponse:
        try:
            stats = await asyncio.wait_for(self.generator.stats(), timeout=10)
        except Exception as err:
            return error_response(
                503, f"the generator does not answer: {type(err).__name__}: {err}"
            )
        return JSONResponse({"status": "ok", "model": self.model_name, "engine": stats})

    async def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.model_name, created=self.created)])

    async def completions(self, body: CompletionRequest) -> CompletionResponse | StreamingResponse:
        self.check_common(body.model, body.n, body.max_tokens)
        if body.logprobs is not None:
            raise BadRequest("logprobs: not supported", "logprobs")
        if body.echo:
            raise BadRequest("echo: not supported", "echo")
        requests = await asyncio.to_thread(  # tokenizing a long prompt would stall the loop
            self.requests,
            body.prompt,
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            top_k=body.top_k,
            top_p=body.top_p,
            seed=body.seed,
            stop=stop_strings(body.stop),
            stop_at_eot=not body.ignore_eos,
            speculate=body.speculate,
        )
        shape = ChunkShape(f"cmpl-{uuid.uuid4().hex}", int(time.time()), self.model_name)
        if body.stream:
            return await self.stream_response(requests, shape, body.stream_options)
        results = await self.run_to_end(requests, shape.id)
        return CompletionResponse(
            id=shape.id,
            created=shape.created,
            model=self.model_name,
            choices=[
                CompletionChoice(text=r["text"], index=i, finish_reason=r["finish_reason"])
                for i, r in enumerate(results)
            ],
            usage=total_usage(requests, results),
        )

    async def chat_completions(
        self, body: ChatCompletionRequest
    ) -> ChatCompletionResponse | StreamingResponse:
        max_tokens = body.max_completion_tokens or body.max_tokens or self.settings.max_tokens_limit
        self.check_common(body.model, body.n, max_tokens)
        if body.logprobs:
            raise BadRequest("logprobs: not supported", "logprobs")
        if body.tools:
            raise BadRequest("tools: tool calls are not supported", "tools")
        messages = chat_messages(body.messages)
        requests = await asyncio.to_thread(
            self.chat_requests,
            messages,
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_k=body.top_k,
            top_p=body.top_p,
            seed=body.seed,
            stop=stop_strings(body.stop),
            stop_at_eot=not body.ignore_eos,  # the template's end-of-turn token ends the answer
            speculate=body.speculate,
        )
        shape = ChunkShape(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), self.model_name, True)
        if body.stream:
            return await self.stream_response(requests, shape, body.stream_options)
        (result,) = await self.run_to_end(requests, shape.id)
        return ChatCompletionResponse(
            id=shape.id,
            created=shape.created,
            model=self.model_name,
            choices=[
                ChatChoice(
                    index=0,
                    message=ChatMessageOut(content=result["text"]),
                    finish_reason=result["finish_reason"],
                )
            ],
            usage=total_usage(requests, [result]),
        )

    async def playground(self) -> HTMLResponse:
        return HTMLResponse(PLAYGROUND.read_text(encoding="utf-8"))

    async def complete(self, body: CompleteRequest) -> CompleteResponse:
        self.check_max_tokens(body.max_tokens)
        (request,) = await asyncio.to_thread(
            self.requests,
            body.code,
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            top_k=body.top_k or None,
        )
        (result,) = await self.run_to_end([request], f"cmpl-{uuid.uuid4().hex}")
        return CompleteResponse(
            completion=result["text"],
            full_code=body.code + result["text"],
            tokens_generated=result["completion_tokens"],
            finish_reason=result["finish_reason"],
            model=self.model_name,
        )

    # -- from HTTP requests to generator requests ------------------------------------------

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
            except RequestError as err:  # the engine's own check, naming the field
                raise BadRequest(str(err), err.field) from None
            requests.append(request)
        return requests

    def chat_requests(
        self, messages: list[ChatMessage], **sampling: Any
    ) -> list[GenerationRequest]:
        """The conversation rendered with the checkpoint's chat template, as one request."""
        if not self.chat_template:
            raise BadRequest(
                f"model: {self.model_name!r} has no chat template (its checkpoint records "
                "none), so it cannot chat; use /v1/completions",
                "model",
            )
        try:
            prompt = render_chat(self.chat_template, messages, self.template_tokens)
        except ChatTemplateError as err:
            raise BadRequest(str(err), "messages") from None
        return self.requests(prompt, **sampling)

    def check_common(self, model: str | None, n: int, max_tokens: int) -> None:
        """What completions and chat check alike: the model's name, n, max_tokens."""
        if model is not None and model != self.model_name:
            raise HTTPException(
                404, f"model: {model!r} is not served here; use {self.model_name!r}"
            )
        if n != 1:
            raise BadRequest("n: only n=1 is supported", "n")
        self.check_max_tokens(max_tokens)

    def check_max_tokens(self, max_tokens: int) -> None:
        if max_tokens > self.settings.max_tokens_limit:
            raise BadRequest(
                f"max_tokens: {max_tokens} is above this service's limit of "
                f"{self.settings.max_tokens_limit}",
                "max_tokens",
            )

    async def stream_response(
        self, requests: list[GenerationRequest], shape: ChunkShape, options: StreamOptions | None
    ) -> StreamingResponse:
        started = await self.start_streams(requests, shape.id)
        events = completion_events(
            started, requests, shape, options or StreamOptions(), self.settings.retry_after_s
        )
        return StreamingResponse(events, media_type="text/event-stream")

    async def run_to_end(
        self, requests: list[GenerationRequest], request_id: str
    ) -> list[dict[str, Any]]:
        return await self.within_timeout(
            all_or_none(self.complete_one(r, request_id) for r in requests)
        )

    def generate(self, request: GenerationRequest):
        """The generator's stream of updates for one prompt."""
        return self.generator.generate(request)

    async def first_update(self, stream) -> dict[str, Any]:
        """A stream's first update; 429 when the generators' queues are full."""
        try:
            return await stream.__anext__()
        except BackPressureError:
            self.metrics.rejected.inc()
            raise overloaded(self.settings.retry_after_s) from None
        except StopAsyncIteration:
            return call_failed("the generator's stream ended before its first update")
        except Exception as err:  # no replica, a replica that died
            return call_failed(f"{type(err).__name__}: {err}")

    async def start_streams(self, requests: list[GenerationRequest], completion_id: str):
        """Every prompt's stream with its first update, or an HTTP error (and none left
        running) when one of them is refused or fails before its first token."""
        streams = [self.generate(r) for r in requests]
        try:
            firsts = await all_or_none(self.first_update(s) for s in streams)
            for first in firsts:
                if failed(first) and first["finish_reason"] is not None:
                    raise generation_error(first, completion_id, self.settings.retry_after_s)
        except BaseException:
            for stream in streams:
                cancel_stream(stream)
            raise
        return list(zip(firsts, streams, strict=True))

    async def complete_one(self, request: GenerationRequest, completion_id: str) -> dict[str, Any]:
        """Run one prompt to the end; the merged result. A timeout or a failure elsewhere
        cancels the generator call, which frees its KV-cache slot."""
        stream = self.generate(request)
        last = None
        try:
            last = await self.first_update(stream)
            text = [last["text"]]
            if last["finish_reason"] is None:
                async for update in stream:
                    text.append(update["text"])
                    last = update
        except HTTPException:  # refused before it started (429)
            raise
        except Exception as err:  # the replica died mid-stream
            last = call_failed(f"{type(err).__name__}: {err}")
        finally:
            if last is None or last["finish_reason"] is None:
                cancel_stream(stream)
        if failed(last):
            raise generation_error(last, completion_id, self.settings.retry_after_s)
        return {**last, "text": "".join(text)}

    async def within_timeout(self, awaitable):
        timeout = self.settings.request_timeout_s
        try:
            return await asyncio.wait_for(awaitable, timeout=timeout)
        except asyncio.TimeoutError:
            raise HTTPException(
                504, f"generation took longer than request_timeout_s={timeout}"
            ) from None


async def all_or_none(awaitables) -> list:
    """Await them all; if one fails, cancel the others (asyncio.gather would leave them running)."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    stop = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stop) > MAX_STOP_STRINGS:
        raise BadRequest(f"stop: {len(stop)} stop strings; the limit is {MAX_STOP_STRINGS}", "stop")
    return tuple(stop)


def chat_messages(messages: list[ChatMessageIn]) -> list[ChatMessage]:
    """OpenAI's messages as plain (role, text) pairs; content given as a list of parts must
    be text parts (images and audio are not served)."""
    plain = []
    for i, message in enumerate(messages):
        content = message.content
        if isinstance(content, list):
            for j, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    raise BadRequest(
                        f"messages[{i}].content[{j}]: only text parts are supported, got "
                        f"{part.type!r}",
                        "messages",
                    )
            content = "".join(part.text for part in content)
        plain.append(ChatMessage(message.role, content or ""))
    return plain


def total_usage(requests: list[GenerationRequest], results: list[dict[str, Any]]) -> Usage:
    prompt_tokens = sum(len(r.prompt) for r in requests)
    return usage_of(prompt_tokens, sum(r["completion_tokens"] for r in results))


def call_failed(error: str) -> dict[str, Any]:
    """A generator call that failed (no replica, a dead one), as the update it never sent."""
    return {
        "text": "",
        "token_ids": [],
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "finish_reason": "error",
        "error": error,
        "error_kind": UNAVAILABLE,
    }


def read_api_key(settings: ServeSettings) -> str | None:
    """The service's API key: from api_key_file if set, else from $api_key_env; None: no auth."""
    if settings.api_key_file:
        try:
            key = Path(settings.api_key_file).read_text().strip()
        except OSError as err:
            raise ConfigError(f"api_key_file: cannot read {settings.api_key_file}: {err}") from None
        if not key:
            raise ConfigError(f"api_key_file: {settings.api_key_file} is empty")
        return key
    return os.environ.get(settings.api_key_env) or None
