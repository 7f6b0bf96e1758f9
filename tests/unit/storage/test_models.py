"""ModelStore: fields round-trip; lookups scoped to a project and by job; newest first; deletes hide a model.

Run: ``pytest tests/unit/storage/test_models.py`` (add TUNERY_TEST_DATABASE_URL for PostgreSQL too).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tests.unit.storage.test_jobs import add_jobs
from tunery.domain.errors import NotFound
from tunery.domain.jobs import Job, fine_tuned_model_name
from tunery.domain.models import FineTunedModel
from tunery.domain.projects import Project
from tunery.storage import Database, JobStore, ModelStore
from tunery.storage.tables import fine_tuned_models


def make_model(job: Job, **changes: object) -> FineTunedModel:
    model = FineTunedModel(
        id=fine_tuned_model_name(job.base_model, job.id, job.suffix),
        project_id=job.project_id,
        job_id=job.id,
        base_model=job.base_model,
        parent_model=None,
        adapter_key=f"adapters/{job.id}/final",
        created_at=job.created_at,
    )
    return replace(model, **changes)


def test_every_field_round_trips_and_lookups_are_scoped(db: Database, project: Project, other_project: Project) -> None:
    store = ModelStore(db)
    job, plain_job = add_jobs(JobStore(db), project, 2, suffix="données-✓")
    model = make_model(
        job,
        parent_model="SmolLM2-135M-Instruct.ft-0123:ckpt-step-10",
        created_at=4_102_444_800,
        method="dpo",
    )
    plain = make_model(plain_job)
    for item in (model, plain):
        store.insert(item)
    assert store.get(project.id, model.id) == model
    assert store.get(project.id, plain.id) == plain
    assert store.get_by_job(job.id) == model
    assert store.get(other_project.id, model.id) is None
    assert store.get(project.id, "nope.ft-0") is None
    assert store.get_by_job("ftjob-missing") is None
    with pytest.raises(IntegrityError):  # one row per name
        store.insert(replace(plain, job_id=job.id))


def test_list_is_newest_first_and_deleted_models_disappear(
    db: Database, project: Project, other_project: Project
) -> None:
    store = ModelStore(db)
    mine = [make_model(job) for job in add_jobs(JobStore(db), project, 3)]
    theirs = make_model(add_jobs(JobStore(db), other_project, 1)[0])
    for item in [*mine, theirs]:
        store.insert(item)
    assert store.list(project.id) == mine[::-1]
    assert store.list(other_project.id) == [theirs]

    with pytest.raises(NotFound) as caught:
        store.mark_deleted(other_project.id, mine[1].id, now=1)
    assert caught.value.param == "model"
    assert mine[1].id in caught.value.message
    store.mark_deleted(project.id, mine[1].id, now=1_800_000_000)
    with pytest.raises(NotFound):
        store.mark_deleted(project.id, mine[1].id, now=1_800_000_001)
    assert store.list(project.id) == [mine[2], mine[0]]
    assert store.get(project.id, mine[1].id) is None
    assert store.get_by_job(mine[1].job_id) is None
    with db.read() as conn:
        deleted_at = conn.scalar(select(fine_tuned_models.c.deleted_at).where(fine_tuned_models.c.id == mine[1].id))
    assert deleted_at == 1_800_000_000
