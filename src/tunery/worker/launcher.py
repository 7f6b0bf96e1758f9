"""Starts and stops the training subprocess (``python -m tunery.training spec.json``).

A spec with ``processes`` other than 1 starts ``python -m tunery.training --processes N spec.json``: torchrun's
agent, which starts the ranks and is the one pid the worker watches, stops and kills.

The child ties itself to the worker's life (``training.lifeline``, Linux ``PR_SET_PDEATHSIG``): if the
worker dies, the trainer dies with it instead of writing into a run another worker may take over.
Recovery also kills orphans by pid, after checking the pid still belongs to a trainer of that job.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from tunery.training.lifeline import PARENT_ENV
from tunery.training.progress import LOG_FILE
from tunery.training.spec import TrainingSpec

LOG_TAIL_BYTES = 4000


class TrainerProcess:
    """One running trainer; its stdout and stderr go to ``trainer.log`` in the run folder."""

    def __init__(self, spec_path: Path) -> None:
        self.run_dir = spec_path.parent
        self._log = (self.run_dir / LOG_FILE).open("ab")
        processes = TrainingSpec.read(spec_path).processes
        ranks = [] if processes == 1 else ["--processes", str(processes)]  # torchrun's agent, then the ranks
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tunery.training", *ranks, str(spec_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())},
        )

    @property
    def pid(self) -> int:
        return self._proc.pid

    def poll(self) -> int | None:
        code = self._proc.poll()
        if code is not None:
            self._log.close()
        return code

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._log.close()

    def terminate(self, timeout: float) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()

    def log_tail(self) -> str:
        path = self.run_dir / LOG_FILE
        if not path.exists():
            return ""
        with path.open("rb") as source:
            source.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
            return source.read().decode("utf-8", errors="replace")


def is_trainer_alive(pid: int, job_id: str) -> bool:
    """True when ``pid`` is a running trainer of this job (pids get reused; check the command line)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "tunery.training" in cmdline and job_id in cmdline


def kill_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
