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


# A reinforcement job's columns (evals-graders-rft.md §3.6). First the spec's recommended header: the mean reward
# of the step's samples and of the whole validation file (every eval_interval steps; empty in between), the mean
# reasoning tokens per answer, and the share of validation answers that did not parse (response_format). Tunery's
# open models do not reason apart from their answer, so "reasoning tokens" are the tokens of the sampled answer
# (its stop token excluded): the same number OpenAI would report for a model that answers without hidden
# reasoning. Then, for a multi grader, ``train_reward_mean:<key>`` / ``valid_reward_mean:<key>`` per child
# (``rft_columns``), then Tunery's own: the reward spread, the loss and KL to the starting model, the share of
# training answers that did not parse and the share of gradings that failed.
RFT_SPEC_COLUMNS = (
    "step",
    "train_reward_mean",
    "valid_reward_mean",
    "train_reasoning_tokens_mean",
    "valid_reasoning_tokens_mean",
    "full_valid_mean_parse_error",
)
RFT_EXTRA_COLUMNS = (
    "train_reward_std",
    "train_loss",
    "train_kl",
    "train_parse_error_mean",
    "train_grader_error_mean",
    "valid_grader_error_mean",
)
RFT_METRIC_COLUMNS = RFT_SPEC_COLUMNS + RFT_EXTRA_COLUMNS  # for a grader that is not a multi
GRADER_REWARD_SEPARATOR = ":"  # train_reward_mean:<child key>


def grader_reward_column(split: str, key: str) -> str:
    """``train_reward_mean:<key>`` (``split`` is ``train`` or ``valid``): a multi grader's child's mean reward."""
    return f"{split}_reward_mean{GRADER_REWARD_SEPARATOR}{key}"


def rft_columns(grader_keys: tuple[str, ...] = ()) -> tuple[str, ...]:
    """A reinforcement job's results.csv header: ``grader_keys`` are its multi grader's children (else empty)."""
    per_grader = tuple(grader_reward_column(split, key) for key in grader_keys for split in ("train", "valid"))
    return RFT_SPEC_COLUMNS + per_grader + RFT_EXTRA_COLUMNS


def metric_columns(method: str, grader_keys: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The results.csv columns of a job trained with ``method`` (``supervised``, ``dpo`` or ``reinforcement``;
    ``grader_keys``: a reinforcement job's multi grader's children)."""
    if method == "reinforcement":
        return rft_columns(grader_keys)
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
