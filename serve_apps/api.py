"""Request and response bodies: OpenAI's completions and chat completions APIs, and the
seed's /complete."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class StreamOptions(BaseModel):
    include_usage: bool = False  # a last chunk with the request's usage (OpenAI)
    continuous_usage_stats: bool = False  # usage in every chunk (vLLM's extension)


class Sampling(BaseModel):
    """What completions and chat share: how to sample, when to stop, how to answer."""

    model: str | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # not OpenAI's, but nanoGPT users expect it
    stop: str | list[str] | None = None
    seed: int | None = None
    ignore_eos: bool = False  # vLLM's extension: run to max_tokens (benchmarks)
    speculate: bool = True  # raygpt's: false opts out of the service's speculative decoding
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1


class CompletionRequest(Sampling):
    """POST /v1/completions. Fields OpenAI clients send that raygpt has no use for (user,
    presence_penalty, ...) are accepted and ignored; unsupported ones that would change the
    result (n > 1, logprobs, echo) are refused with 400."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = Field(16, ge=1)
    logprobs: int | None = None
    echo: bool = False


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TextPart(BaseModel):
    """One part of a message's content in OpenAI's list form; only text parts are served."""

    type: str
    text: str | None = None


class ChatMessageIn(BaseModel):
    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None


class ChatCompletionRequest(Sampling):
    """POST /v1/chat/completions. As for completions: fields a client sends that change
    nothing here are ignored; those that would change the result (n > 1, logprobs, tools)
    are refused with 400."""

    messages: list[ChatMessageIn]
    max_tokens: int | None = Field(None, ge=1)  # the older name
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's current name
    logprobs: bool = False
    tools: list | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "raygpt"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class CompleteRequest(BaseModel):
    """POST /complete: the seed's code-completion API."""

    code: str
    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.8, ge=0, le=2)
    top_k: int | None = Field(200, ge=0)


class CompleteResponse(BaseModel):
    completion: str
    full_code: str
    tokens_generated: int
    finish_reason: Literal["stop", "length"]
    model: str
