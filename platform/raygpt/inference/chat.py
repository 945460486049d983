"""Chat prompts: a conversation rendered with the checkpoint's own chat template.

The template is the Jinja2 text HF keeps in tokenizer_config.json (and GGUF files keep as
`tokenizer.chat_template`). It is a user's file, so it runs in Jinja2's immutable sandbox
(no attribute access to Python internals, no mutation), with the same environment settings
and helpers transformers gives it, so a template renders here as it does there. The rendered
text holds the special-token markers (<|im_start|>, <|im_end|>) as text; the model's BPE
tokenizer turns them into their special ids.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from raygpt.errors import RaygptError

ROLES = ("system", "user", "assistant")


class ChatTemplateError(RaygptError):
    """The model has no chat template, or its template fails on this conversation."""


@dataclass(frozen=True)
class ChatMessage:
    role: str  # system, user or assistant
    content: str


def render_chat(
    template: str | None,
    messages: Sequence[ChatMessage],
    special_tokens: dict[str, str] | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for `messages`, ending where the assistant's answer starts.
    `special_tokens` maps bos_token/eos_token/... to their text, as templates expect."""
    if not template:
        raise ChatTemplateError(
            "this model has no chat template (its checkpoint records none): "
            "use /v1/completions, or serve a chat model"
        )
    if not messages:
        raise ChatTemplateError("messages: give at least one message")
    for i, message in enumerate(messages):
        if message.role not in ROLES:
            raise ChatTemplateError(
                f"messages[{i}].role: {message.role!r} is not one of {', '.join(ROLES)}"
            )
    try:
        compiled = _compile(template)
        return compiled.render(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=add_generation_prompt,
            **(special_tokens or {}),
        )
    except ChatTemplateError:
        raise
    except Exception as err:  # jinja2's TemplateError, SecurityError, or the template's own
        raise ChatTemplateError(f"the chat template failed: {type(err).__name__}: {err}") from None


@functools.lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2 import ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # transformers' settings: blocks trimmed, loop controls, and the helpers templates call.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"the chat template refused this conversation: {message}")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)


def template_tokens(special_tokens: dict[str, int], decode) -> dict[str, str]:
    """bos_token, eos_token, ... as text for a template, from a checkpoint's special ids."""
    names = {"bos": "bos_token", "eos": "eos_token", "pad": "pad_token", "unk": "unk_token"}
    return {names[name]: decode([token]) for name, token in special_tokens.items() if name in names}
