"""``/chat/completions`` and ``/deployments/{name}/chat/completions``, plain or streamed (spec §3.5)."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from typing import Annotated, Any

from fastapi import APIRouter, Body, Response
from fastapi.responses import JSONResponse, StreamingResponse

from tunery.api.deps import PrincipalDep, ServicesDep
from tunery.api.edge import bounded
from tunery.api.schemas.chat import ChatCompletion, chunk, delta_choice
from tunery.api.streaming import sse, sse_error
from tunery.domain.errors import ServiceError
from tunery.services.chat import Completion, CompletionStream

router = APIRouter(tags=["chat"], route_class=bounded("chat"))


@router.post("/chat/completions", response_model=ChatCompletion)
def chat_completions(
    services: ServicesDep, principal: PrincipalDep, body: Annotated[dict[str, Any], Body()]
) -> Response:
    return _respond(services.chat.create(principal.project_id, body), body)


@router.post("/deployments/{deployment}/chat/completions", response_model=ChatCompletion)
def deployment_chat_completions(
    deployment: str, services: ServicesDep, principal: PrincipalDep, body: Annotated[dict[str, Any], Body()]
) -> Response:
    return _respond(services.chat.create(principal.project_id, body, deployment=deployment), body)


def _respond(result: Completion | CompletionStream, body: dict[str, Any]) -> Response:
    if isinstance(result, Completion):
        return JSONResponse(ChatCompletion.from_domain(result).model_dump(mode="json"))
    # Wait for the first piece before answering, so a failure to start is still a proper HTTP error.
    first = next(result.deltas, None)
    deltas = chain([first], result.deltas) if first is not None else iter(())
    options = body.get("stream_options") or {}
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    return StreamingResponse(_events(result, deltas, include_usage), media_type="text/event-stream")


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
