"""EvalStore: evals, runs and output items round-trip; pages with cursors; runs claimed once, a stale run
claimed again (crash recovery), cancel by compare-and-set; deleting an eval takes its runs and items.

Run: ``pytest tests/unit/storage/test_evals.py`` (add TUNERY_TEST_DATABASE_URL for PostgreSQL too).
"""

from __future__ import annotations

import pytest

from tunery.domain.errors import InvalidRequest, NotFound
from tunery.domain.evals import (
    Eval,
    EvalRun,
    OutputItem,
    RunStatus,
    RunTarget,
    new_eval_id,
    new_output_item_id,
    new_run_id,
)
from tunery.domain.pagination import Order, PageRequest
from tunery.domain.projects import Project
from tunery.storage import Database, EvalStore

CONFIG = {"type": "custom", "schema": {"type": "object", "properties": {"item": {"type": "object"}}}}
CRITERION = {"type": "string_check", "name": "m", "id": "m-1", "input": "{{sample.output_text}}",
             "reference": "{{item.a}}", "operation": "eq"}  # fmt: skip


def make_eval(project: Project, n: int = 0) -> Eval:
    return Eval(id=new_eval_id(), project_id=project.id, name=f"e{n}", created_at=1_700_000_000 + n,
                data_source_config=CONFIG, testing_criteria=[CRITERION], metadata={"k": "v"})  # fmt: skip


def make_run(ev: Eval, n: int = 0, target: RunTarget | None = None) -> EvalRun:
    return EvalRun(id=new_run_id(), eval_id=ev.id, project_id=ev.project_id, name=f"r{n}", model="m",
                   status=RunStatus.QUEUED, created_at=1_700_000_000 + n, data_source={"type": "jsonl"},
                   target=target)  # fmt: skip


def make_item(run: EvalRun, index: int, status: str = "pass") -> OutputItem:
    return OutputItem(id=new_output_item_id(), run_id=run.id, eval_id=run.eval_id, created_at=1, status=status,
                      datasource_item_id=index, datasource_item={"a": index},
                      results=[{"name": "m-1", "score": 1.0, "passed": True}], sample={"output": []})  # fmt: skip


def test_evals_round_trip_page_update_and_delete(db: Database, project: Project, other_project: Project) -> None:
    store = EvalStore(db)
    made = [make_eval(project, n) for n in range(3)]
    for ev in made:
        store.insert_eval(ev)
    assert store.get_eval(project.id, made[0].id) == made[0]
    with pytest.raises(NotFound):
        store.get_eval(other_project.id, made[0].id)
    first = store.list_evals(project.id, PageRequest(limit=2, order=Order.ASC))
    assert [e.id for e in first.data] == [made[0].id, made[1].id]
    assert first.has_more
    rest = store.list_evals(project.id, PageRequest(limit=2, after=made[1].id, order=Order.ASC))
    assert [e.id for e in rest.data] == [made[2].id]
    assert not rest.has_more
    with pytest.raises(InvalidRequest):
        store.list_evals(other_project.id, PageRequest(limit=2, after=made[1].id))
    store.update_eval(made[0].with_changes(name="renamed", metadata=None))
    assert store.get_eval(project.id, made[0].id).name == "renamed"
    run = make_run(made[0])
    store.insert_run(run)
    store.insert_items([make_item(run, 0)])
    store.delete_eval(project.id, made[0].id)
    assert store.get_run_any(run.id) is None
    assert store.count_items(run.id) == 0
    with pytest.raises(NotFound):
        store.delete_eval(project.id, made[0].id)


def test_runs_claim_once_recover_when_stale_and_cancel(db: Database, project: Project) -> None:
    store = EvalStore(db)
    ev = make_eval(project)
    store.insert_eval(ev)
    target = RunTarget(job_id="ftjob-x", checkpoint="m:ckpt-step-3", step=3)
    run = make_run(ev, target=target)
    store.insert_run(run)
    assert store.get_run(project.id, ev.id, run.id).target == target
    claimed = store.claim_next("w1", now=100.0, stale_after=30)
    assert claimed is not None
    assert claimed.id == run.id
    assert store.claim_next("w2", now=110.0, stale_after=30) is None  # held by a live worker
    started = store.transition(run.id, RunStatus.IN_PROGRESS, expect={RunStatus.QUEUED})
    assert started is not None
    assert started.status is RunStatus.IN_PROGRESS
    assert store.heartbeat(run.id, "w1", now=120.0) is RunStatus.IN_PROGRESS
    # w1 dies: after stale_after seconds without a beat, another worker resumes the run.
    again = store.claim_next("w2", now=200.0, stale_after=30)
    assert again is not None
    assert again.id == run.id
    assert again.status is RunStatus.IN_PROGRESS
    assert store.heartbeat(run.id, "w1", now=201.0) is None  # w1 lost it
    store.insert_items([make_item(run, 0), make_item(run, 1, "fail")])
    assert store.done_indices(run.id) == {0, 1}
    assert [i.status for i in store.list_items(run.id, PageRequest(limit=10, order=Order.ASC)).data] == ["pass", "fail"]
    assert [i.datasource_item_id for i in store.list_items(run.id, PageRequest(limit=10), status="fail").data] == [1]
    canceled = store.transition(run.id, RunStatus.CANCELED, expect={RunStatus.QUEUED, RunStatus.IN_PROGRESS})
    assert canceled is not None
    assert store.transition(run.id, RunStatus.COMPLETED, expect={RunStatus.IN_PROGRESS}) is None
    assert store.runs_for_job("ftjob-x")[0].id == run.id
    saved = canceled.with_changes(result_counts={"total": 2, "errored": 0, "failed": 1, "passed": 1})
    store.save_run(saved)
    assert store.get_run(project.id, ev.id, run.id).result_counts["passed"] == 1
    page = store.list_runs(project.id, ev.id, PageRequest(limit=5), status=RunStatus.CANCELED)
    assert [r.id for r in page.data] == [run.id]
    store.delete_run(project.id, ev.id, run.id)
    with pytest.raises(NotFound):
        store.get_run(project.id, ev.id, run.id)
