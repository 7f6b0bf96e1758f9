"""Evals wire objects: ``Eval``, ``EvalRun``, ``EvalRunOutputItem`` as OpenAI's OpenAPI shapes them.

The same bodies on every layout (spec §4: Azure differs only in ``report_url``). Tunery adds ``progress``
(items done / total) to a run, and ``job_id``/``checkpoint`` when a fine-tuning job created the run.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from tunery.domain.evals import Eval, EvalRun, OutputItem


class EvalObject(BaseModel):
    object: Literal["eval"] = "eval"
    id: str
    name: str
    data_source_config: dict[str, Any]
    testing_criteria: list[dict[str, Any]]
    created_at: int
    metadata: dict[str, str] | None

    @classmethod
    def from_domain(cls, ev: Eval) -> EvalObject:
        return cls(id=ev.id, name=ev.name, data_source_config=ev.data_source_config,
                   testing_criteria=ev.testing_criteria, created_at=ev.created_at, metadata=ev.metadata)  # fmt: skip


class EvalRunObject(BaseModel):
    object: Literal["eval.run"] = "eval.run"
    id: str
    eval_id: str
    status: str
    model: str
    name: str
    created_at: int
    report_url: str
    result_counts: dict[str, int]
    per_model_usage: list[dict[str, Any]]
    per_testing_criteria_results: list[dict[str, Any]]
    data_source: dict[str, Any]
    metadata: dict[str, str] | None
    error: dict[str, str]
    progress: dict[str, int]  # Tunery extension: {"done", "total"} items
    fine_tuning_job_id: str | None = None  # Tunery extension: per-checkpoint evals
    checkpoint_step: int | None = None

    @classmethod
    def from_domain(cls, run: EvalRun, report_url: str) -> EvalRunObject:
        return cls(
            id=run.id, eval_id=run.eval_id, status=run.status.value, model=run.model, name=run.name,
            created_at=run.created_at, report_url=report_url, result_counts=run.result_counts,
            per_model_usage=run.per_model_usage, per_testing_criteria_results=run.per_testing_criteria_results,
            data_source=run.data_source, metadata=run.metadata, error=run.error,
            progress={"done": run.result_counts.get("total", 0), "total": run.items_total},
            fine_tuning_job_id=run.target.job_id if run.target else None,
            checkpoint_step=run.target.step if run.target else None,
        )  # fmt: skip


class EvalRunOutputItemObject(BaseModel):
    object: Literal["eval.run.output_item"] = "eval.run.output_item"
    id: str
    run_id: str
    eval_id: str
    created_at: int
    status: str
    datasource_item_id: int
    datasource_item: dict[str, Any]
    results: list[dict[str, Any]]
    sample: dict[str, Any]

    @classmethod
    def from_domain(cls, item: OutputItem) -> EvalRunOutputItemObject:
        return cls(id=item.id, run_id=item.run_id, eval_id=item.eval_id, created_at=item.created_at,
                   status=item.status, datasource_item_id=item.datasource_item_id,
                   datasource_item=item.datasource_item, results=item.results, sample=item.sample)  # fmt: skip


class EvalDeleted(BaseModel):
    object: Literal["eval.deleted"] = "eval.deleted"
    deleted: bool = True
    eval_id: str


class EvalRunDeleted(BaseModel):
    object: Literal["eval.run.deleted"] = "eval.run.deleted"
    deleted: bool = True
    run_id: str
