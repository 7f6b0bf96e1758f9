"""``EngineProcess``: the ``Engine`` run in a child process the server supervises; tokens stream back over a pipe.

The server process never imports torch for serving: each ``generate`` call sends the request down a
``multiprocessing`` pipe to a child (started with ``spawn``, so no locks or threads are inherited) that runs the
real engine (``HFEngine`` by default) and sends every chunk back as it is decoded. One reader thread per child
hands chunks to the waiting callers. The child runs each request in a thread of its own, so a request waiting
for its adapter never holds up the others.

Supervision: when the child dies — killed, crashed, over ``memory_limit_mb`` of resident memory (a watchdog
samples it twice a second and kills it), or hung (below) — every request in it fails at once with
``EngineRestarted`` (HTTP 503, "retry"), and a new child is started at once; requests arriving meanwhile
queue in the new child's pipe and are answered by it. A child that dies again within ``min_uptime_s`` of
starting is restarted after a growing pause (1 s doubling to 30 s), during which requests get a 503 at once
instead of piling up. The API process, its threads and the portal are untouched by any of this. ``status()``
reports the child's pid, state, resident and peak memory, the limit, the restarts and hangs, and the adapters'
memory against their budget (served on ``/health``).

Hangs: a thread of the child sends a heartbeat every second (or ``hang_timeout_s / 5``) carrying the engine's
progress — forward passes run so far and whether it has requests to run (``HFEngine.progress``) — and its
adapter memory. The watchdog kills the child as hung when, while it has work, either nothing at all has come
from it for ``hang_timeout_s`` (stopped with SIGSTOP, frozen, a deadlock holding the GIL) or heartbeats come but
its pass count has not moved for ``hang_timeout_s`` (stuck in a kernel, a deadlocked scheduler). A slow pass
is not a hang as long as each pass ends within ``hang_timeout_s`` (long prompts are read in chunks of
``max_prefill_tokens``, each a pass); loading a model or an adapter is not a pass and does not count.

Why by hand: ``multiprocessing``'s pools and managers neither stream results nor survive a killed worker with
its in-flight calls failed individually; this is a small request-id multiplexer over one ``Pipe``.
The parent side is torch-free; the child imports the engine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

from tunery.domain.errors import NotFound, ServiceError, Unavailable
from tunery.inference.engine import Engine, GenerationChunk, GenerationRequest, adapters_status
from tunery.inference.errors import EngineRestarted, GenerationError

log = logging.getLogger(__name__)

EngineFactory = Callable[[Callable[[str], Path]], Engine]
"""Builds the engine inside the child from a ``base model name -> weights folder`` lookup; must be picklable."""

_CANCEL_POLL_S = 0.1  # how often a waiting caller looks at its request's cancel event
_MEMORY_POLL_S = 0.5
_BEAT_S = 1.0  # the child's heartbeat period (shorter for a hang timeout under 5 s)
_START_GRACE_S = 120.0  # the least silence that counts as a hang before the child has said it is ready
_STOP_WAIT_S = 10.0
_MAX_BACKOFF_S = 30.0

# Messages, parent -> child: ("generate", rid, request, base_model, weights_dir) | ("cancel", rid) | ("stop",)
# child -> parent, in lists of: ("ready", pid) | ("beat", passes, busy, adapter_memory)
#                  | ("chunk", rid, text, token_ids, finish, prompt_tokens, completion_tokens)
#                  | ("error", rid, error_class, message, param, code)


@dataclass(frozen=True, slots=True)
class HFEngineOptions:
    """The child's default engine: ``HFEngine`` with these settings (picklable, unlike the engine)."""

    max_loaded_adapters: int | None = None
    adapter_cache_mb: float | None = 256
    max_batch_size: int = 16
    device: str = "auto"
    dtype: str = "auto"
    num_threads: int | None = None
    precision_cache: Path | None = None
    adapter_timeout_s: float | None = None
    max_prefill_tokens: int = 512
    prefix_cache_mb: int = 256
    lean_forward: bool = True
    native_attention: bool = True
    kernel_cache: Path | None = None

    def __call__(self, model_dirs: Callable[[str], Path]) -> Engine:
        from tunery.inference.hf_engine import HFEngine  # torch: in the child only

        return HFEngine(model_dirs, **dataclasses.asdict(self))


