"""A warm pool of python-grader sandbox processes; each grading is one request to a free worker.

The workers are ``sandbox_worker.py`` started with ``python -I`` in an empty temporary directory with a
scrubbed environment (see that module for what the sandbox enforces). A worker is started on first use
(or by ``warm()``) and kept, so after warm-up a grading costs one fork plus two pipe messages. A worker
that stops answering within its limits is killed and replaced; nothing a grader does reaches the caller
except as a ``SandboxReply``.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

_HEADER = struct.Struct("!I")
WORKER_SCRIPT = Path(__file__).with_name("sandbox_worker.py")
MAX_SOURCE_BYTES = 256 * 1024
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
START_TIMEOUT_S = 60.0
PRELOAD = ("json", "math", "re", "statistics", "collections", "difflib", "subprocess", "rapidfuzz")


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Per-grading limits. Defaults follow OpenAI's grader sandbox: 2 minutes, 2 GB memory, 1 GB disk."""

    wall_seconds: float = 120.0
    cpu_seconds: float = 120.0
    memory_bytes: int = 2 * 1024**3
    file_bytes: int = 1024**3
    workers: int = 2
    denied_paths: tuple[str, ...] = ()
    isolate_network: bool = True


@dataclass(frozen=True, slots=True)
class SandboxReply:
    status: Literal["ok", "runtime_error", "timeout", "oom", "internal"]
    reward: float = 0.0
    details: str | None = None


@dataclass(slots=True)
class _Worker:
    process: subprocess.Popen[bytes]
    workdir: str
    started: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class PythonSandbox:
    """Runs ``grade(sample, item)`` from user source under ``SandboxLimits``; thread-safe."""

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self._idle: queue.LifoQueue[_Worker | None] = queue.LifoQueue()
        for _ in range(max(1, self.limits.workers)):
            self._idle.put(None)  # a slot; the worker starts on first use
        self._lock = threading.Lock()
        self._all: list[_Worker] = []
        self._closed = False
        atexit.register(self.close)

    def warm(self) -> None:
        """Start every worker now and wait until each is ready, so the first gradings pay no start-up."""
        slots = [self._idle.get() for _ in range(max(1, self.limits.workers))]
        ready: list[_Worker | None] = []
        try:
            for slot in slots:
                if slot is not None and not slot.alive():
                    slot.stop()
                    slot = None
                ready.append(slot if slot is not None else self._start())
        finally:
            for slot in ready + [None] * (len(slots) - len(ready)):
                self._idle.put(slot)

    def run(self, source: str, *, sample: dict[str, Any], item: dict[str, Any]) -> SandboxReply:
        if len(source.encode()) > MAX_SOURCE_BYTES:
            return SandboxReply("runtime_error", details=f"The source is larger than {MAX_SOURCE_BYTES} bytes.")
        try:
            message = json.dumps({"source": source, "sample": sample, "item": item}).encode()
        except (TypeError, ValueError) as exc:
            return SandboxReply("internal", details=f"The sample or item is not JSON: {exc}")
        if len(message) > MAX_MESSAGE_BYTES:
            return SandboxReply("internal", details="The sample and item are too large for the python grader.")
        worker = self._idle.get()
        try:
            if worker is None or not worker.alive():
                if worker is not None:
                    worker.stop()
                worker = self._start()
            reply = self._exchange(worker, message)
            if reply is None:
                worker.stop()
                worker = None
                return SandboxReply("internal", details="The grader sandbox stopped answering and was restarted.")
            return SandboxReply(
                status=reply.get("status", "internal"),
                reward=float(reply.get("reward", 0.0)),
                details=reply.get("details"),
            )
        except OSError as exc:
            if worker is not None:
                worker.stop()
            worker = None
            return SandboxReply("internal", details=f"The grader sandbox failed: {exc}")
        finally:
            self._idle.put(worker)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._all = self._all, []
        for worker in workers:
            worker.stop()

    def _start(self) -> _Worker:
        workdir = tempfile.mkdtemp(prefix="tunery-grader-")
        os.chmod(workdir, 0o700)
        config = {
            "wall_seconds": self.limits.wall_seconds,
            "cpu_seconds": self.limits.cpu_seconds,
            "memory_bytes": self.limits.memory_bytes,
            "file_bytes": self.limits.file_bytes,
            "denied_paths": [str(Path(p).resolve()) for p in self.limits.denied_paths],
            "isolate_network": self.limits.isolate_network,
            "preload": list(PRELOAD),
        }
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": workdir,
            "TMPDIR": workdir,
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        process = subprocess.Popen(
            [sys.executable, "-I", str(WORKER_SCRIPT), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=workdir,
            env=env,
            close_fds=True,
            start_new_session=True,
        )
        worker = _Worker(process=process, workdir=workdir)
        assert process.stdout is not None
        header = _read_exactly(process.stdout.fileno(), _HEADER.size, time.monotonic() + START_TIMEOUT_S)
        ready = header and _read_exactly(process.stdout.fileno(), _HEADER.unpack(header)[0], time.monotonic() + 5)
        if not ready:
            worker.stop()
            raise OSError("the grader sandbox process did not start")
        with self._lock:
            if self._closed:
                worker.stop()
                raise OSError("the grader sandbox is closed")
            self._all = [w for w in self._all if w.alive()] + [worker]
        return worker

    def _exchange(self, worker: _Worker, message: bytes) -> dict[str, Any] | None:
        """Send one request and read its reply; ``None`` when the worker dies or overruns its limits."""
        stdin, stdout = worker.process.stdin, worker.process.stdout
        assert stdin is not None
        assert stdout is not None
        try:
            stdin.write(_HEADER.pack(len(message)) + message)
            stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        # The worker enforces the wall limit itself; this margin only catches a worker that is stuck.
        deadline = time.monotonic() + self.limits.wall_seconds + 15.0
        header = _read_exactly(stdout.fileno(), _HEADER.size, deadline)
        if header is None:
            return None
        body = _read_exactly(stdout.fileno(), _HEADER.unpack(header)[0], deadline)
        if body is None:
            return None
        reply: dict[str, Any] = json.loads(body)
        return reply


def _read_exactly(fd: int, size: int, deadline: float) -> bytes | None:
    data = b""
    while len(data) < size:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return None
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data
