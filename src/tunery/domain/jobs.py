"""Fine-tuning jobs: the record, the state machine (spec §4.2), and the rules for hyperparameters.

The transitions table is the single source of truth for what may follow what; services ask it before
every change and turn a refusal into a 409 naming both states. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from tunery.domain.errors import Conflict


class JobStatus(StrEnum):
    PENDING = "pending"  # created; files not yet checked (OpenAI layout: validating_files)
    QUEUED = "queued"  # files good; waiting for a worker
    RUNNING = "running"
    PAUSING = "pausing"  # pause asked; the trainer saves its state at the next step (OpenAI: running)
    PAUSED = "paused"
    RESUMING = "resuming"  # resume asked; waiting for a worker (OpenAI: queued)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = frozenset({JobStatus.RUNNING, JobStatus.PAUSING})  # a trainer process may be alive
CLAIMABLE = frozenset({JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RESUMING})

S = JobStatus
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.PENDING: frozenset({S.QUEUED, S.FAILED, S.CANCELLED}),
    S.QUEUED: frozenset({S.RUNNING, S.FAILED, S.CANCELLED}),
    # running → queued/resuming: a dead worker's job handed back for recovery
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.PAUSING, S.QUEUED, S.RESUMING}),
    S.PAUSING: frozenset({S.PAUSED, S.SUCCEEDED, S.FAILED, S.CANCELLED, S.RESUMING}),
    S.PAUSED: frozenset({S.RESUMING, S.CANCELLED}),
    S.RESUMING: frozenset({S.RUNNING, S.FAILED, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}


def can_transition(current: JobStatus, target: JobStatus) -> bool:
    return target in TRANSITIONS[current]


def check_transition(job_id: str, current: JobStatus, target: JobStatus, action: str) -> None:
    """Raises:
    Conflict: ``action`` is not allowed while the job is ``current``.
    """
    if not can_transition(current, target):
        raise Conflict(
            f"Cannot {action} job {job_id}: it is {current.value}.",
            param="fine_tuning_job_id",
            code="unexpectedEntityState",
        )


class Method(StrEnum):
    SUPERVISED = "supervised"
    DPO = "dpo"


# The peak LoRA learning rate that a learning_rate_multiplier of 1.0 stands for.
BASE_LEARNING_RATE = 2e-4

# spec §6.2: the cookbook's epoch heuristic.
TARGET_EPOCHS, MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES = 3, 100, 25_000
MIN_DEFAULT_EPOCHS, MAX_DEFAULT_EPOCHS = 1, 25
DEFAULT_DPO_BETA = 0.1


@dataclass(frozen=True, slots=True)
class Hyperparameters:
    """Requested values: a number, or None for "auto" (resolved when the job starts)."""

    n_epochs: int | None = None
    batch_size: int | None = None
    learning_rate_multiplier: float | None = None
    beta: float | None = None  # DPO only

    def resolve(self, n_examples: int, method: Method) -> Hyperparameters:
        """Fill every "auto" from the dataset size (spec §6.2)."""
        return Hyperparameters(
            n_epochs=self.n_epochs or auto_epochs(n_examples),
            batch_size=self.batch_size or auto_batch_size(n_examples),
            learning_rate_multiplier=self.learning_rate_multiplier or 1.0,
            beta=(self.beta or DEFAULT_DPO_BETA) if method is Method.DPO else None,
        )

    @property
    def resolved(self) -> bool:
        return None not in (self.n_epochs, self.batch_size, self.learning_rate_multiplier)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
            "beta": self.beta,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Hyperparameters:
        data = data or {}
        return cls(
            n_epochs=data.get("n_epochs"),
            batch_size=data.get("batch_size"),
            learning_rate_multiplier=data.get("learning_rate_multiplier"),
            beta=data.get("beta"),
        )


def auto_epochs(n_examples: int) -> int:
    n = max(n_examples, 1)
    if n * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n)
    if n * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n)
    return TARGET_EPOCHS


def auto_batch_size(n_examples: int) -> int:
    """0.2 % of the examples, between 1 and 256 (spec §6.2)."""
    return max(1, min(256, round(0.002 * n_examples)))


@dataclass(frozen=True, slots=True)
class JobError:
    """Why a job failed, in the SDK's ``FineTuningJob.Error`` shape."""

    code: str
    message: str
    param: str | None = None


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    project_id: str
    created_at: int
    model: str  # as the user named it: a base model, a fine-tuned model or a checkpoint
    base_model: str  # the root base model the adapter applies to
    training_file: str
    validation_file: str | None
    method: Method
    hyperparameters: Hyperparameters  # as requested (None = auto)
    seed: int
    status: JobStatus
    parent_model: str | None = None  # continuous fine-tuning: the fine-tuned model or checkpoint
    resolved: Hyperparameters | None = None  # once the job starts
    suffix: str | None = None
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None
    training_type: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # tolerated fields echoed back (l2_multiplier...)
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    started_at: int | None = None
    trained_tokens: int | None = None
    result_files: list[str] = field(default_factory=list)
    estimated_finish: int | None = None
    step: int = 0
    total_steps: int | None = None
    worker_id: str | None = None
    heartbeat_at: float | None = None
    trainer_pid: int | None = None

    def with_changes(self, **changes: Any) -> Job:
        return replace(self, **changes)

    @property
    def job_hex(self) -> str:
        return self.id.split("-", 1)[1]


def fine_tuned_model_name(base_model: str, job_id: str, suffix: str | None) -> str:
    """``<base>.ft-<job hex>[-<suffix>]`` (spec §4.6)."""
    name = f"{base_model}.ft-{job_id.split('-', 1)[1]}"
    return f"{name}-{suffix}" if suffix else name


def checkpoint_model_name(fine_tuned_model: str, step: int) -> str:
    return f"{fine_tuned_model}:ckpt-step-{step}"
