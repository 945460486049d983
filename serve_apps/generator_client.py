"""How the ingress reaches its generator: a Serve handle to the Generator deployment (the
deployment graph), or a Generator living in the ingress replica itself (`colocate: true`).

Both answer the same four calls, so the ingress's routes, limits and streaming do not know
which one they talk to. A colocated generator costs no process and no hop per chunk: on a
small CPU machine each Ray worker process wakes the cores the engine's threads run on (see
BENCHMARKS.md, "one process per replica"); the graph scales HTTP and engines apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

from ray.serve.handle import DeploymentHandle


class GeneratorStream(Protocol):
    """One prompt's updates (dicts of GenerationUpdate's fields), stoppable at any time."""

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...
    async def __anext__(self) -> dict[str, Any]: ...
    def cancel(self) -> None: ...


class GeneratorClient(Protocol):
    async def info(self) -> dict[str, Any]: ...
    async def vocabulary(self) -> dict[str, Any]: ...
    async def stats(self) -> dict[str, Any]: ...
    def generate(self, request) -> GeneratorStream: ...
    def check_health(self) -> None: ...


class RemoteGenerator:
    """The Generator deployment, through its handle: Serve routes each call to a replica."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def info(self) -> dict[str, Any]:
        return await self.handle.info.remote()

    async def vocabulary(self) -> dict[str, Any]:
        return await self.handle.vocabulary.remote()

    async def stats(self) -> dict[str, Any]:
        return await self.handle.stats.remote()

    def generate(self, request) -> GeneratorStream:
        return self.handle.options(stream=True).generate.remote(request)

    def check_health(self) -> None:
        """Nothing to check here: Serve probes the Generator's replicas itself."""


class LocalGenerator:
    """A Generator built in this process; its streams run on this replica's event loop."""

    def __init__(self, generator) -> None:
        self.generator = generator

    async def info(self) -> dict[str, Any]:
        return self.generator.info()

    async def vocabulary(self) -> dict[str, Any]:
        return self.generator.vocabulary()

    async def stats(self) -> dict[str, Any]:
        return self.generator.stats()

    def generate(self, request) -> GeneratorStream:
        return LocalStream(self.generator.generate(request))

    def check_health(self) -> None:
        self.generator.check_health()


class LocalStream:
    """Generator.generate's async generator with a handle stream's cancel(). Closing it runs
    its cleanup (the engine frees the request's slot). A stream being awaited by a task is
    closed by that task's cancellation, which the caller sends first; one idle between
    updates (or never started) is closed here."""

    def __init__(self, updates) -> None:
        self._updates = updates

    def __aiter__(self) -> LocalStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self._updates.__anext__()

    def cancel(self) -> None:
        if not self._updates.ag_running:
            closing = asyncio.ensure_future(self._updates.aclose())
            _CLOSING.add(closing)  # the loop holds tasks weakly: keep it until it is done
            closing.add_done_callback(_CLOSING.discard)


_CLOSING: set[asyncio.Future] = set()
