"""Errors a client can cause, answered in OpenAI's error shape with a message that names the
field or the limit (`{"error": {"message", "type", "param", "code"}}`)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

KINDS = {401: "authentication_error", 404: "not_found_error", 413: "request_too_large"}


class BadRequest(HTTPException):
    """400, naming the request field at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(400, message)
        self.param = param


def error_response(
    status: int, message: str, param: str | None = None, headers: dict | None = None
) -> JSONResponse:
    kind = KINDS.get(status, "invalid_request_error" if status < 500 else "server_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
    return error_response(
        exc.status_code, str(exc.detail), getattr(exc, "param", None), exc.headers
    )


async def invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(422, *describe_invalid(exc.errors()))


def describe_invalid(errors) -> tuple[str, str | None]:
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


def raise_if_failed(update: dict[str, Any] | None) -> None:
    """A generator stream that ended without a finished completion is a 500."""
    if update is None or update["finish_reason"] not in ("stop", "length"):
        reason = "no result" if update is None else update["error"] or update["finish_reason"]
        raise HTTPException(500, f"generation failed: {reason}")
