"""The trainer <-> worker records: one typed schema for what the trainer writes and the worker reads.

Run alone: ``.venv/bin/pytest tests/unit/training/test_progress.py`` (no torch).
"""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from tunery.training.progress import (
    CheckpointSaved,
    Completed,
    ProgressKind,
    ProgressReader,
    ProgressWriter,
    RunFolder,
    Started,
    Step,
    parse_record,
)


def test_records_round_trip_typed_and_a_record_that_does_not_fit_is_never_written(tmp_path: Path) -> None:
    writer = ProgressWriter(tmp_path)
    writer.emit(ProgressKind.STARTED, total_steps=4, resumed_from_step=2, timings={"model_load": 1.5}, device="cpu")
    writer.emit(ProgressKind.STEP, step=3, epoch=1, trained_tokens=30, train_loss=1.25, valid_loss=None)
    writer.write(CheckpointSaved(step=3, epoch=1, path=str(RunFolder(tmp_path).checkpoint(3)), metrics={"x": 1.0}))
    with pytest.raises(pydantic.ValidationError, match="train_loss"):
        writer.emit(ProgressKind.STEP, step=4, train_loss="low")  # a trainer bug: raised where it happens
    with pytest.raises(pydantic.ValidationError, match="path"):
        writer.emit(ProgressKind.CHECKPOINT, step=4)
    with RunFolder(tmp_path).progress.open("a") as out:
        out.write('{"kind": "completed", "step": 4, "trained_tokens": 40, "stopped_ea')  # the trainer is mid-line

    reader = ProgressReader(tmp_path)
    started, step, checkpoint = reader.read_new()
    assert isinstance(started, Started)
    assert (started.total_steps, started.resumed_from_step, started.timings) == (4, 2, {"model_load": 1.5})
    assert isinstance(step, Step)
    assert (step.step, step.trained_tokens, step.metrics) == (3, 30, {"train_loss": 1.25, "valid_loss": None})
    assert step.data == {"step": 3, "epoch": 1, "trained_tokens": 30, "train_loss": 1.25, "valid_loss": None}
    assert isinstance(checkpoint, CheckpointSaved)
    assert checkpoint.path.endswith("checkpoints/step-3")

    with RunFolder(tmp_path).progress.open("a") as out:
        out.write('rly": {"epoch": 1, "n_epochs": 3, "best_step": 2, "best_full_valid_loss": 0.5}}\n')
    (completed,) = reader.read_new()
    assert isinstance(completed, Completed)
    assert completed.stopped_early is not None
    assert (completed.step, completed.stopped_early.best_step, completed.stopped_early.best_full_valid_loss) == (
        4, 2, 0.5,
    )  # fmt: skip


def test_unknown_kinds_and_wrong_types_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError):
        parse_record({"kind": "exploded", "step": 1})
    with pytest.raises(pydantic.ValidationError):
        parse_record(b'{"kind": "started", "total_steps": "many"}')
    with pytest.raises(pydantic.ValidationError):
        parse_record({"kind": "failed", "code": "x", "message": "y", "surprise": 1})  # only steps carry extras
