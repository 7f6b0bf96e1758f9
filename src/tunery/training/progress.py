"""The run folder shared by a training subprocess and its worker: its layout, and the typed records between them.

``RunFolder`` is the one place that names the folder's files. The worker writes ``spec.json``; the trainer
appends one typed record (``Started``, ``Step``, ``CheckpointSaved``, ``Paused``, ``Cancelled``,
``Completed``, ``Failed``) per line to ``progress.jsonl`` (flushed and fsynced, so a crash loses at most the
line being written), checked against its type when written and parsed back into it when the worker tails
the file. The worker asks the trainer to pause or cancel by writing ``control.json``; the trainer looks at it
at every optimizer-step boundary. Files survive a crash of either side, which is what makes recovery
possible. No torch here.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

SPEC_FILE = "spec.json"  # the TrainingSpec the worker wrote for this attempt
PROGRESS_FILE = "progress.jsonl"
CONTROL_FILE = "control.json"
STATE_DIR = "state"  # the resumable state (adapter, optimizer, scheduler, RNG, data position), as the loop saves it
STATE_FILE = "state.json"  # in STATE_DIR: where the run stands (``step`` among others)
CHECKPOINTS_DIR = "checkpoints"  # step-<n>/: an adapter and its metrics.json per saved checkpoint
ADAPTER_DIR = "adapter"  # the final adapter
REFERENCE_FILE = "reference.json"  # DPO: the reference log-probabilities of every pair
LOG_FILE = "trainer.log"  # the trainer's stdout and stderr
CRASH_FILE = "crashes"  # how many times a trainer of this job died without a last record (the retry budget)
GRADED_DIR = "graded"  # RFT: step-<n>.jsonl, every graded validation answer of the evaluation at step n

ControlRequest = Literal["pause", "cancel"]


@dataclass(frozen=True, slots=True)
class RunFolder:
    """The layout of one job's run folder, for the worker and the trainer alike."""

    path: Path

    @property
    def spec(self) -> Path:
        return self.path / SPEC_FILE

    @property
    def progress(self) -> Path:
        return self.path / PROGRESS_FILE

    def earlier_progress(self, attempt: int) -> Path:
        """Where an earlier attempt's progress file is kept (``progress-<attempt>.jsonl``)."""
        return self.path / f"progress-{attempt}.jsonl"

    @property
    def control(self) -> Path:
        return self.path / CONTROL_FILE

    @property
    def state(self) -> Path:
        return self.path / STATE_DIR

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step}"

    @property
    def adapter(self) -> Path:
        return self.path / ADAPTER_DIR

    @property
    def reference(self) -> Path:
        return self.path / REFERENCE_FILE

    @property
    def log(self) -> Path:
        return self.path / LOG_FILE

    @property
    def crashes(self) -> Path:
        return self.path / CRASH_FILE

    def graded(self, step: int) -> Path:
        """RFT: the graded validation answers of the evaluation at ``step`` (0: before training), one JSON
        object per answer, written before the record that reports the evaluation (``write_graded``)."""
        return self.path / GRADED_DIR / f"step-{step}.jsonl"


def write_graded(path: Path, samples: list[dict[str, Any]]) -> None:
    """Write graded samples as JSON lines, atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}~{os.getpid()}")
    with staging.open("w", encoding="utf-8") as out:
        for sample in samples:
            out.write(json.dumps(sample) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(staging, path)


def read_graded(path: Path) -> list[dict[str, Any]]:
    """The graded samples ``write_graded`` wrote; [] when there is no such file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class ProgressKind(StrEnum):
    STARTED = "started"
    STEP = "step"
    CHECKPOINT = "checkpoint"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    FAILED = "failed"


class _Record(BaseModel):
    """One line of ``progress.jsonl``. The trainer's values are checked against these types when written
    (a record that does not fit is a bug in the trainer, raised there) and parsed back into them when read."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    time: float = Field(default_factory=time.time)

    @property
    def data(self) -> dict[str, Any]:
        """The values the record was given, without ``kind`` and ``time`` (for scripts that read runs)."""
        return self.model_dump(exclude={"kind", "time"}, exclude_unset=True)


Metrics = dict[str, float | None]


class Started(_Record):
    """The trainer is ready: the run's size, where it resumes, and where start-up time went."""

    kind: Literal[ProgressKind.STARTED] = ProgressKind.STARTED
    total_steps: int
    n_epochs: int = 0
    steps_per_epoch: int = 0
    examples: int = 0
    validation_examples: int = 0
    tokens_per_epoch: int = 0
    trainable_tokens_per_epoch: int = 0
    resumed_from_step: int = 0
    trainable_params: int = 0
    device: str = "cpu"
    dtype: str = "fp32"
    method: str = "supervised"
    initial_validation: Metrics = Field(default_factory=dict)  # full_valid_* (valid_* for RFT) at step 0
    timings: dict[str, float | None] = Field(default_factory=dict)  # seconds per start-up phase


