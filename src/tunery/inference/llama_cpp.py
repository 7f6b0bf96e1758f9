"""llama.cpp's ``llama-server`` as a serving backend, behind the same ``Engine`` protocol.

Measured (bench/RESULTS.md, "Serving over HTTP against llama.cpp"): for one model at a time — the base, or one
adapter — llama.cpp's fused ggml kernels decode a stream 2–3× faster than Tunery's torch engine on the same CPU,
while with several adapters in flight Tunery's engine wins (llama.cpp never batches requests whose adapters
differ). So Tunery adopts it for what it is best at (``routing.RoutedEngine`` sends it the requests while one
model is in flight) and keeps its own engine for the rest.

Adapters still hot-load without a restart: each (base model, adapter) pair gets its own ``llama-server`` process,
started on the first request that needs it, with the base model as a GGUF (written once by Tunery's exporter,
memory-mapped, so the processes share its pages) and the adapter as a GGUF LoRA. At most ``max_servers`` run;
the least recently used idle one stops to make room, and when every one is busy the request is not taken
(``open`` answers None and the caller serves it itself) — never a wait without end.

Requests go to ``/completion`` as token ids (the chat service renders the prompt, so both backends read the
same tokens) with streaming. The chunks' text and the final token counts are exact; their ``token_ids`` are what
llama.cpp reports, which leaves out tokens that end inside a UTF-8 character (nothing above the engine reads
them). Closing the stream (the client left) drops the connection, which stops llama.cpp's slot. A server that
dies mid-request answers that request with ``EngineRestarted`` (503) and is started again by the next one.
Nothing here is hand-written that llama.cpp does: this module only runs and talks to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from tunery.catalog.gguf_export import UnsupportedForGguf, model_config, write_adapter_gguf, write_merged_gguf
from tunery.catalog.peft_adapter import PeftAdapter
from tunery.domain.errors import Unavailable
from tunery.inference.engine import FinishReason, GenerationChunk, GenerationRequest
from tunery.inference.errors import EngineRestarted, GenerationError

ServerKey = tuple[str, str | None]  # (base model, adapter folder); None: the base alone
Matrices = Literal["F16", "BF16"]
log = logging.getLogger(__name__)


def find_llama_server(configured: str | None = None) -> Path | None:
    """The ``llama-server`` binary: the configured path, else the one on ``PATH``; None when there is none."""
    if configured:
        path = Path(configured).expanduser()
        return path if path.is_file() and os.access(path, os.X_OK) else None
    found = shutil.which("llama-server")
    return Path(found) if found else None


@dataclass(frozen=True, slots=True)
class LlamaCppOptions:
    binary: Path
    cache_dir: Path  # GGUF files written for llama.cpp (base models and adapters)
    threads: int | None = None  # None: every core
    slots: int = 4  # requests one server decodes together
    slot_context: int = 2048  # tokens per slot (prompt + answer); longer requests stay with Tunery's engine
    max_servers: int = 4
    startup_timeout_s: float = 120.0
    extra_args: tuple[str, ...] = ()
    weights: Literal["auto", "F16", "BF16"] = "auto"  # auto: whichever llama.cpp decodes faster here, measured


@dataclass(slots=True)
class _Server:
    key: ServerKey
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    active: int = 0
    last_used: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return self.process.poll() is None


class LlamaCppEngine:
    """Runs and talks to ``llama-server`` processes, one per (base model, adapter)."""

    def __init__(self, base_weights: Callable[[str], Path], options: LlamaCppOptions) -> None:
        self._base_weights = base_weights
        self._options = options
        self._servers: dict[ServerKey, _Server] = {}
        self._lock = threading.Lock()
        self._pending: dict[ServerKey, threading.Event] = {}  # servers being started; set once up (or failed)
        self._supported: dict[str, bool] = {}
        self._generated = 0
        self._started = 0
        self._closed = False
        self._client = httpx.Client(timeout=httpx.Timeout(connect=5.0, read=None, write=30.0, pool=5.0))

    # ---- what the router asks ------------------------------------------------------------------------------
    def fits(self, request: GenerationRequest) -> bool:
        """Whether this backend can serve the request at all: a llama-family base, and room in one slot."""
        if len(request.prompt_ids) + request.params.max_tokens > self._options.slot_context:
            return False
        return self._base_supported(request.base_model)

    def running(self, key: ServerKey) -> bool:
        """Whether a server for this (base model, adapter) is up already."""
        with self._lock:
            server = self._servers.get(key)
            return server is not None and server.alive()

    def open(self, request: GenerationRequest) -> Iterator[GenerationChunk] | None:
        """Start serving the request (its server started first if needed), or None when every server is busy.

        The server is taken before this returns, so a None is final for this request and nothing waits.
        """
        key: ServerKey = (request.base_model, request.adapter_dir)
        server = self._acquire(key)
        if server is None:
            return None
        return _Stream(self._stream(server, request), lambda: self._release(server))

    # ---- Engine protocol ------------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> Iterator[GenerationChunk]:
        chunks = self.open(request)
        if chunks is None:
            raise Unavailable("Every llama.cpp server is busy; try again shortly.")
        return chunks

    def active_rows(self) -> int:
        with self._lock:
            return sum(server.active for server in self._servers.values())

    def generated_tokens(self) -> int:
        return self._generated

    def status(self) -> dict[str, Any]:
        with self._lock:
            servers = [
                {
                    "base_model": key[0],
                    "adapter": Path(key[1]).name if key[1] else None,
                    "pid": server.process.pid,
                    "alive": server.alive(),
                    "active_requests": server.active,
                }
                for key, server in self._servers.items()
            ]
        return {"backend": "llama.cpp", "binary": str(self._options.binary), "servers": servers,
                "servers_started": self._started}  # fmt: skip

    def close(self) -> None:
        with self._lock:
            self._closed = True
            servers = list(self._servers.values())
            self._servers.clear()
        for server in servers:
            _stop(server)
        self._client.close()

    # ---- servers --------------------------------------------------------------------------------------------
    def _base_supported(self, base_model: str) -> bool:
        known = self._supported.get(base_model)
        if known is None:
            try:
                model_config(self._base_weights(base_model))
                known = True
            except (UnsupportedForGguf, OSError, ValueError):
                known = False
            self._supported[base_model] = known
        return known

    def _acquire(self, key: ServerKey) -> _Server | None:
        while True:
            with self._lock:
                if self._closed:
                    raise Unavailable("The llama.cpp backend is shut down.")
                server = self._servers.get(key)
                if server is not None and not server.alive():
                    self._servers.pop(key)
                    server = None
                if server is not None:
                    server.active += 1
                    server.last_used = time.monotonic()
                    return server
                started = self._pending.get(key)
                if started is None:
                    running = len(self._servers) + len(self._pending)
                    if running >= self._options.max_servers and not self._evict_one():
                        return None
                    self._pending[key] = threading.Event()
            if started is not None:  # another request is starting this server: use it once it is up
                started.wait()
                continue
            try:
                server = self._start(key)
            finally:
                with self._lock:
                    self._pending.pop(key).set()
            with self._lock:
                if self._closed:
                    _stop(server)
                    raise Unavailable("The llama.cpp backend is shut down.")
                self._servers[key] = server
                server.active += 1
                return server

    def _release(self, server: _Server) -> None:
        with self._lock:
            server.active -= 1
            server.last_used = time.monotonic()

    def _evict_one(self) -> bool:
        """Stop the least recently used idle server (under the lock); False when every server is busy."""
        idle = [server for server in self._servers.values() if server.active == 0]
        if not idle:
            return False
        victim = min(idle, key=lambda server: server.last_used)
        self._servers.pop(victim.key)
        threading.Thread(target=_stop, args=(victim,), daemon=True).start()
        return True

    def _start(self, key: ServerKey) -> _Server:
        base_model, adapter_dir = key
        opts = self._options
        args = ["-m", str(self._base_gguf(base_model))]
        if adapter_dir is not None:
            args += ["--lora", str(self._adapter_gguf(base_model, Path(adapter_dir)))]
        # One KV buffer for all slots (measured faster with many slots); every request fits a slot's share, so the
        # slots can never outgrow it together.
        args += ["-np", str(opts.slots), "-c", str(opts.slots * opts.slot_context), "--kv-unified", *opts.extra_args]
        server = self._launch(key, args)
        self._started += 1
        return server

    def _launch(self, key: ServerKey, args: list[str]) -> _Server:
        """Start ``llama-server`` with ``args`` on a free local port and wait until it answers ``/health``."""
        opts = self._options
        port = _free_port()
        threads = opts.threads or os.cpu_count() or 1  # llama.cpp's own default may count physical cores only
        command = [str(opts.binary), "--host", "127.0.0.1", "--port", str(port), "--no-webui", "-t", str(threads)]
        command += args
        logs = opts.cache_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"llama-server-{_digest(str(key))}.log"
        with log.open("ab") as sink:
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        server = _Server(key=key, process=process, url=f"http://127.0.0.1:{port}", log=log)
        deadline = time.monotonic() + opts.startup_timeout_s
        while True:
            if not server.alive():
                raise Unavailable(f"llama-server exited with code {process.returncode} at start-up; see {log}.")
            try:
                if self._client.get(f"{server.url}/health", timeout=2.0).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                _stop(server)
                raise Unavailable(
                    f"llama-server did not become ready within {opts.startup_timeout_s:.0f} s; see {log}."
                )
            time.sleep(0.05)

    def _base_gguf(self, base_model: str) -> Path:
        """The base model as GGUF, its matrices in the format that decodes faster here (``weights="auto"``)."""
        base_dir = self._base_weights(base_model)
        stem = f"{_digest(str(base_dir.resolve()))}"
        weights = self._options.weights
        if weights == "auto":
            weights = self._measured_format(base_model, stem)
        return self._write_base(base_model, stem, weights)

    def _write_base(self, base_model: str, stem: str, matrices: Matrices) -> Path:
        target = self._options.cache_dir / f"{stem}-{matrices}.gguf"
        if not target.is_file():
            base_dir = self._base_weights(base_model)
            _write_atomically(target, lambda tmp: write_merged_gguf(None, base_dir, tmp, name=base_model,
                                                                    base_id=base_model, matrices=matrices))  # fmt: skip
        return target

    def _measured_format(self, base_model: str, stem: str) -> Matrices:
        """F16 or BF16 matrices, whichever llama.cpp decodes faster on this machine: timed once per machine, binary
        and base model (a few seconds at the first request), and kept unless the machine was busy meanwhile."""
        verdicts = self._options.cache_dir / "formats.json"
        key = f"{_cpu_model()} | {self._options.binary} | {stem}"
        try:
            known = json.loads(verdicts.read_text())
        except (OSError, ValueError):
            known = {}
        if isinstance(known.get(key), dict) and known[key].get("format") in ("F16", "BF16"):
            return known[key]["format"]  # type: ignore[no-any-return]
        busy = _machine_is_busy()
        timings: dict[Matrices, float] = {}
        for matrices in ("F16", "BF16"):
            path = self._write_base(base_model, stem, matrices)
            timings[matrices] = self._decode_ms(path)
        best: Matrices = min(timings, key=lambda m: timings[m])
        log.info("llama.cpp decodes %s: %s ms a token; serving %s", base_model, timings, best)
        for matrices in timings:
            if matrices != best:
                (self._options.cache_dir / f"{stem}-{matrices}.gguf").unlink(missing_ok=True)
        if not (busy or _machine_is_busy()):
            known[key] = {"format": best, "ms_per_token": timings, "measured_at": time.time()}
            text = json.dumps(known, indent=1)

            def write(tmp: Path) -> None:
                tmp.write_text(text)

            _write_atomically(verdicts, write)
        return best

    def _decode_ms(self, gguf_file: Path) -> float:
        """Best milliseconds per decoded token over 3 greedy answers of 32 tokens, as llama.cpp times them."""
        server = self._launch(("probe", str(gguf_file)), ["-m", str(gguf_file), "-np", "1", "-c", "512"])
        body = {"prompt": "Once upon a time, " * 8, "n_predict": 32, "temperature": 0, "ignore_eos": True,
                "cache_prompt": False}  # fmt: skip
        try:
            times = []
            for _ in range(3):
                reply = self._client.post(f"{server.url}/completion", json=body, timeout=60.0).json()
                times.append(float(reply["timings"]["predicted_per_token_ms"]))
            return min(times)
        finally:
            _stop(server)

    def _adapter_gguf(self, base_model: str, adapter_dir: Path) -> Path:
        weights = adapter_dir / "adapter_model.safetensors"
        stamp = f"{adapter_dir.resolve()}:{weights.stat().st_mtime_ns if weights.exists() else 0}"
        target = self._options.cache_dir / "adapters" / f"{_digest(stamp)}-lora.gguf"
        if not target.is_file():
            base_dir = self._base_weights(base_model)

            def write(tmp: Path) -> None:
                with PeftAdapter(adapter_dir) as adapter:
                    write_adapter_gguf(adapter, base_dir, tmp, name=adapter_dir.name, base_id=base_model)

            _write_atomically(target, write)
        return target

    # ---- one request ------------------------------------------------------------------------------------------
    def _stream(self, server: _Server, request: GenerationRequest) -> Iterator[GenerationChunk]:
        params = request.params
        body: dict[str, Any] = {
            "prompt": list(request.prompt_ids),
            "n_predict": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": 0,
            "min_p": 0.0,
            "stream": True,
            "cache_prompt": True,
            "return_tokens": True,
            "stop": list(params.stop),
        }
        if params.seed is not None:
            body["seed"] = params.seed
        stop_ids = set(request.stop_token_ids)
        completion = 0
        finish: FinishReason | None = None
        try:
            with self._client.stream("POST", f"{server.url}/completion", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise GenerationError(f"llama-server answered {response.status_code}: {response.text[:300]}")
                for event in _events(response.iter_lines()):
                    if request.cancel is not None and request.cancel.is_set():
                        return
                    tokens = [int(t) for t in event.get("tokens") or []]
                    ended = next((i for i, t in enumerate(tokens) if t in stop_ids), None)
                    text = str(event.get("content") or "")
                    if ended is not None:  # an end-of-turn id llama.cpp did not treat as one
                        tokens, text, finish = tokens[:ended], "", "stop"
                    completion += len(tokens)
                    self._generated += len(tokens)
                    if event.get("stop") and finish is None:
                        finish = "length" if event.get("stop_type") == "limit" else "stop"
                    if finish is not None:
                        prompt = int(event.get("tokens_evaluated") or len(request.prompt_ids))
                        completion = max(completion, int(event.get("tokens_predicted") or 0))
                        yield GenerationChunk(text=text, token_ids=tokens, finish_reason=finish,
                                              prompt_tokens=prompt, completion_tokens=completion)  # fmt: skip
                        return
                    if text or tokens:
                        yield GenerationChunk(text=text, token_ids=tokens)
        except httpx.HTTPError as exc:
            if _exited(server):
                raise EngineRestarted(
                    "The llama.cpp server serving this model stopped while answering; send the request again."
                ) from exc
            raise GenerationError(f"llama-server failed: {exc}") from exc
        finally:
            self._release(server)
        if finish is None:
            raise EngineRestarted("The llama.cpp server ended the answer without finishing it; send it again.")


class _Stream:
    """A request's chunks holding its server: released when the chunks end or are closed, even unread."""

    def __init__(self, chunks: Iterator[GenerationChunk], release: Callable[[], None]) -> None:
        self._chunks = chunks
        self._release = release
        self._released = False
        self._started = False

    def __iter__(self) -> _Stream:
        return self

    def __next__(self) -> GenerationChunk:
        self._started = True  # from here the generator's own ``finally`` releases the server
        return next(self._chunks)

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        if not self._started and not self._released:
            self._released = True
            self._release()


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            if payload.strip() == "[DONE]":
                return
            event = json.loads(payload)
            if "error" in event:
                raise GenerationError(f"llama-server: {event['error']}")
            yield event


def _exited(server: _Server, wait_s: float = 2.0) -> bool:
    """Whether the server process has ended, allowing for a kill whose socket closed before the process was gone."""
    try:
        server.process.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        return False
    return True


def _stop(server: _Server) -> None:
    if server.alive():
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def _machine_is_busy() -> bool:
    """Whether other work already fills the cores (1-minute load average at or above the core count)."""
    try:
        return os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:
        return False


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Write to a temporary name beside ``target`` and rename: a crash leaves no half-written GGUF in use."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
