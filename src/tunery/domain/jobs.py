"""Fine-tuning jobs: the record, the state machine (spec §4.2), and the rules for hyperparameters.

The transitions table is the single source of truth for what may follow what; services ask it before
every change and turn a refusal into a 409 naming both states. No I/O here.
"""

from __future__ import annotations

import math
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
    REINFORCEMENT = "reinforcement"


# The peak LoRA learning rate that a learning_rate_multiplier of 1.0 stands for.
BASE_LEARNING_RATE = 2e-4

# spec §6.2: the cookbook's epoch heuristic.
TARGET_EPOCHS, MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES = 3, 100, 25_000
MIN_DEFAULT_EPOCHS, MAX_DEFAULT_EPOCHS = 1, 25
DEFAULT_DPO_BETA = 0.1
# Reinforcement fine-tuning (evals-graders-rft.md §3.2): auto values. compute_multiplier m gives
# max(2, round(RFT_SAMPLES_PER_UNIT * m)) samples per prompt; eval_interval aims at RFT_EVALS_PER_RUN evaluations.
DEFAULT_COMPUTE_MULTIPLIER = 1.0
RFT_SAMPLES_PER_UNIT = 4
MAX_RFT_GROUP = 64
DEFAULT_EVAL_SAMPLES = 5
RFT_EVALS_PER_RUN = 10
MAX_RFT_AUTO_BATCH = 8
REASONING_EFFORTS = ("default", "low", "medium", "high")
# New tokens a sampled answer may have, by reasoning effort (Tunery's open models do not reason apart from the
# answer, so the effort is the answer's token budget).
COMPLETION_TOKENS = {"low": 128, "medium": 256, "high": 512}
# Auto batch size and learning rate (``auto_batch_size``): tokens one optimizer step should carry, the fewest
# optimizer steps a run should have, the largest batch, and the largest learning-rate multiplier.
TARGET_STEP_TOKENS = 1024
MIN_AUTO_STEPS = 24
MAX_AUTO_BATCH = 64
MAX_AUTO_LR_MULTIPLIER = 8.0


