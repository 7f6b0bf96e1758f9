"""CheckpointStore and MetricStore: fields round-trip; checkpoint pages by step with cursors, lookups
scoped to a project, the rename at success, retention deletes; metric upserts and the drop after a resume.

Run: ``pytest tests/unit/storage/test_checkpoints.py`` (add TUNERY_TEST_DATABASE_URL for PostgreSQL too).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy.exc import IntegrityError

from tests.unit.storage.test_jobs import add_jobs, walk
from tunery.domain.checkpoints import Checkpoint, MetricRow
from tunery.domain.errors import Conflict, InvalidRequest, NotFound
from tunery.domain.ids import new_id
from tunery.domain.jobs import Job, checkpoint_model_name, fine_tuned_model_name
from tunery.domain.pagination import Order, PageRequest
from tunery.domain.projects import Project
from tunery.storage import CheckpointStore, Database, JobStore, MetricStore


def make_checkpoint(job: Job, step: int, **changes: object) -> Checkpoint:
    model = fine_tuned_model_name(job.base_model, job.id, None)
    checkpoint = Checkpoint(
        id=new_id("ftchkpt"),
        job_id=job.id,
        project_id=job.project_id,
        created_at=1_700_000_000 + step,
        step_number=step,
        fine_tuned_model_checkpoint=checkpoint_model_name(model, step),
        adapter_key=f"adapters/{job.id}/step-{step}",
        metrics={"step": step, "train_loss": 1.0 / (step + 1)},
    )
    return replace(checkpoint, **changes)


def ids(items: list[Checkpoint]) -> list[str]:
    return [item.id for item in items]


def test_every_field_round_trips_and_lookups_are_scoped(db: Database, project: Project, other_project: Project) -> None:
    store = CheckpointStore(db)
    (job,) = add_jobs(JobStore(db), project, 1)
    checkpoint = make_checkpoint(
        job,
        2**30,
        created_at=4_102_444_800,
        metrics={"step": 2**30, "train_loss": 0.125, "valid_mean_token_accuracy": 0.9},
    )
    bare = make_checkpoint(job, 1, metrics={})
    for item in (checkpoint, bare):
        store.insert(item)
    assert store.get(project.id, checkpoint.id) == checkpoint
    assert store.get_by_name(project.id, checkpoint.fine_tuned_model_checkpoint) == checkpoint
    assert store.list_all(job.id) == [bare, checkpoint]
    assert store.get(other_project.id, checkpoint.id) is None
    assert store.get_by_name(other_project.id, checkpoint.fine_tuned_model_checkpoint) is None
    assert store.get(project.id, "ftchkpt-missing") is None
    assert store.get_by_name(project.id, "nope:ckpt-step-1") is None
    with pytest.raises(IntegrityError):  # names are unique
        store.insert(make_checkpoint(job, 1, fine_tuned_model_checkpoint=bare.fine_tuned_model_checkpoint))


def test_pages_by_step_with_cursors(db: Database, project: Project) -> None:
    store = CheckpointStore(db)
    job, other = add_jobs(JobStore(db), project, 2)
    # Inserted out of step order: a resumed run, say.
    items = [make_checkpoint(job, step) for step in (20, 10, 40, 30, 50)]
    for item in [*items, make_checkpoint(other, 25)]:
        store.insert(item)
    by_step = sorted(items, key=lambda c: c.step_number)
    for order, expected in ((Order.DESC, ids(by_step)[::-1]), (Order.ASC, ids(by_step))):
        assert walk(lambda page: store.list(job.id, page), 2, order) == (expected, [True, True, False])
    assert store.list_all(job.id) == by_step

    for cursor in ("ftchkpt-missing", store.list_all(other.id)[0].id):
        with pytest.raises(InvalidRequest) as caught:
            store.list(job.id, PageRequest(limit=10, after=cursor))
        assert caught.value.param == "after"
        assert cursor in caught.value.message


def test_the_newest_checkpoint_takes_the_model_name(db: Database, project: Project) -> None:
    store = CheckpointStore(db)
    (job,) = add_jobs(JobStore(db), project, 1)
    older, newest = make_checkpoint(job, 10), make_checkpoint(job, 20)
    for item in (older, newest):
        store.insert(item)
    model = fine_tuned_model_name(job.base_model, job.id, None)
    store.rename(newest.id, model)
    renamed = replace(newest, fine_tuned_model_checkpoint=model)
    assert store.get_by_name(project.id, model) == renamed
    assert store.get_by_name(project.id, newest.fine_tuned_model_checkpoint) is None
    with pytest.raises(Conflict):
        store.rename(older.id, model)
    with pytest.raises(NotFound):
        store.rename("ftchkpt-missing", "x")
    assert store.list_all(job.id) == [older, renamed]


def test_delete_drops_one_checkpoint(db: Database, project: Project) -> None:
    store = CheckpointStore(db)
    (job,) = add_jobs(JobStore(db), project, 1)
    items = [make_checkpoint(job, step) for step in (1, 2, 3)]
    for item in items:
        store.insert(item)
    store.delete(items[0].id)
    store.delete(items[0].id)  # already gone: nothing happens
    assert store.list_all(job.id) == items[1:]
    assert store.get(project.id, items[0].id) is None


def test_metrics_upsert_list_and_drop_after_a_step(db: Database, project: Project) -> None:
    store = MetricStore(db)
    job, other = add_jobs(JobStore(db), project, 2)
    rows = [
        MetricRow(job_id=job.id, step=step, values={"step": step, "train_loss": 2.0 - step / 10})
        for step in (3, 1, 2, 4)
    ]
    for row in [*rows, MetricRow(job_id=other.id, step=1, values={"train_loss": 9.0})]:
        store.upsert(row)
    assert store.list(job.id) == sorted(rows, key=lambda r: r.step)

    # A resume from step 2 drops the later rows and writes them again, with other values.
    store.delete_after(job.id, 2)
    assert [row.step for row in store.list(job.id)] == [1, 2]
    rewritten = MetricRow(job_id=job.id, step=2, values={"step": 2, "train_loss": 0.5, "valid_loss": 0.25})
    store.upsert(rewritten)
    store.upsert(MetricRow(job_id=job.id, step=3, values={"step": 3}))
    assert store.list(job.id) == [rows[1], rewritten, MetricRow(job_id=job.id, step=3, values={"step": 3})]
    assert store.list(other.id) == [MetricRow(job_id=other.id, step=1, values={"train_loss": 9.0})]
    store.delete_after(job.id, -1)
    assert store.list(job.id) == []
    with pytest.raises(IntegrityError):
        store.upsert(MetricRow(job_id="ftjob-missing", step=1, values={}))