class _Stream:
    """One request in flight in one child: the caller waits on ``items``."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: queue.SimpleQueue[GenerationChunk | BaseException] = queue.SimpleQueue()


class _Child:
    """One engine process, its pipe and the requests in it."""

    def __init__(self, process: multiprocessing.process.BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.started = time.monotonic()
        self.ready = False
        self.streams: dict[int, _Stream] = {}
        self.lock = threading.Lock()  # guards streams and sending
        self.dead = False
        self.kill_reason: str | None = None
        self.peak_rss = 0
        self.last_message = self.started  # when anything (a heartbeat at least) last came from it
        self.passes: int | None = None  # the engine's pass count in its last heartbeat
        self.stalled_since: float | None = None  # busy with the same pass count since then (None: not busy)
        self.adapters: dict[str, Any] | None = None  # the engine's adapter memory, from its last heartbeat

    def open(self, rid: int, message: tuple[Any, ...]) -> _Stream:
        stream = _Stream()
        with self.lock:
            if self.dead:
                raise EngineRestarted("The inference engine process is restarting; retry the request.")
            self.streams[rid] = stream
            try:
                self.conn.send(message)
            except (OSError, ValueError) as exc:
                del self.streams[rid]
                raise EngineRestarted("The inference engine process is restarting; retry the request.") from exc
        return stream

    def cancel(self, rid: int) -> None:
        with self.lock:
            if self.streams.pop(rid, None) is not None and not self.dead:
                with contextlib.suppress(OSError, ValueError):  # the child is gone: nothing left to cancel
                    self.conn.send(("cancel", rid))

    def finish(self, rid: int) -> None:
        with self.lock:
            self.streams.pop(rid, None)


class EngineProcess:
    """An ``Engine`` whose model runs in a supervised child process.

    Args:
        model_dirs: base model name -> weights folder (such as ``bootstrap.BaseWeights``), called in the server
            process (it may prepare the folder); the child gets the folder.
        factory: builds the engine inside the child (default: ``HFEngineOptions()``); picklable.
        memory_limit_mb: the child's resident memory limit; over it the child is killed and restarted (its
            requests get a 503). None: no limit.
        min_uptime_s: a child that dies this soon after starting, a second time in a row or more, is restarted
            only after a pause: ``restart_backoff_s``, doubling with every further quick death (at most 30 s).
        hang_timeout_s: a child that has requests but sends nothing, or runs no forward pass, for this long is
            killed as hung (its requests get a 503) and restarted. None: no hang check.

    Thread-safe, like every ``Engine``. The first ``generate`` starts the child.
    """

    def __init__(
        self,
        model_dirs: Callable[[str], Path],
        factory: EngineFactory | None = None,
        *,
        memory_limit_mb: int | None = None,
        min_uptime_s: float = 10.0,
        restart_backoff_s: float = 1.0,
        hang_timeout_s: float | None = 300.0,
    ) -> None:
        if hang_timeout_s is not None and hang_timeout_s <= 0:
            raise ValueError("hang_timeout_s must be more than 0.")
        self._model_dirs = model_dirs
        self._factory: EngineFactory = factory if factory is not None else HFEngineOptions()
        self._memory_limit = memory_limit_mb * 1024**2 if memory_limit_mb else None
        self._min_uptime_s = min_uptime_s
        self._restart_backoff_s = restart_backoff_s
        self._hang_timeout_s = hang_timeout_s
        self._beat_s = min(_BEAT_S, hang_timeout_s / 5) if hang_timeout_s is not None else _BEAT_S
        self._hangs = 0
        self._quick_deaths = 0
        self._context = multiprocessing.get_context("spawn")
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._child: _Child | None = None
        self._closed = False
        self._restarts = 0
        self._backoff_s = 0.0
        self._not_before = 0.0
        self._last_exit: str | None = None
        self._generated = 0
        self._dirs: dict[str, Path] = {}
        self._watchdog = threading.Thread(target=self._watch, name="tunery-engine-watchdog", daemon=True)
        self._watchdog.start()

    # ------------------------------------------------------------------------------------------- Engine
    def generate(self, request: GenerationRequest) -> Iterator[GenerationChunk]:
        """Stream one request's output from the child; raises what the child's engine raised.

        Raises (from the iterator), besides the engine's own errors:
            EngineRestarted: the child died while this request was in it (it is being restarted).
            Unavailable: the engine is shut down, or restarting after repeated crashes.
        """
        weights = self._weights_dir(request.base_model)
        child = self._running_child()
        rid = next(self._ids)
        wire = dataclasses.replace(request, cancel=None)
        stream = child.open(rid, ("generate", rid, wire, request.base_model, str(weights)))
        finished = False
        try:
            while True:
                try:
                    item = stream.items.get(timeout=_CANCEL_POLL_S)
                except queue.Empty:
                    if request.cancel is not None and request.cancel.is_set():
                        return
                    continue
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
                if item.finish_reason is not None:
                    finished = True
                    return
        finally:
            if finished:
                child.finish(rid)
            else:
                child.cancel(rid)  # the caller went away: the child drops the row at its next step

    def active_rows(self) -> int:
        """Requests in the child now (waiting, prefilling or decoding)."""
        with self._lock:
            child = self._child
        return len(child.streams) if child is not None else 0

    def generated_tokens(self) -> int:
        """Tokens streamed back since this engine was built, over every child."""
        return self._generated

    def close(self) -> None:
        """Stop the child (its requests end with ``Unavailable``). Idempotent."""
        with self._lock:
            self._closed = True
            child, self._child = self._child, None
        if child is not None:
            self._stop(child)

    def status(self) -> dict[str, Any]:
        """What ``/health`` shows: the child's pid, state and memory, the limit, the restarts and hangs, the
        adapters' memory against its budget (per base model)."""
        with self._lock:
            child = self._child
            closed = self._closed
        state = "stopped" if closed else "idle"
        pid = rss = peak = adapters = None
        if child is not None:
            state = "running" if child.ready else "starting"
            pid = child.process.pid
            rss = _rss(pid)
            peak = child.peak_rss
            adapters = child.adapters
        elif not closed and self._restarts:
            state = "restarting"
        mib = 1024**2
        return {
            "isolation": "process",
            "state": state,
            "pid": pid,
            "rss_mb": round(rss / mib, 1) if rss is not None else None,
            "peak_rss_mb": round(peak / mib, 1) if peak else None,
            "memory_limit_mb": round(self._memory_limit / mib) if self._memory_limit else None,
            "restarts": self._restarts,
            "hangs": self._hangs,
            "hang_timeout_s": self._hang_timeout_s,
            "last_exit": self._last_exit,
            "active_requests": self.active_rows(),
            "adapters": adapters_status(adapters),
        }

    # ------------------------------------------------------------------------------------- supervision
    def _weights_dir(self, name: str) -> Path:
        known = self._dirs.get(name)
        if known is None:
            known = Path(self._model_dirs(name))  # NotFound / Unavailable raise in the caller, before the child
            self._dirs[name] = known
        return known

    def _running_child(self) -> _Child:
        with self._lock:
            if self._closed:
                raise Unavailable("The inference engine is shut down.")
            if self._child is not None:
                return self._child
            wait = self._not_before - time.monotonic()
            if wait > 0:
                raise EngineRestarted(
                    f"The inference engine process crashed repeatedly ({self._last_exit}); it restarts in "
                    f"{wait:.0f} s. Retry the request then."
                )
            self._child = self._spawn()
            return self._child

    def _spawn(self) -> _Child:
        """Start a child (called with ``_lock`` held) and its reader thread."""
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_child_main, args=(child_end, self._factory, self._beat_s), name="tunery-engine", daemon=True
        )
        process.start()
        child_end.close()
        child = _Child(process, parent_end)
        threading.Thread(target=self._read, args=(child,), name="tunery-engine-reader", daemon=True).start()
        log.info("Started the inference engine process (pid %s)", process.pid)
        return child

    def _read(self, child: _Child) -> None:
        """Hand the child's messages to their callers until it dies; then fail its requests and restart it."""
        conn = child.conn
        try:
            while True:
                messages = conn.recv()  # the child sends what it has ready together, in one batch
                child.last_message = time.monotonic()
                for message in messages:
                    kind = message[0]
                    if kind == "beat":
                        _, passes, busy, child.adapters = message
                        if not busy:
                            child.stalled_since = None
                        elif passes != child.passes or child.stalled_since is None:
                            child.stalled_since = child.last_message
                        child.passes = passes
                    elif kind == "chunk":
                        _, rid, text, ids, finish, prompt, completion = message
                        self._generated += len(ids)
                        stream = child.streams.get(rid)
                        if stream is not None:
                            stream.items.put(GenerationChunk(text, ids, finish, prompt, completion))
                    elif kind == "error":
                        _, rid, error_class, text, param, code = message
                        stream = child.streams.get(rid)
                        if stream is not None:
                            stream.items.put(_rebuild_error(error_class, text, param, code))
                    elif kind == "ready":
                        child.ready = True
        except (EOFError, OSError):
            pass
        self._on_exit(child)

    def _on_exit(self, child: _Child) -> None:
        child.process.join(_STOP_WAIT_S)
        code = child.process.exitcode
        exited = f"exit code {code}" if code is not None and code >= 0 else f"killed by signal {-(code or 0)}"
        reason = child.kill_reason or exited
        with child.lock:
            child.dead = True
            streams, child.streams = list(child.streams.values()), {}
        conn = child.conn
        conn.close()
        with self._lock:
            current = self._child is child
            if current:
                self._child = None
            closed = self._closed
            if not closed and current:
                self._restarts += 1
                self._last_exit = reason
                quick = time.monotonic() - child.started < self._min_uptime_s
                self._quick_deaths = self._quick_deaths + 1 if quick else 0
                # The first death restarts at once; deaths in a row soon after starting back off, doubling.
                extra = self._quick_deaths - 2
                self._backoff_s = min(self._restart_backoff_s * 2**extra, _MAX_BACKOFF_S) if extra >= 0 else 0.0
                self._not_before = time.monotonic() + self._backoff_s
        for stream in streams:
            if closed:
                stream.items.put(Unavailable("The inference engine was shut down."))
            else:
                stream.items.put(
                    EngineRestarted(
                        f"The inference engine process stopped ({reason}) while generating this request; it is "
                        "being restarted. Retry the request."
                    )
                )
        if closed or not current:
            return
        log.error("The inference engine process (pid %s) stopped: %s; restarting it", child.process.pid, reason)
        if self._backoff_s:
            time.sleep(self._backoff_s)
        with self._lock:
            if not self._closed and self._child is None:
                self._child = self._spawn()

    def _stop(self, child: _Child) -> None:
        with child.lock, contextlib.suppress(OSError, ValueError):
            child.conn.send(("stop",))
        child.process.join(_STOP_WAIT_S)
        if child.process.is_alive():
            child.process.kill()
            child.process.join(_STOP_WAIT_S)

    def _watch(self) -> None:
        """Twice a second (or more often, for a short hang timeout): record the child's peak RSS; kill it when it
        is over its memory limit or hung."""
        poll = min(_MEMORY_POLL_S, self._hang_timeout_s / 4) if self._hang_timeout_s is not None else _MEMORY_POLL_S
        while not self._closed:
            time.sleep(poll)
            with self._lock:
                child = self._child
            if child is None or child.dead or child.kill_reason is not None:
                continue
            hung = self._hung(child)
            if hung is not None:
                self._hangs += 1
                self._kill(child, hung)
                continue
            rss = _rss(child.process.pid)
            if rss is None:
                continue
            child.peak_rss = max(child.peak_rss, rss)
            if self._memory_limit is not None and rss > self._memory_limit:
                mib = 1024**2
                limit = self._memory_limit / mib
                self._kill(child, f"it used {rss / mib:.0f} MiB, over its memory limit of {limit:.0f} MiB")

    def _hung(self, child: _Child) -> str | None:
        """Why the child counts as hung now, or None: silent with requests in it, or busy without a pass."""
        limit = self._hang_timeout_s
        if limit is None:
            return None
        now = time.monotonic()
        silent = now - child.last_message
        # Until it is ready (importing torch, building the engine) a child may be silent longer on a busy machine.
        if child.streams and silent > (limit if child.ready else max(limit, _START_GRACE_S)):
            return (
                f"it hung: nothing came from it for {silent:.0f} s while it had requests (stopped or frozen; "
                f"hang timeout {limit:g} s), so it was killed"
            )
        stalled = child.stalled_since
        talking = silent < 3 * self._beat_s  # heartbeats still come: the process runs, its passes do not
        if talking and stalled is not None and now - stalled > limit:
            return (
                f"it hung: no forward pass finished for {now - stalled:.0f} s while it had requests (hang timeout "
                f"{limit:g} s), so it was killed"
            )
        return None

    def _kill(self, child: _Child, reason: str) -> None:
        child.kill_reason = reason
        log.error("Killing the inference engine process (pid %s): %s", child.process.pid, reason)
        child.process.kill()  # SIGKILL ends a stopped process too


