"""EventStore: every field round-trips; pages newest first with ``after`` cursors; counts per job.

Run: ``pytest tests/unit/storage/test_events.py`` (add TUNERY_TEST_DATABASE_URL for PostgreSQL too).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tests.unit.storage.test_jobs import add_jobs, walk
from tunery.domain.errors import InvalidRequest
from tunery.domain.events import EventLevel, EventType, JobEvent
from tunery.domain.ids import new_id
from tunery.domain.pagination import Order, PageRequest
from tunery.domain.projects import Project
from tunery.storage import Database, EventStore, JobStore
from tunery.storage.tables import job_events


def make_event(job_id: str, n: int = 0, **changes: object) -> JobEvent:
    event = JobEvent(
        id=new_id("ftevent"),
        job_id=job_id,
        created_at=1_700_000_000 + n,
        level=EventLevel.INFO,
        message=f"event {n}",
    )
    return replace(event, **changes)


def append_events(store: EventStore, job_id: str, n: int) -> list[JobEvent]:
    events = [make_event(job_id, i) for i in range(n)]
    for event in events:
        store.append(event)
    return events


def ids(events: list[JobEvent]) -> list[str]:
    return [event.id for event in events]


def test_every_field_round_trips_and_missing_data_is_sql_null(db: Database, project: Project) -> None:
    store = EventStore(db)
    (job,) = add_jobs(JobStore(db), project, 1)
    metrics = make_event(
        job.id,
        level=EventLevel.WARN,
        message="Step 10/100: training loss=1.234\nsecond line ✓ " + "x" * 5000,
        type=EventType.METRICS,
        data={"step": 10, "train_loss": 1.234, "nested": {"a": [1, None]}},
    )
    plain = make_event(job.id, created_at=4_102_444_800, level=EventLevel.ERROR)
    for event in (metrics, plain):
        store.append(event)
    assert store.list(job.id, PageRequest(limit=10)).data == [plain, metrics]
    with db.read() as conn:
        assert conn.scalar(select(job_events.c.data.is_(None)).where(job_events.c.id == plain.id))
    with pytest.raises(IntegrityError):
        store.append(make_event("ftjob-missing"))


def test_pages_in_append_order_with_cursors(db: Database, project: Project) -> None:
    store = EventStore(db)
    job, other = add_jobs(JobStore(db), project, 2)
    events = ids(append_events(store, job.id, 5))
    append_events(store, other.id, 2)
    for order, expected in ((Order.DESC, events[::-1]), (Order.ASC, events)):
        assert walk(lambda page: store.list(job.id, page), 2, order) == (expected, [True, True, False])
        full = store.list(job.id, PageRequest(limit=5, order=order))
        assert (ids(full.data), full.has_more) == (expected, False)


def test_unknown_or_foreign_cursor_is_rejected(db: Database, project: Project) -> None:
    store = EventStore(db)
    job, other = add_jobs(JobStore(db), project, 2)
    (foreign,) = append_events(store, other.id, 1)
    for cursor in ("ftevent-missing", foreign.id):
        with pytest.raises(InvalidRequest) as caught:
            store.list(job.id, PageRequest(limit=10, after=cursor))
        assert caught.value.param == "after"
        assert cursor in caught.value.message


def test_count_per_job(db: Database, project: Project) -> None:
    store = EventStore(db)
    job, other = add_jobs(JobStore(db), project, 2)
    assert store.count(job.id) == 0
    append_events(store, job.id, 3)
    append_events(store, other.id, 1)
    assert (store.count(job.id), store.count(other.id), store.count("ftjob-missing")) == (3, 1, 0)
    assert store.list("ftjob-missing", PageRequest(limit=10)).data == []