class Step(_Record):
    """One optimizer step. Besides these fields it carries the results.csv metric columns of the step
    (``train_loss``, ``valid_mean_token_accuracy``, ``full_valid_loss`` ...): numbers, or null."""

    model_config = ConfigDict(frozen=True, extra="allow")

    kind: Literal[ProgressKind.STEP] = ProgressKind.STEP
    step: int
    epoch: int = 0
    total_steps: int | None = None
    trained_tokens: int = 0
    tokens_per_s: float | None = None
    seconds_per_step: float | None = None
    learning_rate: float | None = None

    @model_validator(mode="after")
    def _metrics_are_numbers(self) -> Step:
        for name, value in (self.model_extra or {}).items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"metric {name} must be a number or null, not {value!r}")
        return self

    @property
    def metrics(self) -> Metrics:
        """The step's metric columns (every field beyond the named ones)."""
        return {name: None if value is None else float(value) for name, value in (self.model_extra or {}).items()}


class CheckpointSaved(_Record):
    """An epoch ended: a deployable adapter folder was saved (``checkpoints/step-<step>``)."""

    kind: Literal[ProgressKind.CHECKPOINT] = ProgressKind.CHECKPOINT
    step: int
    epoch: int = 0
    path: str
    metrics: Metrics = Field(default_factory=dict)
    save_s: float | None = None


class Paused(_Record):
    """The trainer stopped on request after saving its state and a deployable checkpoint."""

    kind: Literal[ProgressKind.PAUSED] = ProgressKind.PAUSED
    step: int
    state_path: str | None = None
    checkpoint: str | None = None
    metrics: Metrics = Field(default_factory=dict)


class Cancelled(_Record):
    kind: Literal[ProgressKind.CANCELLED] = ProgressKind.CANCELLED
    step: int = 0


class StoppedEarly(BaseModel):
    """Early stopping ended the run before its last epoch; the model is the best checkpoint."""

    model_config = ConfigDict(frozen=True)

    epoch: int
    n_epochs: int
    best_step: int
    best_full_valid_loss: float | None = None
    patience: int = 1
    min_delta: float = 0.0


class Completed(_Record):
    kind: Literal[ProgressKind.COMPLETED] = ProgressKind.COMPLETED
    step: int
    trained_tokens: int = 0
    adapter_path: str | None = None
    best_step: int | None = None  # an earlier checkpoint picked by early stopping or RFT's best validation reward
    stopped_early: StoppedEarly | None = None


class Failed(_Record):
    kind: Literal[ProgressKind.FAILED] = ProgressKind.FAILED
    code: str = "internal_error"
    message: str = "Training failed."


ProgressRecord = Annotated[
    Started | Step | CheckpointSaved | Paused | Cancelled | Completed | Failed, Field(discriminator="kind")
]
_RECORD: TypeAdapter[ProgressRecord] = TypeAdapter(ProgressRecord)


def parse_record(value: dict[str, Any] | bytes | str) -> ProgressRecord:
    """One record from its JSON object (or line). Raises pydantic's ValidationError when it does not fit."""
    if isinstance(value, dict):
        return _RECORD.validate_python(value)
    return _RECORD.validate_json(value)


class ProgressWriter:
    """Appends records durably; used by the training subprocess."""

    def __init__(self, run_dir: Path) -> None:
        self._path = RunFolder(run_dir).progress

    def emit(self, kind: ProgressKind, **data: Any) -> None:
        """Write the ``kind`` record with these values, checked against its type first."""
        self.write(parse_record({"kind": kind.value, **data}))

    def write(self, record: ProgressRecord) -> None:
        # what the trainer gave, as it gave it (a null metric stays null; defaults are not written)
        values = record.model_dump(mode="json", exclude_unset=True, exclude={"kind", "time"})
        line = json.dumps({"kind": record.kind.value, "time": record.time, **values}, allow_nan=False)
        with self._path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())


class ProgressReader:
    """Reads records appended since the last call; tolerates a half-written last line."""

    def __init__(self, run_dir: Path, offset: int = 0) -> None:
        self._path = RunFolder(run_dir).progress
        self.offset = offset

    def read_new(self) -> list[ProgressRecord]:
        if not self._path.exists():
            return []
        with self._path.open("rb") as source:
            source.seek(self.offset)
            chunk = source.read()
        records: list[ProgressRecord] = []
        consumed = 0
        for raw in chunk.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break  # the writer is mid-line; pick it up next time
            consumed += len(raw)
            records.append(parse_record(raw))
        self.offset += consumed
        return records


def saved_step(run_dir: Path) -> int | None:
    """The optimizer step a run's saved state stands at: where a resumed trainer continues. None without one."""
    try:
        return int(json.loads((RunFolder(run_dir).state / STATE_FILE).read_text())["step"])
    except (FileNotFoundError, NotADirectoryError, KeyError, TypeError, ValueError):
        return None


def request(run_dir: Path, what: ControlRequest) -> None:
    """Ask the trainer to pause or cancel at its next step boundary (atomic write)."""
    control = RunFolder(run_dir).control
    tmp = control.with_name(CONTROL_FILE + ".tmp")
    tmp.write_text(json.dumps({"request": what, "time": time.time()}))
    tmp.replace(control)


def requested(run_dir: Path) -> ControlRequest | None:
    """What the worker asked for, if anything."""
    try:
        value = json.loads(RunFolder(run_dir).control.read_text()).get("request")
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return value if value in ("pause", "cancel") else None


def clear_request(run_dir: Path) -> None:
    RunFolder(run_dir).control.unlink(missing_ok=True)
