"""The job state machine and hyperparameter rules (spec §4.2, §6.2). Run: .venv/bin/pytest tests/unit/domain"""

from __future__ import annotations

import pytest

from tunery.domain.errors import Conflict
from tunery.domain.jobs import (
    MAX_AUTO_BATCH,
    MAX_AUTO_LR_MULTIPLIER,
    MIN_AUTO_STEPS,
    TARGET_STEP_TOKENS,
    TERMINAL,
    TRANSITIONS,
    Hyperparameters,
    JobStatus,
    Method,
    auto_batch_size,
    auto_epochs,
    auto_learning_rate_multiplier,
    can_transition,
    check_transition,
    checkpoint_model_name,
    fine_tuned_model_name,
)

S = JobStatus


def test_terminal_states_have_no_way_out() -> None:
    for status in TERMINAL:
        assert TRANSITIONS[status] == frozenset()
        assert status.terminal


@pytest.mark.parametrize("status", [s for s in JobStatus if s not in TERMINAL])
def test_every_live_state_can_be_cancelled(status: JobStatus) -> None:
    assert can_transition(status, S.CANCELLED)


@pytest.mark.parametrize(
    ("current", "target", "allowed"),
    [
        (S.RUNNING, S.PAUSING, True),
        (S.QUEUED, S.PAUSING, False),  # pause only while running
        (S.PAUSED, S.RESUMING, True),
        (S.RUNNING, S.RESUMING, True),  # recovery of a dead worker's job
        (S.PENDING, S.RUNNING, False),  # files must be checked first
        (S.SUCCEEDED, S.RUNNING, False),
        (S.PAUSED, S.RUNNING, False),  # resume goes through resuming
    ],
)
def test_selected_transitions(current: JobStatus, target: JobStatus, allowed: bool) -> None:
    assert can_transition(current, target) is allowed


def test_refusal_names_both_states() -> None:
    with pytest.raises(Conflict) as caught:
        check_transition("ftjob-x", S.SUCCEEDED, S.CANCELLED, "cancel")
    assert "Cannot cancel job ftjob-x: it is succeeded" in caught.value.message
    assert caught.value.code == "unexpectedEntityState"


@pytest.mark.parametrize(
    ("examples", "epochs"), [(1, 25), (10, 10), (30, 3), (40, 3), (8000, 3), (10000, 2), (10**6, 1)]
)
def test_auto_epochs_follows_the_cookbook(examples: int, epochs: int) -> None:
    assert auto_epochs(examples) == epochs


@pytest.mark.parametrize(("examples", "batch"), [(10, 1), (499, 1), (1000, 2), (50_000, 100), (10**6, 256)])
def test_without_token_statistics_auto_batch_size_is_azures_point_two_percent(examples: int, batch: int) -> None:
    assert auto_batch_size(examples) == batch


@pytest.mark.parametrize(
    ("examples", "tokens_mean", "epochs", "batch"),
    [
        (200, 60, 3, 17),  # short chats: ~1k tokens a step (1024 / 60), 36 steps over the run
        (200, 500, 3, 2),  # long chats: two fill a step
        (60, 60, 3, 7),  # few examples: at least MIN_AUTO_STEPS (24) steps, so 180 // 24
        (10, 30, 10, 4),  # tiny file, many epochs
        (5, 2000, 1, 1),  # one example is already more than a step's tokens
        (100_000, 10, 1, MAX_AUTO_BATCH),  # capped
    ],
)
def test_auto_batch_size_fills_a_step_with_tokens_but_keeps_enough_steps(
    examples: int, tokens_mean: float, epochs: int, batch: int
) -> None:
    assert auto_batch_size(examples, tokens_mean, epochs) == batch
    steps = -(-examples * epochs // batch)
    assert batch * tokens_mean <= TARGET_STEP_TOKENS * 1.5 or batch == 1
    assert steps >= min(MIN_AUTO_STEPS, examples * epochs)


@pytest.mark.parametrize(("batch", "multiplier"), [(1, 1.0), (4, 2.0), (17, 4.123), (64, MAX_AUTO_LR_MULTIPLIER)])
def test_auto_learning_rate_grows_with_the_square_root_of_the_batch(batch: int, multiplier: float) -> None:
    assert auto_learning_rate_multiplier(batch) == multiplier


def test_explicit_values_are_honoured_exactly() -> None:
    requested = Hyperparameters(n_epochs=7, batch_size=3, learning_rate_multiplier=0.25)
    assert requested.resolve(200, Method.SUPERVISED, tokens_mean=60) == requested
    only_batch = Hyperparameters(batch_size=1).resolve(200, Method.SUPERVISED, tokens_mean=60)
    assert only_batch.batch_size == 1
    assert only_batch.learning_rate_multiplier == 1.0, "the learning rate goes with the batch actually used"


def test_resolve_keeps_given_values_and_fills_auto() -> None:
    requested = Hyperparameters(n_epochs=2)
    resolved = requested.resolve(1000, Method.SUPERVISED)
    assert resolved == Hyperparameters(n_epochs=2, batch_size=2, learning_rate_multiplier=1.414, beta=None)
    with_tokens = requested.resolve(1000, Method.SUPERVISED, tokens_mean=100)
    assert with_tokens == Hyperparameters(n_epochs=2, batch_size=10, learning_rate_multiplier=3.162, beta=None)
    assert resolved.resolved
    assert not requested.resolved
    assert Hyperparameters().resolve(10, Method.DPO).beta == 0.1
    assert Hyperparameters.from_dict(resolved.to_dict()) == resolved


def test_model_names() -> None:
    job = "ftjob-0123456789abcdef0123456789abcdef"
    assert fine_tuned_model_name("SmolLM2-135M-Instruct", job, None) == (
        "SmolLM2-135M-Instruct.ft-0123456789abcdef0123456789abcdef"
    )
    named = fine_tuned_model_name("base", job, "colours")
    assert named.endswith("-colours")
    assert checkpoint_model_name(named, 12) == f"{named}:ckpt-step-12"
