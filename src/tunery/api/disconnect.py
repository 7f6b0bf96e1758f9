"""Stop work for a client that left: a watcher on the ASGI ``receive`` channel sets a ``threading.Event``.

The chat service runs in a worker thread and generates in the engine's thread; neither sees the socket.
``until_disconnected`` runs the blocking call and, if ``http.disconnect`` arrives first, sets the event the
service passed to the engine (its rows leave the batch at the next step). ``CancellingStream`` is a
``StreamingResponse`` that always listens for the disconnect (Starlette skips that on ASGI 2.4 servers)
and sets the event however the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

T = TypeVar("T")


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnected(request: Request, cancel: threading.Event, call: Callable[[], T]) -> T:
    """Run ``call`` in a worker thread; set ``cancel`` if the client disconnects first (then still wait)."""
    work = asyncio.ensure_future(run_in_threadpool(call))
    watcher = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not work.done():
            cancel.set()
        watcher.cancel()
    return await work


class CancellingStream(StreamingResponse):
    """A streamed response that sets ``cancel`` when it ends: finished, failed, or the client gone."""

    def __init__(self, content: Any, cancel: threading.Event, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._cancel = cancel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    with contextlib.suppress(OSError):  # the client went away mid-write
                        await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await _disconnected(receive)
                group.cancel_scope.cancel()
        finally:
            self._cancel.set()
