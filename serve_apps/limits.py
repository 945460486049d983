"""The request-body limit, enforced while the body is read (not only from its header)."""

from __future__ import annotations

from fastapi import HTTPException

from serve_apps.errors import error_response


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes is 413. A Content-Length over it is refused
    before anything is read; a chunked upload is refused the moment it passes the limit, and
    the rest of it is never read (nor tokenized)."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            response = error_response(413, self.message(int(length)))
            await response(scope, receive, send)
            return
        received = 0

        async def receive_within_limit():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # FastAPI passes an HTTPException raised while reading the body through
                    # to the app's handler: the client gets the 413 in OpenAI's shape.
                    raise HTTPException(413, self.message(received, at_least=True))
            return message

        await self.app(scope, receive_within_limit, send)

    def message(self, size: int, at_least: bool = False) -> str:
        more = "more than " if at_least else ""
        return f"the request body is {more}{size} bytes; the limit is {self.limit}"
