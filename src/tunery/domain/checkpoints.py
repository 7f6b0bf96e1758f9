"""Checkpoints: an adapter saved at an epoch end or a pause; each one is deployable (spec §7.3)."""

from __future__ import annotations

from dataclasses import dataclass, field

# The results.csv columns, in order (spec §7.1); step events and checkpoint metrics use the same keys.
METRIC_COLUMNS = (
    "step",
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    id: str  # ftchkpt-<hex>
    job_id: str
    project_id: str
    created_at: int
    step_number: int
    fine_tuned_model_checkpoint: str  # <model>:ckpt-step-<N>; the newest carries the plain model name
    adapter_key: str  # blob-store prefix of the adapter files
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MetricRow:
    """One optimizer step's metrics: a results.csv row."""

    job_id: str
    step: int
    values: dict[str, float]
