"""A torch-free engine for the engine-process tests; the child process imports this module to build it.

``request_id`` picks the behaviour: ``""`` streams ``max_tokens`` numbered tokens and stops; ``"forever"``
streams until cancelled; ``"error"`` raises ``InvalidRequest``; ``"timeout"`` raises ``AdapterLoadTimeout``;
``"crash"`` ends the process; ``"hog"`` takes 600 MB and streams until cancelled; ``"cancelled"`` answers
how many requests this process has seen cancelled; ``"pid"`` answers the process id; ``"stuck"`` blocks for
good with the engine busy and no pass finishing (a kernel that never returns; the process stays alive and
its heartbeat goes on); ``"slow:S"`` streams ``max_tokens`` tokens, each after a pass of ``S`` seconds.
``progress()`` counts every streamed token as a pass and is busy while any request streams (or is stuck).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from tunery.domain.errors import InvalidRequest
from tunery.inference.engine import GenerationChunk, GenerationRequest
from tunery.inference.errors import AdapterLoadTimeout

_PACE_S = 0.005  # between tokens of an endless stream, so it does not flood the pipe


class FakeEngine:
    def __init__(self) -> None:
        self.cancelled = 0
        self.hogs: list[bytearray] = []
        self._lock = threading.Lock()
        self.passes = 0
        self.running = 0

    def generate(self, request: GenerationRequest) -> Iterator[GenerationChunk]:
        with self._lock:
            self.running += 1
        try:
            yield from self._generate(request)
        finally:
            with self._lock:
                self.running -= 1

    def _generate(self, request: GenerationRequest) -> Iterator[GenerationChunk]:
        kind = request.request_id
        if kind == "error":
            raise InvalidRequest("The fake engine refuses this.", param="messages")
        if kind == "timeout":
            raise AdapterLoadTimeout("Adapter 'x' could not be loaded within 1 s.", param="model")
        if kind == "crash":
            os._exit(3)
        if kind in {"cancelled", "pid"}:
            answer = str(self.cancelled if kind == "cancelled" else os.getpid())
            yield GenerationChunk(text=answer, token_ids=[1], finish_reason="stop", completion_tokens=1)
            return
        if kind == "stuck":
            threading.Event().wait()  # never set: stuck for good, busy, no pass ever finishes
        pace = float(kind.removeprefix("slow:")) if kind.startswith("slow:") else 0.0
        if kind == "hog":
            block = bytearray(600 * 1024**2)
            block[::4096] = b"x" * len(block[::4096])  # touch every page: resident, not just reserved
            self.hogs.append(block)
        endless = kind in {"forever", "hog"}
        cancel = request.cancel or threading.Event()
        count = 0
        while endless or count < request.params.max_tokens:
            if cancel.is_set():
                with self._lock:
                    self.cancelled += 1
                return
            if pace:
                cancel.wait(pace)  # one slow pass
            count += 1
            with self._lock:
                self.passes += 1
            last = not endless and count == request.params.max_tokens
            yield GenerationChunk(
                text=f"t{count} ",
                token_ids=[count],
                finish_reason="length" if last else None,
                prompt_tokens=len(request.prompt_ids),
                completion_tokens=count,
            )
            if endless:
                cancel.wait(_PACE_S)

    def active_rows(self) -> int:
        return 0

    def progress(self) -> tuple[int, bool]:
        with self._lock:
            return self.passes, self.running > 0

    def adapter_memory(self) -> dict[str, dict[str, int | None]]:
        return {"m": {"loaded": 1, "loaded_bytes": 3 * 2**20, "budget_bytes": 8 * 2**20}}

    def generated_tokens(self) -> int:
        return 0

    def close(self) -> None:
        self.hogs.clear()


def fake_factory(model_dirs: Callable[[str], Path]) -> FakeEngine:
    return FakeEngine()
