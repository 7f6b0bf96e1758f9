"""The eval runner loop: schedule per-checkpoint runs, claim a queued eval run, execute it; repeat.

Runs as a thread inside ``tunery serve`` (``TUNERY_EVALS__RUNNER_ENABLED``). The run row is the lock, as for
jobs: a runner that dies leaves its run ``in_progress`` with an old heartbeat, and after
``stale_after_s`` any runner (this one after a restart) claims it again and resumes it, skipping the items
already recorded. Cancel is seen at the next batch boundary.
"""

from __future__ import annotations

import logging
import threading

from tunery.services.checkpoint_evals import CheckpointEvals
from tunery.services.eval_runs import EvalRunExecutor
from tunery.worker.runner import new_worker_id

log = logging.getLogger(__name__)


class EvalRunner:
    def __init__(
        self,
        executor: EvalRunExecutor,
        checkpoint_evals: CheckpointEvals | None,
        *,
        poll_s: float = 0.5,
        stale_after_s: float = 60.0,
        worker_id: str | None = None,
    ) -> None:
        self._executor = executor
        self._checkpoint_evals = checkpoint_evals
        self._poll_s = poll_s
        self._stale_after_s = stale_after_s
        self.worker_id = worker_id or f"evals-{new_worker_id()}"

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            busy = False
            try:
                if self._checkpoint_evals is not None:
                    self._checkpoint_evals.schedule()
                busy = self._executor.run_next(self.worker_id, self._stale_after_s)
            except Exception:  # the database away for a moment: log, wait, try again
                log.exception("eval runner iteration failed")
            if not busy:
                stop.wait(self._poll_s)
