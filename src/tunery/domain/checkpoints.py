"""Checkpoints: an adapter saved at an epoch end or a pause; each one is deployable (spec §7.3)."""

from __future__ import annotations

from dataclasses import dataclass, field

# The results.csv columns of a supervised job, in order (spec §7.1); step events and checkpoint metrics use the
# same keys.
METRIC_COLUMNS = (
    "step",
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)

# A DPO job's columns. The spec names none for DPO; these follow its pattern (train_/valid_/full_valid_) with
# the quantities DPO users read: the loss, how often the chosen reply out-scores the rejected one (reward
# accuracy), by how much (reward margin), and the two implicit rewards, beta * log(policy / reference).
DPO_METRIC_COLUMNS = (
    "step",
    "train_loss",
    "train_reward_accuracy",
    "train_reward_margin",
    "train_chosen_reward",
    "train_rejected_reward",
    "valid_loss",
    "valid_reward_accuracy",
    "valid_reward_margin",
    "full_valid_loss",
    "full_valid_reward_accuracy",
    "full_valid_reward_margin",
)


# A reinforcement job's columns (evals-graders-rft.md §3.6): the mean reward of the step's samples and of the
# whole validation file (every eval_interval steps; empty in between), answer lengths (Tunery's open models do not
# reason apart from the answer, so completion tokens stand where OpenAI shows reasoning tokens), the loss and KL
# to the starting model, and the share of gradings that failed or whose answer did not parse.
RFT_METRIC_COLUMNS = (
    "step",
    "train_reward_mean",
    "valid_reward_mean",
    "train_reward_std",
    "train_loss",
    "train_kl",
    "train_completion_tokens_mean",
    "valid_completion_tokens_mean",
    "train_grader_error_mean",
    "valid_grader_error_mean",
    "train_parse_error_mean",
    "valid_parse_error_mean",
)


def metric_columns(method: str) -> tuple[str, ...]:
    """The results.csv columns of a job trained with ``method`` (``supervised``, ``dpo`` or ``reinforcement``)."""
    if method == "reinforcement":
        return RFT_METRIC_COLUMNS
    return DPO_METRIC_COLUMNS if method == "dpo" else METRIC_COLUMNS


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
    pinned: bool = False  # a pause checkpoint: retention never deletes it


@dataclass(frozen=True, slots=True)
class MetricRow:
    """One optimizer step's metrics: a results.csv row."""

    job_id: str
    step: int
    values: dict[str, float]