@dataclass(frozen=True, slots=True)
class Hyperparameters:
    """Requested values: a number, or None for "auto" (resolved when the job starts)."""

    n_epochs: int | None = None
    batch_size: int | None = None
    learning_rate_multiplier: float | None = None
    beta: float | None = None  # DPO only
    # reinforcement only
    eval_interval: int | None = None
    eval_samples: int | None = None
    compute_multiplier: float | None = None
    reasoning_effort: str | None = None  # "default" | "low" | "medium" | "high"; None = not given

    def resolve(self, n_examples: int, method: Method, tokens_mean: float | None = None) -> Hyperparameters:
        """Fill every "auto": epochs from the dataset size (spec §6.2); batch size and learning rate for time
        to quality (``auto_batch_size``, ``auto_learning_rate_multiplier``). Explicit values stay exactly."""
        if method is Method.REINFORCEMENT:
            return self._resolve_reinforcement(n_examples)
        n_epochs = self.n_epochs or auto_epochs(n_examples)
        batch_size = self.batch_size or auto_batch_size(n_examples, tokens_mean, n_epochs)
        return Hyperparameters(
            n_epochs=n_epochs,
            batch_size=batch_size,
            learning_rate_multiplier=self.learning_rate_multiplier
            or (auto_learning_rate_multiplier(batch_size) if method is Method.SUPERVISED else 1.0),
            beta=(self.beta or DEFAULT_DPO_BETA) if method is Method.DPO else None,
        )

    def _resolve_reinforcement(self, n_examples: int) -> Hyperparameters:
        """RFT's autos (evals-graders-rft.md §3.2): epochs as SFT; a few prompts per step (each is sampled
        ``group_size`` times); about ``RFT_EVALS_PER_RUN`` evaluations; 5 validation samples; effort medium."""
        n = max(n_examples, 1)
        n_epochs = self.n_epochs or auto_epochs(n)
        batch_size = self.batch_size or max(1, min(MAX_RFT_AUTO_BATCH, n // 8 or 1))
        total_steps = -(-n // batch_size) * n_epochs
        return Hyperparameters(
            n_epochs=n_epochs,
            batch_size=batch_size,
            learning_rate_multiplier=self.learning_rate_multiplier or 1.0,
            eval_interval=self.eval_interval or max(1, -(-total_steps // RFT_EVALS_PER_RUN)),
            eval_samples=self.eval_samples or DEFAULT_EVAL_SAMPLES,
            compute_multiplier=self.compute_multiplier or DEFAULT_COMPUTE_MULTIPLIER,
            reasoning_effort=self.reasoning_effort or "default",
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
            "eval_interval": self.eval_interval,
            "eval_samples": self.eval_samples,
            "compute_multiplier": self.compute_multiplier,
            "reasoning_effort": self.reasoning_effort,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Hyperparameters:
        data = data or {}
        return cls(
            n_epochs=data.get("n_epochs"),
            batch_size=data.get("batch_size"),
            learning_rate_multiplier=data.get("learning_rate_multiplier"),
            beta=data.get("beta"),
            eval_interval=data.get("eval_interval"),
            eval_samples=data.get("eval_samples"),
            compute_multiplier=data.get("compute_multiplier"),
            reasoning_effort=data.get("reasoning_effort"),
        )


def rft_group_size(compute_multiplier: float) -> int:
    """Samples drawn per prompt in an RFT step: ``max(2, round(4 × compute_multiplier))``, at most 64."""
    return max(2, min(MAX_RFT_GROUP, round(RFT_SAMPLES_PER_UNIT * compute_multiplier)))


def completion_tokens(reasoning_effort: str | None) -> int:
    """The most new tokens one sampled answer may have (``default`` is ``medium``)."""
    return COMPLETION_TOKENS.get(reasoning_effort or "medium", COMPLETION_TOKENS["medium"])


def auto_epochs(n_examples: int) -> int:
    n = max(n_examples, 1)
    if n * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n)
    if n * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n)
    return TARGET_EPOCHS


def auto_batch_size(n_examples: int, tokens_mean: float | None = None, n_epochs: int = 1) -> int:
    """Examples per optimizer step for the shortest time to a good model on the machine (issue 11).

    Azure's rule (0.2 % of the examples, spec §6.2) gives batch 1 to every dataset under 750 examples: one short
    example per step leaves a CPU mostly idle (its matmuls are a few dozen rows; measured: 71 trained tokens/s
    in the product against 285 for the same trainer on full steps) and pays the per-step costs (optimizer,
    schedule, progress record) once per example. So a step takes enough examples for ``TARGET_STEP_TOKENS``
    real tokens, never so many that the run has fewer than ``MIN_AUTO_STEPS`` optimizer steps (the schedule
    and the adapter need updates to learn), and at most ``MAX_AUTO_BATCH``. Without token statistics (no
    tokenizer for the base model) Azure's rule stands.
    """
    if not tokens_mean or tokens_mean <= 0:
        return max(1, min(256, round(0.002 * n_examples)))
    by_tokens = max(1, round(TARGET_STEP_TOKENS / tokens_mean))
    by_steps = max(1, (max(n_examples, 1) * max(n_epochs, 1)) // MIN_AUTO_STEPS)
    return max(1, min(by_tokens, by_steps, MAX_AUTO_BATCH, max(n_examples, 1)))


def auto_learning_rate_multiplier(batch_size: int) -> float:
    """The supervised learning rate that goes with a batch (DPO keeps its base rate): the base rate
    (``BASE_LEARNING_RATE``, tuned at one example per step) times sqrt(batch size) — an average over more
    examples is a less noisy gradient that tolerates a longer step — between 1 and ``MAX_AUTO_LR_MULTIPLIER``."""
    return round(min(MAX_AUTO_LR_MULTIPLIER, max(1.0, math.sqrt(batch_size))), 3)


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
