"""Two serving backends behind one ``Engine``: Tunery's batching engine and llama.cpp (``llama_cpp``).

Which one answers a request is decided when it arrives, from what is in flight (``inference.llama_cpp``):

* ``auto``: llama.cpp while no request for another model (base model + adapter) is in flight — the load where
  it was measured about 2× faster per stream (1.4× since Tunery's engine got faster, and slower than it from
  about 4 streams on one model: ``bench/RESULTS.md``, so ``auto`` now pays only where one stream is served at
  a time) — and Tunery's engine while requests for different models are,
  since only Tunery's engine decodes different adapters in one batch (there it was measured 1.6–2.5× ahead,
  with a time to first token of 1 s against 8–37 s). A llama.cpp server is only *started* for a model when no
  other model had a request in the last ``window_s`` seconds: without that, mixed traffic (8 adapters at 16
  clients, measured) kept starting servers in the rare moments one model was alone in flight, and both
  backends fought over the cores. Requests already running stay where they are; the switch happens request by
  request, so an answer never changes backend half-way.
* ``always``: llama.cpp for every request it can take.

Either way a request llama.cpp cannot take — a prompt and answer longer than one of its slots, a base model it
cannot read, every server busy, a server that fails to start — goes to Tunery's engine, which is built only when
first needed (a deployment that llama.cpp serves alone never loads torch).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Literal

from tunery.domain.errors import Unavailable
from tunery.inference.engine import Engine, GenerationChunk, GenerationRequest
from tunery.inference.llama_cpp import LlamaCppEngine, ServerKey

log = logging.getLogger(__name__)

Policy = Literal["auto", "always"]


class RoutedEngine:
    def __init__(
        self,
        primary: Callable[[], Engine],
        llama: LlamaCppEngine,
        policy: Policy = "auto",
        *,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window_s = window_s
        self._clock = clock
        self._seen: dict[ServerKey, float] = {}  # when each model's latest request arrived
        self._primary_factory = primary
        self._primary: Engine | None = None
        self._llama = llama
        self._policy = policy
        self._lock = threading.Lock()
        self._primary_lock = threading.Lock()  # building Tunery's engine takes seconds; routing does not wait on it
        self._in_flight: Counter[ServerKey] = Counter()
        self.routed: Counter[str] = Counter()  # requests per backend since start ("llama.cpp", "tunery")

    def generate(self, request: GenerationRequest) -> Iterator[GenerationChunk]:
        key: ServerKey = (request.base_model, request.adapter_dir)
        with self._lock:
            now = self._clock()
            self._seen = {k: t for k, t in self._seen.items() if now - t <= self._window_s}
            others = any(count and other != key for other, count in self._in_flight.items())
            mixed = any(other != key for other in self._seen)
            self._seen[key] = now
            wanted = self._policy == "always" or (not others and (self._llama.running(key) or not mixed))
            self._in_flight[key] += 1
        try:
            chunks = self._open_on_llama(request) if wanted and self._llama.fits(request) else None
            backend = "llama.cpp" if chunks is not None else "tunery"
            if chunks is None:
                chunks = self._primary_engine().generate(request)
            with self._lock:
                self.routed[backend] += 1
            yield from chunks
        finally:
            with self._lock:
                self._in_flight[key] -= 1
                if not self._in_flight[key]:
                    del self._in_flight[key]

    def active_rows(self) -> int:
        primary = self._primary
        return self._llama.active_rows() + (primary.active_rows() if primary is not None else 0)

    def generated_tokens(self) -> int:
        primary = self._primary
        return self._llama.generated_tokens() + (primary.generated_tokens() if primary is not None else 0)

    def status(self) -> dict[str, Any]:
        primary = self._primary
        if primary is None:
            shown: dict[str, Any] = {"state": "not started"}
        else:
            status = getattr(primary, "status", None)
            shown = (
                dict(status()) if callable(status) else {"state": "running", "active_requests": primary.active_rows()}
            )
        return {
            **shown,
            "llama_cpp": {
                **self._llama.status(),
                "policy": self._policy,
                "window_s": self._window_s,
                "routed": dict(self.routed),
            },
        }

    def close(self) -> None:
        self._llama.close()
        with self._primary_lock:
            primary, self._primary = self._primary, None
        if primary is not None:
            primary.close()

    def _open_on_llama(self, request: GenerationRequest) -> Iterator[GenerationChunk] | None:
        try:
            return self._llama.open(request)
        except Unavailable as exc:  # a server that would not start: Tunery's engine answers instead
            log.warning("llama.cpp could not take a request for %s: %s", request.base_model, exc)
            return None

    def _primary_engine(self) -> Engine:
        with self._primary_lock:
            if self._primary is None:
                self._primary = self._primary_factory()
            return self._primary
