"""Errors, answered in OpenAI's error shape (`{"error": {"message", "type", "param", "code"}}`).

What a client caused names the field or the limit. What went wrong inside (a failed row, a
dead replica) is logged with the request's id, and the client gets that id, never the
exception's text.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from raygpt.inference.engine import INTERNAL, INVALID, OVERLOADED, UNAVAILABLE

logger = logging.getLogger("ray.serve")

KINDS = {
    401: "authentication_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
}


class BadRequest(HTTPException):
    """400, naming the request field at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(400, message)
        self.param = param


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    kind = KINDS.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def error_response(
    status: int, message: str, param: str | None = None, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


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


def overloaded(retry_after_s: float) -> HTTPException:
    """429: the service is at capacity; the client should retry after a pause."""
    return HTTPException(
        429,
        f"the service is at capacity; retry after {retry_after_s:g} s",
        headers={"Retry-After": str(max(0, round(retry_after_s)))},
    )


def generation_error(
    update: dict[str, Any], request_id: str, retry_after_s: float
) -> HTTPException:
    """The HTTP error for a generator update that ended in an error (logged here)."""
    kind = update.get("error_kind") or INTERNAL
    if kind == INVALID:  # the engine's own check, in words meant for the client
        field = str(update["error"]).split(":", 1)[0]
        return BadRequest(update["error"], field)
    if kind == OVERLOADED:
        return overloaded(retry_after_s)
    logger.warning("request %s failed (%s): %s", request_id, kind, update.get("error"))
    if kind == UNAVAILABLE:
        return HTTPException(503, f"the model is not available right now (request {request_id})")
    return HTTPException(
        500, f"generation failed (request {request_id}); the service's log has the details"
    )


def failed(update: dict[str, Any] | None) -> bool:
    """Whether a stream's last update is anything but a finished completion."""
    return update is None or update["finish_reason"] not in ("stop", "length")
