"""A small client for an OpenAI-compatible service (raygpt's, vLLM's, ...): JSON over HTTP
with the standard library, an API key when there is one, and the service's own error
message when it refuses a request."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from raygpt.errors import RaygptError


class ServiceError(RaygptError):
    """The service answered with an error (its status and message), or did not answer."""


class ServiceClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 600) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.api_key, self.timeout_s = api_key, timeout_s

    def get(self, path: str) -> dict[str, Any]:
        return self._send(urllib.request.Request(f"{self.base_url}{path}", headers=self._headers()))

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        return self._send(urllib.request.Request(f"{self.base_url}{path}", data, self._headers()))

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _send(self, request: urllib.request.Request) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            try:
                message = json.loads(err.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = err.reason
            raise ServiceError(f"{err.code}: {message}") from None
        except (urllib.error.URLError, OSError) as err:
            raise ServiceError(f"{request.full_url}: cannot reach the service ({err})") from None
