"""``/chat/completions`` and ``/deployments/{name}/chat/completions``, plain or streamed (spec §3.5)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from itertools import chain
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from tunery.api.deps import PrincipalDep, ServicesDep
from tunery.api.disconnect import CancellingStream, until_disconnected
from tunery.api.edge import bounded
from tunery.api.schemas.chat import ChatCompletion, ChatCompletionRequest, chunk, delta_choice
from tunery.api.streaming import sse, sse_error
from tunery.domain.errors import ServiceError
from tunery.services.chat import ChoiceDelta, Completion, CompletionStream
from tunery.services.container import Services

router = APIRouter(tags=["chat"], route_class=bounded("chat"))


@router.post("/chat/completions", response_model=ChatCompletion)
async def chat_completions(
    request: Request, services: ServicesDep, principal: PrincipalDep, body: ChatCompletionRequest
) -> Response:
    return await _answer(request, services, principal.project_id, body, None)


@router.post("/deployments/{deployment}/chat/completions", response_model=ChatCompletion)
async def deployment_chat_completions(
    request: Request,
    deployment: str,
    services: ServicesDep,
    principal: PrincipalDep,
    body: ChatCompletionRequest,
) -> Response:
    return await _answer(request, services, principal.project_id, body, deployment)


async def _answer(
    request: Request, services: Services, project_id: str, body: ChatCompletionRequest, deployment: str | None
) -> Response:
    """Generate in a worker thread; a client that disconnects cancels its choices (streamed or not)."""
    cancel = threading.Event()
    chat = body.to_domain()

    def start() -> tuple[Completion | CompletionStream, ChoiceDelta | None]:
        result = services.chat.create(project_id, chat, deployment=deployment, cancel=cancel)
        # Wait for the first piece before answering, so a failure to start is still a proper HTTP error.
        first = next(result.deltas, None) if isinstance(result, CompletionStream) else None
        return result, first

    result, first = await until_disconnected(request, cancel, start)
    if isinstance(result, Completion):
        return JSONResponse(ChatCompletion.from_domain(result).model_dump(mode="json"))
    deltas = chain([first], result.deltas) if first is not None else iter(())
    return CancellingStream(_events(result, deltas, chat.include_usage), cancel, media_type="text/event-stream")


def _events(result: CompletionStream, deltas: Iterator[Any], include_usage: bool) -> Iterator[bytes]:
    started: set[int] = set()

    def chunks() -> Iterator[dict[str, Any]]:
        for delta in deltas:
            yield chunk(
                result.id, result.created, result.model, [delta_choice(delta, first=delta.index not in started)]
            )
            started.add(delta.index)
        if include_usage:
            yield chunk(result.id, result.created, result.model, [], usage=result.usage)

    try:
        yield from sse(chunks())
    except ServiceError as exc:
        yield sse_error(exc.message, exc.type, exc.code)
