"""The job state machine and hyperparameter rules (spec §4.2, §6.2). Run: .venv/bin/pytest tests/unit/domain"""

from __future__ import annotations

import pytest

from tunery.domain.errors import Conflict
from tunery.domain.jobs import (
    TERMINAL,
    TRANSITIONS,
    Hyperparameters,
    JobStatus,
    Method,
    auto_batch_size,
    auto_epochs,
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
def test_auto_batch_size_is_point_two_percent(examples: int, batch: int) -> None:
    assert auto_batch_size(examples) == batch


def test_resolve_keeps_given_values_and_fills_auto() -> None:
    requested = Hyperparameters(n_epochs=2)
    resolved = requested.resolve(1000, Method.SUPERVISED)
    assert resolved == Hyperparameters(n_epochs=2, batch_size=2, learning_rate_multiplier=1.0, beta=None)
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
