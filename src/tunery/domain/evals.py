"""Evals: the eval, its runs and their output items as records, and the run's status machine. No I/O.

Ids follow OpenAI's shape (``eval_<32 hex>``, ``evalrun_<32 hex>``, ``outputitem_<32 hex>``). The eval keeps
its data source config and testing criteria in the normalised form the API echoes (spec §2.2); a run keeps
its data source as echoed (§2.3) and its counts as reported (§2.4).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

NO_ERROR: dict[str, str] = {"code": "", "message": ""}


def new_eval_id() -> str:
    return f"eval_{uuid.uuid4().hex}"


def new_run_id() -> str:
    return f"evalrun_{uuid.uuid4().hex}"


def new_output_item_id() -> str:
    return f"outputitem_{uuid.uuid4().hex}"


class RunStatus(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED)


@dataclass(frozen=True, slots=True)
class Eval:
    id: str
    project_id: str
    name: str
    created_at: int
    data_source_config: dict[str, Any]  # {"type": "custom", "schema": {...}} as echoed
    testing_criteria: list[dict[str, Any]]  # graders as echoed, each with its "id"
    metadata: dict[str, str] | None = None

    @property
    def item_schema(self) -> dict[str, Any]:
        properties = self.data_source_config.get("schema", {}).get("properties", {})
        return dict(properties.get("item") or {"type": "object"})

    def with_changes(self, **changes: Any) -> Eval:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class RunTarget:
    """Tunery's extension: the job checkpoint (or base model) a run scores, for per-checkpoint evals."""

    job_id: str
    checkpoint: str | None  # the checkpoint model name; None for the job's base model
    step: int = 0


@dataclass(frozen=True, slots=True)
class EvalRun:
    id: str
    eval_id: str
    project_id: str
    name: str
    model: str  # data_source.model; "" for a jsonl run
    status: RunStatus
    created_at: int
    data_source: dict[str, Any]  # as echoed
    metadata: dict[str, str] | None = None
    error: dict[str, str] = field(default_factory=lambda: dict(NO_ERROR))
    result_counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "errored": 0, "failed": 0, "passed": 0})
    per_model_usage: list[dict[str, Any]] = field(default_factory=list)
    per_testing_criteria_results: list[dict[str, Any]] = field(default_factory=list)
    target: RunTarget | None = None
    items_total: int = 0  # rows in the data source, known once the run starts (progress)
    worker_id: str | None = None
    heartbeat_at: float | None = None
    finished_at: int | None = None

    def with_changes(self, **changes: Any) -> EvalRun:
        return replace(self, **changes)

    @property
    def pass_rate(self) -> float | None:
        total = self.result_counts.get("total", 0)
        return self.result_counts.get("passed", 0) / total if total else None


@dataclass(frozen=True, slots=True)
class OutputItem:
    id: str
    run_id: str
    eval_id: str
    created_at: int
    status: str  # "pass" | "fail"
    datasource_item_id: int  # the 0-based row index
    datasource_item: dict[str, Any]
    results: list[dict[str, Any]]  # [{"name": criterion id, "type", "score", "passed", "sample"}, ...]
    sample: dict[str, Any]
    errored: bool = False
