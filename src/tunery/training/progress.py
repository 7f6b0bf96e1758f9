"""The channel between a training subprocess and its worker: files in the run directory.

The trainer appends one JSON object per line to ``progress.jsonl`` (flushed and fsynced, so a crash
loses at most the line being written); the worker tails it. The worker asks the trainer to pause or
cancel by writing ``control.json``; the trainer looks at it at every optimizer-step boundary.
Files survive a crash of either side, which is what makes recovery possible. No torch here.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

PROGRESS_FILE = "progress.jsonl"
CONTROL_FILE = "control.json"
STATE_DIR = "state"  # the resumable state (adapter, optimizer, scheduler, RNG, data position), as the loop saves it
STATE_FILE = "state.json"  # in STATE_DIR: where the run stands (``step`` among others)

ControlRequest = Literal["pause", "cancel"]


class ProgressKind(StrEnum):
    STARTED = "started"  # total_steps, n_epochs, examples, tokens_per_epoch, resumed_from_step
    STEP = "step"  # one optimizer step: the results.csv columns + epoch, trained_tokens, tokens_per_s
    CHECKPOINT = "checkpoint"  # step, epoch, path (an adapter folder), metrics (dict)
    PAUSED = "paused"  # step, state_path, checkpoint path (deployable adapter at the pause point)
    CANCELLED = "cancelled"  # step
    COMPLETED = "completed"  # step, trained_tokens, adapter_path
    FAILED = "failed"  # code, message


@dataclass(frozen=True, slots=True)
class ProgressRecord:
    kind: ProgressKind
    time: float
    data: dict[str, Any]


class ProgressWriter:
    """Appends records durably; used by the training subprocess."""

    def __init__(self, run_dir: Path) -> None:
        self._path = run_dir / PROGRESS_FILE

    def emit(self, kind: ProgressKind, **data: Any) -> None:
        line = json.dumps({"kind": kind.value, "time": time.time(), **data}, allow_nan=False)
        with self._path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())


class ProgressReader:
    """Reads records appended since the last call; tolerates a half-written last line."""

    def __init__(self, run_dir: Path, offset: int = 0) -> None:
        self._path = run_dir / PROGRESS_FILE
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
            data = json.loads(raw)
            kind = ProgressKind(data.pop("kind"))
            records.append(ProgressRecord(kind=kind, time=float(data.pop("time")), data=data))
        self.offset += consumed
        return records


def saved_step(run_dir: Path) -> int | None:
    """The optimizer step a run's saved state stands at: where a resumed trainer continues. None without one."""
    try:
        return int(json.loads((run_dir / STATE_DIR / STATE_FILE).read_text())["step"])
    except (FileNotFoundError, NotADirectoryError, KeyError, TypeError, ValueError):
        return None


def request(run_dir: Path, what: ControlRequest) -> None:
    """Ask the trainer to pause or cancel at its next step boundary (atomic write)."""
    tmp = run_dir / (CONTROL_FILE + ".tmp")
    tmp.write_text(json.dumps({"request": what, "time": time.time()}))
    tmp.replace(run_dir / CONTROL_FILE)


def requested(run_dir: Path) -> ControlRequest | None:
    """What the worker asked for, if anything."""
    path = run_dir / CONTROL_FILE
    try:
        value = json.loads(path.read_text()).get("request")
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return value if value in ("pause", "cancel") else None


def clear_request(run_dir: Path) -> None:
    (run_dir / CONTROL_FILE).unlink(missing_ok=True)
