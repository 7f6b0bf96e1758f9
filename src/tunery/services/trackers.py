"""Experiment trackers for a finished job: builds what to log and runs ``python -m tunery.trackers``.

The tracker client (``wandb``, ``mlflow``) runs in a child process with a time limit, fed a JSON spec on
stdin: the web process never imports either library, a hung or crashing tracker cannot stall the outbox
sender, and the trainer never talks to a tracker. Called by the outbox sender for a job's tracker rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery.domain.webhooks import Delivery
from tunery.services.outbox import TrackerFailed
from tunery.storage.checkpoints import MetricStore
from tunery.storage.jobs import JobStore

MAX_ERROR_CHARS = 500


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    wandb_dir: Path
    wandb_mode: str = "offline"
    mlflow_tracking_uri: str | None = None
    timeout_s: float = 600.0


class TrackerRunner:
    def __init__(self, jobs: JobStore, metrics: MetricStore, settings: TrackerSettings) -> None:
        self._jobs = jobs
        self._metrics = metrics
        self._settings = settings

    def spec(self, delivery: Delivery) -> dict[str, Any]:
        """Everything the tracker process logs: config, per-step metrics, the outcome."""
        if delivery.job_id is None:
            raise TrackerFailed("the event names no job")
        job = self._jobs.get_any(delivery.job_id)
        integration = next(
            (i for i in job.integrations or [] if isinstance(i, dict) and i.get("type") == delivery.target.value), None
        )
        if integration is None:
            raise TrackerFailed("the job no longer names this integration")
        options = dict(integration.get(delivery.target.value) or {})
        hyper = (job.resolved or job.hyperparameters).to_dict()
        return {
            "target": delivery.target.value,
            "options": options,
            "job": {
                "id": job.id,
                "status": job.status.value,
                "model": job.model,
                "base_model": job.base_model,
                "method": job.method.value,
                "fine_tuned_model": job.fine_tuned_model,
                "seed": job.seed,
                "trained_tokens": job.trained_tokens,
                "suffix": job.suffix,
            },
            "hyperparameters": hyper,
            "metrics": [{"step": row.step, **row.values} for row in self._metrics.list(job.id)],
            "wandb_dir": str(self._settings.wandb_dir),
            "wandb_mode": self._settings.wandb_mode,
            "mlflow_tracking_uri": self._settings.mlflow_tracking_uri,
        }

    def __call__(self, delivery: Delivery) -> str:
        spec = self.spec(delivery)
        self._settings.wandb_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "WANDB_MODE": self._settings.wandb_mode, "WANDB_SILENT": "true"}
        try:
            done = subprocess.run(
                [sys.executable, "-m", "tunery.trackers"],
                input=json.dumps(spec),
                capture_output=True,
                text=True,
                timeout=self._settings.timeout_s,
                env=env,
            )
        except subprocess.TimeoutExpired:
            raise TrackerFailed(f"no answer within {self._settings.timeout_s:.0f}s") from None
        if done.returncode != 0:
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            raise TrackerFailed((lines[-1] if lines else f"exit code {done.returncode}")[:MAX_ERROR_CHARS])
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else f"Logged to {delivery.target.value}."