def _rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def _rebuild_error(error_class: type[BaseException], message: str, param: str | None, code: str | None) -> ServiceError:
    if isinstance(error_class, type) and issubclass(error_class, ServiceError):
        try:
            return error_class(message, param=param, code=code)
        except TypeError:
            pass
    return GenerationError(message)


def _wire_error(exc: BaseException) -> tuple[type[BaseException], str, str | None, str | None]:
    if isinstance(exc, ServiceError):
        return type(exc), exc.message, exc.param, exc.code
    return GenerationError, f"Generation failed: {exc}", None, None


# -------------------------------------------------------------------------------------------- the child
def _child_main(conn: Connection, factory: EngineFactory, beat_s: float = _BEAT_S) -> None:
    """The child's main loop: one thread per request, chunks sent back as they come, a heartbeat every
    ``beat_s``. Exits when the parent goes away (its end of the pipe closes) or asks it to stop."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s engine[%(process)d] %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the server, which stops this process itself
    dirs: dict[str, Path] = {}

    def lookup(name: str) -> Path:
        try:
            return dirs[name]
        except KeyError:
            raise NotFound(f"Model '{name}' is not served here.", param="model") from None

    outbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
    cancels: dict[int, threading.Event] = {}
    send = outbox.put

    def sender() -> None:
        """One thread writes the pipe: whatever is queued goes in one message (fewer writes under load)."""
        while True:
            batch = [outbox.get()]
            while True:
                try:
                    batch.append(outbox.get_nowait())
                except queue.Empty:
                    break
            try:
                conn.send(batch)
            except (OSError, ValueError):
                return  # the server is gone; the main loop sees it too

    threading.Thread(target=sender, name="engine-sender", daemon=True).start()
    built: list[Engine] = []

    def heartbeat() -> None:
        """Every ``beat_s``: the engine's progress and adapter memory (it runs while the engine is being built)."""
        while True:
            passes, busy, adapters = 0, False, None
            if built:
                try:
                    progress = getattr(built[0], "progress", None)
                    passes, busy = progress() if callable(progress) else (0, False)
                    memory = getattr(built[0], "adapter_memory", None)
                    adapters = memory() if callable(memory) else None
                except Exception:  # a report must never stop the heartbeat
                    log.exception("Reading the engine's progress failed")
            send(("beat", passes, busy, adapters))
            time.sleep(beat_s)

    threading.Thread(target=heartbeat, name="engine-heartbeat", daemon=True).start()
    engine = factory(lookup)
    built.append(engine)

    def serve(rid: int, request: GenerationRequest) -> None:
        try:
            for chunk in engine.generate(request):
                send(("chunk", rid, chunk.text, chunk.token_ids, chunk.finish_reason, chunk.prompt_tokens,
                      chunk.completion_tokens))  # fmt: skip
        except BaseException as exc:
            send(("error", rid, *_wire_error(exc)))
        finally:
            cancels.pop(rid, None)

    send(("ready", os.getpid()))
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break  # the server is gone
            kind = message[0]
            if kind == "generate":
                _, rid, request, base_model, weights = message
                dirs[base_model] = Path(weights)
                cancel = threading.Event()
                cancels[rid] = cancel
                request = dataclasses.replace(request, cancel=cancel)
                threading.Thread(target=serve, args=(rid, request), name=f"engine-req-{rid}", daemon=True).start()
            elif kind == "cancel":
                event = cancels.get(message[1])
                if event is not None:
                    event.set()
            elif kind == "stop":
                break
    finally:
        engine.close()
