"""The worker loop: claim a job → check its data → run its trainer → record progress → finish.

Runs as ``tunery worker`` or as a thread inside ``tunery serve``. Several workers may share one
PostgreSQL database; the job row is the lock. A worker that stops (or dies) leaves its job ``running``
with an old heartbeat; any live worker hands it back (resume from saved state, or start over): at start and
every ``RECOVER_EVERY_S`` while idle, so a worker started moments after a crash, before the dead one's heartbeat
went stale, still picks its job up.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

from tunery.domain.jobs import Job, JobStatus
from tunery.services.runs import RunService
from tunery.training import progress
from tunery.training.progress import ProgressReader, RunFolder
from tunery.worker.launcher import TrainerProcess, is_trainer_alive, kill_pid

log = logging.getLogger(__name__)

POLL_S = 1.0
WATCH_S = 0.5
HEARTBEAT_S = 2.0
RECOVER_EVERY_S = 2.0
CANCEL_GRACE_S = 60.0
SHUTDOWN_GRACE_S = 10.0


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Worker:
    def __init__(
        self,
        runs: RunService,
        *,
        worker_id: str | None = None,
        poll_s: float = POLL_S,
        recover_every_s: float = RECOVER_EVERY_S,
    ) -> None:
        self._runs = runs
        self.worker_id = worker_id or new_worker_id()
        self._poll_s = poll_s
        self._recover_every_s = recover_every_s

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set. A trainer still running then is stopped; its job is recovered later."""
        last_recovery = float("-inf")
        while not stop.is_set():
            try:
                if time.monotonic() - last_recovery >= self._recover_every_s:
                    last_recovery = time.monotonic()
                    self.recover()
                busy = self.run_once(stop)
            except Exception:  # the edge: one bad job must not stop the worker
                log.exception("worker %s: unexpected error; continuing", self.worker_id)
                busy = False
            if not busy:
                stop.wait(self._poll_s)

    def recover(self) -> int:
        """Hand back the jobs of workers that went silent (a dead worker's job stays ``running`` otherwise)."""
        recovered = self._runs.recover(self.worker_id, is_trainer_alive, kill_pid)
        if recovered:
            log.info("handed back %d job(s) left by a stopped worker", recovered)
        return recovered

    def run_once(self, stop: threading.Event | None = None) -> bool:
        """Take one job as far as it goes. False when there was nothing to do."""
        job = self._runs.claim_next(self.worker_id)
        if job is None:
            return False
        if job.status is JobStatus.PENDING:
            checked = self._runs.validate(job)
            if checked is None or checked.status is not JobStatus.QUEUED:
                return True
            job = checked
        spec = self._runs.start(job)
        if spec is None:
            return True
        try:
            self._train(job, RunFolder(spec.run_path).spec, stop or threading.Event())
        finally:
            self._runs.release(job.id)  # the run's judge relay, if its grader has model graders
        return True

    def _train(self, job: Job, spec_path, stop: threading.Event) -> None:  # type: ignore[no-untyped-def]
        trainer = TrainerProcess(spec_path)
        self._runs.attach(job, self.worker_id, trainer.pid)
        reader = ProgressReader(trainer.run_dir)
        asked: str | None = None
        asked_at = 0.0
        last_beat = 0.0
        while True:
            for record in reader.read_new():
                job = self._runs.record(job, self.worker_id, record)
            code = trainer.poll()
            if code is not None:
                for record in reader.read_new():
                    job = self._runs.record(job, self.worker_id, record)
                self._runs.trainer_exited(job, code, trainer.log_tail())
                return
            now = time.monotonic()
            if now - last_beat >= HEARTBEAT_S:
                self._runs.heartbeat(job, self.worker_id)
                last_beat = now
            request = self._runs.control(job.id)  # a user's cancel/pause reaches the trainer within one step
            if request and request != asked:
                progress.request(trainer.run_dir, request)
                asked, asked_at = request, now
            if asked == "cancel" and now - asked_at > CANCEL_GRACE_S:
                trainer.kill()  # the trainer did not stop in time; the job is already cancelled
            if stop.is_set():
                trainer.terminate(SHUTDOWN_GRACE_S)
                return
            time.sleep(WATCH_S)
