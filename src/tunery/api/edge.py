"""The request edge: every body is bounded as it arrives and every JSON body is parsed once, here.

A route opts in by belonging to a router built with ``route_class=bounded("<kind>")``; ``BODY_LIMITS``
says, in one place, how many bytes each kind of route accepts (``create_app`` sets the upload limit from
the settings). Before the handler runs the route

- refuses a declared ``Content-Length`` over the limit, and counts the bytes of a chunked body as they
  arrive, so a too-large body is a 413 (``code: requestTooLarge``) without being read, parsed or spooled;
- runs a DELETE once more after giving back the disk's space reserve when the disk is full, so every
  delete works on a full disk;
- parses a JSON body and refuses strings that cannot be stored (lone UTF-16 surrogates such as
  ``"\\ud83d"``, valid JSON but not encodable as UTF-8) with a 400 naming the param, so no service and no
  table ever sees one.

Written by hand because FastAPI's own ``max_body_size`` answers a plain-text 413 (not the API's error
shape) and has no hook for the surrogate check; this stays one small class over ``APIRoute``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from functools import cache
from typing import Any

from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from starlette.types import Message

from tunery.domain.errors import InsufficientStorage, InvalidRequest, PayloadTooLarge
from tunery.storage.disk import is_disk_full

KIB = 1024
MIB = 1024 * KIB

# Bytes a request body may have, by kind of route. "upload", "import" and "part" are replaced by the configured
# limits.
BODY_LIMITS: dict[str, int] = {
    "default": 256 * KIB,
    "chat": 1 * MIB,  # far above any context the served models take; checked again in tokens
    "jobs": 256 * KIB,
    "evals": 1 * MIB,
    "deployments": 64 * KIB,
    "upload": 512 * MIB,
    "import": 2048 * MIB,  # an adapter archive; replaced by the configured import limit
    "part": 64 * MIB,  # one Uploads API part; replaced by the configured part limit
}
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def body_limit(request: Request, kind: str) -> int:
    limits: dict[str, int] = getattr(request.app.state, "body_limits", BODY_LIMITS)
    return limits.get(kind, limits.get("default", BODY_LIMITS["default"]))


def too_large(size: int | None, limit: int, kind: str) -> PayloadTooLarge:
    said = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    upload = kind == "upload"
    return PayloadTooLarge(
        f"The request body is {said}; this endpoint accepts at most {limit} bytes"
        + (" (the file plus the form around it)." if upload else "."),
        param="file" if upload else None,
        code="fileTooLarge" if upload else "requestTooLarge",
    )


class _Counter:
    """Wraps ``receive`` to count body bytes as they arrive; past the limit it stops reading."""

    def __init__(self, receive: Callable[[], Coroutine[Any, Any, Message]], limit: int, kind: str) -> None:
        self._receive = receive
        self.limit = limit
        self.kind = kind
        self.size = 0
        self.exceeded = False

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.size += len(message.get("body", b""))
            if self.size > self.limit:
                self.exceeded = True
                raise too_large(None, self.limit, self.kind)
        return message


class BoundedRoute(APIRoute):
    """An ``APIRoute`` whose body is bounded by ``BODY_LIMITS[body_kind]`` and whose JSON is checked."""

    body_kind = "default"

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        kind = self.body_kind

        async def bounded_handler(request: Request) -> Response:
            if request.method == "DELETE":
                return await _deleting(handler, request)
            if request.method not in BODY_METHODS:
                return await handler(request)
            limit = body_limit(request, kind)
            declared = request.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise too_large(int(declared), limit, kind)
            counter = _Counter(request.receive, limit, kind)  # type: ignore[arg-type]
            request._receive = counter  # the body is read through the counter, by us or by the form parser
            if _is_json(request):
                body = bytearray()
                async for piece in request.stream():
                    body += piece
                request._body = bytes(body)
                parsed = _parse(request._body)
                if parsed is not _INVALID:
                    request._json = parsed
            try:
                return await handler(request)
            except Exception:
                if counter.exceeded:  # the form parser wraps our error in a generic 400
                    raise too_large(None, limit, kind) from None
                raise

        return bounded_handler


@cache
def bounded(kind: str) -> type[BoundedRoute]:
    """The route class for routers whose bodies are bounded by ``BODY_LIMITS[kind]``."""
    if kind not in BODY_LIMITS:
        raise ValueError(f"unknown body kind {kind!r}; add it to BODY_LIMITS")
    return type(f"BoundedRoute_{kind}", (BoundedRoute,), {"body_kind": kind})


_INVALID = object()


async def _deleting(handler: Callable[[Request], Coroutine[Any, Any, Response]], request: Request) -> Response:
    """Run a DELETE; if the disk is full, give back the space reserve and run it once more.

    A full disk must not stop the one thing that frees it, whatever is deleted (a file, job, model, eval,
    deployment, endpoint ...): SQLite needs room in its write-ahead log even to delete a row. Once the delete
    has run, the reserve is set aside again where there is room. A DELETE has no body, so running its
    handler a second time is safe; every delete is idempotent up to its first success.
    """
    try:
        return await handler(request)
    except Exception as exc:
        files = request.app.state.services.files
        if not (isinstance(exc, InsufficientStorage) or is_disk_full(exc)) or not files.release_reserve():
            raise
    try:
        return await handler(request)
    finally:
        await run_in_threadpool(files.reserve_space)


def _is_json(request: Request) -> bool:
    content_type = request.headers.get("content-type", "")
    return not content_type.startswith(("multipart/", "application/x-www-form-urlencoded"))


def _parse(body: bytes) -> Any:
    """The JSON value, or ``_INVALID`` (FastAPI then answers its own JSON error). Unstorable strings raise."""
    if not body:
        return _INVALID
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return _INVALID
    check_encodable(value)
    return value


def check_encodable(value: Any) -> None:
    """Raise InvalidRequest naming the first string (key or value) that UTF-8 cannot encode.

    JSON may escape any UTF-16 code unit, so ``"\\ud83d"`` parses to a lone surrogate that no database, log
    or response encoder can write. The whole value is checked at once; it is walked only to name the param.
    """
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        path = _unencodable_path(value, ())
        param = param_name(path) if path else None
        raise InvalidRequest(
            f"Invalid value for '{param or 'body'}': the string contains an unpaired UTF-16 surrogate "
            "(such as \\ud83d), which is not valid Unicode text.",
            param=param,
            code="invalidPayload",
        ) from None


def param_name(path: tuple[Any, ...] | list[Any]) -> str:
    """``("messages", 0, "content")`` -> ``messages[0].content``, the way OpenAI names params."""
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


def _unencodable_path(value: Any, path: tuple[Any, ...]) -> tuple[Any, ...] | None:
    if isinstance(value, str):
        return path if not _encodes(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if not _encodes(key):
                return (*path, key.encode("utf-8", "backslashreplace").decode())
            found = _unencodable_path(item, (*path, key))
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _unencodable_path(item, (*path, index))
            if found is not None:
                return found
    return None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
