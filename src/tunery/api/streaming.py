"""Server-sent events exactly as the ``openai`` client parses them: ``data: <json>\\n\\n`` … ``data: [DONE]``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any


def sse(events: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    for event in events:
        yield f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()
    yield b"data: [DONE]\n\n"


def sse_error(message: str, type_: str, code: str | None) -> bytes:
    """An error after the stream started: the openai client raises it as an APIError."""
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return f"data: {json.dumps(body)}\n\n".encode()
