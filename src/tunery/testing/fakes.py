"""Fakes with behaviour, for tests and demos: an engine that answers without a model.

``FakeEngine`` streams a reply word by word: a scripted one (``enqueue``), else ``"Hello from <adapter>"``
(or ``"Hello from <base model>"``). It honours ``max_tokens`` (one word = one token) and stop strings, and
counts prompt tokens, so chat-route tests can be exact. Like llm's MockModel.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator

from tunery.inference.engine import GenerationChunk, GenerationRequest


class FakeEngine:
    def __init__(self) -> None:
        self._replies: deque[str] = deque()
        self._lock = threading.Lock()
        self.requests: list[GenerationRequest] = []
        self.closed = False

    def enqueue(self, *replies: str) -> None:
        with self._lock:
            self._replies.extend(replies)

    def generate(self, request: GenerationRequest) -> Iterator[GenerationChunk]:
        with self._lock:
            self.requests.append(request)
            reply = (
                self._replies.popleft() if self._replies else f"Hello from {request.adapter_name or request.base_model}"
            )
        words = reply.split(" ")
        emitted = ""
        reason = "stop"
        count = 0
        for i, word in enumerate(words):
            if count >= request.params.max_tokens:
                reason = "length"
                break
            piece = word if i == 0 else " " + word
            candidate = emitted + piece
            cut = min((candidate.find(s) for s in request.params.stop if s in candidate), default=-1)
            if cut >= 0:
                piece = candidate[:cut][len(emitted) :]
                if piece:
                    yield GenerationChunk(text=piece, token_ids=[i])
                count += 1
                break
            emitted = candidate
            count += 1
            yield GenerationChunk(text=piece, token_ids=[i])
        yield GenerationChunk(
            text="",
            finish_reason=reason,
            prompt_tokens=len(request.prompt_ids),
            completion_tokens=count,  # type: ignore[arg-type]
        )

    def active_rows(self) -> int:
        return 0  # the fake answers at once; nothing stays in flight

    def generated_tokens(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True
