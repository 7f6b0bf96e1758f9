"""Uploaded files: training data, eval data and the results files Tunery writes for jobs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from tunery.domain.datasets import DatasetStats, Problem


class FilePurpose(StrEnum):
    FINE_TUNE = "fine-tune"
    FINE_TUNE_RESULTS = "fine-tune-results"
    EVALS = "evals"  # rows for eval runs (a ``jsonl`` or ``completions`` data source's ``file_id``)


# Purposes a client may upload; ``fine-tune-results`` is written by Tunery itself.
UPLOADABLE_PURPOSES = frozenset({FilePurpose.FINE_TUNE, FilePurpose.EVALS})


class FileStatus(StrEnum):
    PENDING = "pending"  # stored, not yet checked
    RUNNING = "running"  # being checked
    PROCESSED = "processed"  # checked and good (terminal)
    ERROR = "error"  # checked and bad; see status_details (terminal)
    DELETED = "deleted"

    @property
    def terminal(self) -> bool:
        return self in (FileStatus.PROCESSED, FileStatus.ERROR, FileStatus.DELETED)


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    project_id: str
    filename: str
    purpose: FilePurpose
    bytes: int
    created_at: int
    status: FileStatus
    status_details: str | None = None
    expires_at: int | None = None
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    stats: DatasetStats | None = None
    format: str | None = None

    def with_changes(self, **changes: object) -> FileRecord:
        return replace(self, **changes)  # type: ignore[arg-type]
