"""JobStore: every field round-trips; pages, cursors and the metadata filter; project scoping; the
compare-and-set transitions that API requests and workers race on; claiming jobs exactly once, heartbeats
and stale-worker recovery; hard deletes.

Run: ``pytest tests/unit/storage/test_jobs.py`` (add TUNERY_TEST_DATABASE_URL for PostgreSQL too).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from sqlalchemy import func, select

from tunery.domain.checkpoints import Checkpoint, MetricRow
from tunery.domain.errors import Conflict, InvalidRequest, NotFound
from tunery.domain.events import EventLevel, JobEvent
from tunery.domain.ids import new_id
from tunery.domain.jobs import Hyperparameters, Job, JobError, JobStatus, Method
from tunery.domain.models import FineTunedModel
from tunery.domain.pagination import Order, Page, PageRequest
from tunery.domain.projects import Project
from tunery.storage import CheckpointStore, Database, EventStore, JobStore, MetricStore, ModelStore
from tunery.storage import jobs as jobs_module
from tunery.storage.tables import checkpoints, fine_tuned_models, job_events, job_metrics, jobs

S = JobStatus
T = TypeVar("T")
_clock = itertools.count(1_700_000_000)


def make_job(project: Project, **changes: object) -> Job:
    """A queued job of ``project`` with only the required fields set; ``changes`` overrides any field."""
    job = Job(
        id=new_id("ftjob"),
        project_id=project.id,
        created_at=next(_clock),
        model="SmolLM2-135M-Instruct",
        base_model="SmolLM2-135M-Instruct",
        training_file=new_id("file"),
        validation_file=None,
        method=Method.SUPERVISED,
        hyperparameters=Hyperparameters(),
        seed=42,
        status=S.QUEUED,
    )
    return job.with_changes(**changes)


def add_jobs(store: JobStore, project: Project, n: int, **changes: object) -> list[Job]:
    added = [make_job(project, **changes) for _ in range(n)]
    for job in added:
        store.insert(job)
    return added


def ids(items: list[Job]) -> list[str]:
    return [item.id for item in items]


def walk(list_page: Callable[[PageRequest], Page[Any]], limit: int, order: Order) -> tuple[list[str], list[bool]]:
    """Follow ``after`` cursors from the first page to the last: every id seen, and each page's has_more."""
    seen: list[str] = []
    more: list[bool] = []
    after = None
    while True:
        page = list_page(PageRequest(limit=limit, after=after, order=order))
        seen += [item.id for item in page.data]
        more.append(page.has_more)
        if not page.has_more:
            return seen, more
        after = page.data[-1].id


def race(n: int, attempt: Callable[[int], T]) -> list[T]:
    """Run ``attempt(0..n-1)`` in ``n`` threads released together; their results, errors re-raised."""
    start = threading.Barrier(n)
    results: list[T] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            start.wait()
            results.append(attempt(i))
        except BaseException as error:  # collected and re-raised in the test thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


@pytest.fixture
def second_db(db: Database) -> Iterator[Database]:
    """Another engine on the same database, standing for another process."""
    other = Database(db.url.render_as_string(hide_password=False))
    yield other
    other.dispose()


def test_every_field_round_trips(db: Database, project: Project) -> None:
    store = JobStore(db)
    job = make_job(
        project,
        model="SmolLM2-135M-Instruct.ft-0123abcd:ckpt-step-10",
        validation_file=new_id("file"),
        method=Method.DPO,
        hyperparameters=Hyperparameters(n_epochs=3, batch_size=None, learning_rate_multiplier=0.5, beta=0.2),
        seed=2**40,  # over 32 bits
        status=S.FAILED,
        parent_model="SmolLM2-135M-Instruct.ft-0123abcd",
        resolved=Hyperparameters(n_epochs=3, batch_size=4, learning_rate_multiplier=0.5, beta=0.2),
        suffix="données-✓",
        metadata={"team": "nlp", "run": "7", 'quote"key': "ü"},
        integrations=[{"type": "wandb", "wandb": {"project": "p", "tags": ["a", "b"]}}],
        training_type="globalStandard",
        extras={"l2_multiplier": 0.01, "nested": {"list": [1, 2.5, None, True]}},
        error=JobError(code="invalid_training_file", message="Line 3: bad role", param="training_file"),
        fine_tuned_model="SmolLM2-135M-Instruct.ft-0123abcd-données-✓",
        finished_at=4_102_444_800,  # after 2038
        started_at=4_102_444_000,
        trained_tokens=5 * 1024**3,
        result_files=[new_id("file"), new_id("file")],
        estimated_finish=4_102_444_900,
        step=123,
        total_steps=456,
        worker_id="worker-host-1234",
        heartbeat_at=1_700_000_123.456789,
        trainer_pid=98765,
    )
    store.insert(job)
    assert store.get(project.id, job.id) == job
    assert store.get_any(job.id) == job


def test_defaults_round_trip_and_absent_values_are_sql_null(db: Database, project: Project) -> None:
    store = JobStore(db)
    job = make_job(project)
    store.insert(job)
    assert store.get(project.id, job.id) == job
    with db.read() as conn:
        nulls = conn.execute(
            select(
                jobs.c.resolved.is_(None),
                jobs.c.metadata.is_(None),
                jobs.c.integrations.is_(None),
                jobs.c.error.is_(None),
            ).where(jobs.c.id == job.id)
        ).one()
    assert all(nulls)
    empty = make_job(project, metadata={}, integrations=[], error=JobError(code="x", message="y"))
    store.insert(empty)
    assert store.get(project.id, empty.id) == empty


def test_get_is_scoped_to_the_project(db: Database, project: Project, other_project: Project) -> None:
    store = JobStore(db)
    (job,) = add_jobs(store, project, 1)
    with pytest.raises(NotFound) as caught:
        store.get(other_project.id, job.id)
    assert caught.value.message == f"No fine-tuning job with id '{job.id}' was found."
    assert caught.value.param == "fine_tuning_job_id"
    assert store.get_any(job.id) == job
    for lookup in (lambda: store.get(project.id, "ftjob-missing"), lambda: store.get_any("ftjob-missing")):
        with pytest.raises(NotFound) as caught:
            lookup()
        assert caught.value.message == "No fine-tuning job with id 'ftjob-missing' was found."


def test_update_saves_every_field_but_identity(db: Database, project: Project, other_project: Project) -> None:
    store = JobStore(db)
    (job,) = add_jobs(store, project, 1, metadata={"a": "b"})
    changed = job.with_changes(
        status=S.SUCCEEDED,
        resolved=Hyperparameters(n_epochs=2, batch_size=1, learning_rate_multiplier=1.0),
        metadata=None,
        extras={"x": 1},
        error=JobError(code="c", message="m"),
        fine_tuned_model="m.ft-x",
        finished_at=5,
        started_at=4,
        trained_tokens=99,
        result_files=[new_id("file")],
        estimated_finish=6,
        step=10,
        total_steps=10,
        worker_id="w",
        heartbeat_at=3.25,
        trainer_pid=7,
    )
    store.update(changed.with_changes(created_at=1))
    assert store.get(project.id, job.id) == changed
    with pytest.raises(NotFound):
        store.update(changed.with_changes(project_id=other_project.id))
    with pytest.raises(NotFound):
        store.update(make_job(project))


def test_pages_follow_creation_order_with_has_more(db: Database, project: Project) -> None:
    store = JobStore(db)
    added = ids(add_jobs(store, project, 5))
    for order, expected in ((Order.ASC, added), (Order.DESC, added[::-1])):
        assert walk(lambda page: store.list(project.id, page), 2, order) == (expected, [True, True, False])


def test_list_is_scoped_and_newest_first_by_default(db: Database, project: Project, other_project: Project) -> None:
    store = JobStore(db)
    mine = add_jobs(store, project, 2)
    add_jobs(store, other_project, 2)
    page = store.list(project.id, PageRequest(limit=10))
    assert (ids(page.data), page.has_more) == (ids(mine)[::-1], False)
    assert store.list(project.id, PageRequest(limit=2)).has_more is False


def test_unknown_or_foreign_cursor_is_rejected(db: Database, project: Project, other_project: Project) -> None:
    store = JobStore(db)
    (foreign,) = add_jobs(store, other_project, 1)
    for cursor in ("ftjob-missing", foreign.id):
        with pytest.raises(InvalidRequest) as caught:
            store.list(project.id, PageRequest(limit=10, after=cursor))
        assert caught.value.param == "after"
        assert cursor in caught.value.message


def test_metadata_filter_pages_through_matches_only(
    db: Database, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs_module, "_SCAN_BATCH", 3)  # several scan rounds per page
    store = JobStore(db)
    kinds = [
        {"team": "nlp", "run": "1"},
        None,
        {"team": "vision"},
        {"team": "nlp"},
        {},
        {"team": "nlp", "run": "2"},
        {"run": "1"},
        {"team": "nlp", "run": "1", "extra": "x"},
        {"team": "NLP"},
    ] * 2
    added = [make_job(project, metadata=kind) for kind in kinds]
    for job in added:
        store.insert(job)
    wanted = {"team": "nlp", "run": "1"}
    matching = [job.id for job in added if job.metadata and all(job.metadata.get(k) == v for k, v in wanted.items())]
    assert len(matching) == 4
    for order, expected in ((Order.ASC, matching), (Order.DESC, matching[::-1])):
        pages = walk(lambda page: store.list(project.id, page, metadata=wanted), 1, order)
        assert pages == (expected, [True, True, True, False])

    # Any job is a cursor, a non-matching one too; an empty filter filters nothing.
    after_first = store.list(project.id, PageRequest(limit=10, after=added[0].id, order=Order.ASC), metadata=wanted)
    assert ids(after_first.data) == matching[1:]
    assert len(store.list(project.id, PageRequest(limit=100), metadata={}).data) == len(added)
    nlp = store.list(project.id, PageRequest(limit=100), metadata={"team": "nlp"})
    assert len(nlp.data) == 8
    assert store.list(project.id, PageRequest(limit=100), metadata={'quote"key': "x"}).data == []


def test_count_by_status_and_project(db: Database, project: Project, other_project: Project) -> None:
    store = JobStore(db)
    assert store.count(project.id) == 0
    add_jobs(store, project, 2, status=S.RUNNING)
    add_jobs(store, project, 1, status=S.QUEUED)
    add_jobs(store, project, 3, status=S.SUCCEEDED)
    add_jobs(store, other_project, 4, status=S.RUNNING)
    assert store.count(project.id) == 6
    assert store.count(project.id, {S.RUNNING, S.QUEUED}) == 3
    assert store.count(project.id, set()) == 0
    assert store.count(other_project.id, {S.RUNNING}) == 4


def test_transition_compares_before_it_sets(db: Database, project: Project) -> None:
    store = JobStore(db)
    (job,) = add_jobs(store, project, 1, status=S.RUNNING)
    assert store.transition(job.id, S.CANCELLED, expect={S.QUEUED, S.PAUSED}) is None
    assert store.transition(job.id, S.CANCELLED, expect=set()) is None
    assert store.transition("ftjob-missing", S.CANCELLED, expect={S.RUNNING}) is None
    assert store.get(project.id, job.id) == job

    error = JobError(code="cancelled", message="Cancelled by the user.")
    done = store.transition(
        job.id,
        S.CANCELLED,
        expect={S.RUNNING, S.PAUSING},
        error=error,
        finished_at=1234,
        worker_id=None,
        heartbeat_at=None,
        trainer_pid=None,
        result_files=["file-1"],
        resolved=Hyperparameters(n_epochs=1, batch_size=2, learning_rate_multiplier=3.0),
        metadata={"k": "v"},
    )
    expected = job.with_changes(
        status=S.CANCELLED,
        error=error,
        finished_at=1234,
        result_files=["file-1"],
        resolved=Hyperparameters(n_epochs=1, batch_size=2, learning_rate_multiplier=3.0),
        metadata={"k": "v"},
    )
    assert done == expected
    assert store.get(project.id, job.id) == expected
    assert store.transition(job.id, S.FAILED, expect={S.RUNNING}) is None


def test_transition_refuses_fields_it_may_not_set(db: Database, project: Project) -> None:
    store = JobStore(db)
    (job,) = add_jobs(store, project, 1)
    for bad in ({"status": S.RUNNING}, {"project_id": "proj-x"}, {"id": "x"}, {"created_at": 1}, {"nope": 1}):
        with pytest.raises(TypeError):
            store.transition(job.id, S.RUNNING, expect={S.QUEUED}, **bad)
        with pytest.raises(TypeError):
            store.heartbeat(job.id, "w", 1.0, **bad)
    assert store.get(project.id, job.id) == job


def test_only_one_of_racing_transitions_wins(db: Database, project: Project) -> None:
    store = JobStore(db)
    targets = [S.CANCELLED, S.SUCCEEDED, S.FAILED, S.PAUSING]
    for job in add_jobs(store, project, 4, status=S.RUNNING):
        results = race(len(targets), lambda i, job_id=job.id: store.transition(job_id, targets[i], expect={S.RUNNING}))
        winners = [result for result in results if result is not None]
        assert len(winners) == 1
        assert store.get(project.id, job.id).status is winners[0].status


def test_claim_takes_the_oldest_claimable_job_and_keeps_its_status(
    db: Database, project: Project, other_project: Project
) -> None:
    store = JobStore(db)
    assert store.claim_next("w1", now=100.0) is None
    for status in (S.RUNNING, S.PAUSED, S.SUCCEEDED, S.FAILED, S.CANCELLED, S.PAUSING):
        add_jobs(store, project, 1, status=status)
    resuming = add_jobs(store, other_project, 1, status=S.RESUMING)[0]
    pending = add_jobs(store, project, 1, status=S.PENDING)[0]
    queued = add_jobs(store, project, 1, status=S.QUEUED)[0]

    claimed = [store.claim_next(f"w{i}", now=100.0 + i) for i in range(4)]
    assert claimed == [
        resuming.with_changes(worker_id="w0", heartbeat_at=100.0),
        pending.with_changes(worker_id="w1", heartbeat_at=101.0),
        queued.with_changes(worker_id="w2", heartbeat_at=102.0),
        None,
    ]
    assert store.get(project.id, queued.id) == claimed[2]


def test_a_stale_claim_is_taken_again(db: Database, project: Project) -> None:
    store = JobStore(db)
    (job,) = add_jobs(store, project, 1)
    assert store.claim_next("w1", now=1000.0) is not None
    assert store.claim_next("w2", now=1029.0) is None  # w1 is alive
    assert store.heartbeat(job.id, "w1", 1040.0)
    assert store.claim_next("w2", now=1069.0) is None
    assert store.claim_next("w2", now=1060.0, stale_after=10.0) == job.with_changes(worker_id="w2", heartbeat_at=1060.0)
    assert not store.heartbeat(job.id, "w1", 1061.0)  # w1 lost it
    assert store.get(project.id, job.id).worker_id == "w2"
    # A job whose holder was cleared is free at once.
    store.transition(job.id, S.QUEUED, expect={S.QUEUED}, worker_id=None, heartbeat_at=None)
    claimed = store.claim_next("w3", now=1062.0)
    assert claimed is not None
    assert claimed.worker_id == "w3"


def test_a_worker_whose_claim_was_taken_over_cannot_start_the_job(db: Database, project: Project) -> None:
    """A worker slow to start (preparing the base model past the stale window) loses the job to the one that
    took it over: only the holder's move to running wins."""
    store = JobStore(db)
    (job,) = add_jobs(store, project, 1)
    assert store.claim_next("slow", now=1000.0) is not None
    assert store.claim_next("fast", now=1100.0, stale_after=10.0) is not None
    assert store.transition(job.id, S.RUNNING, expect={S.QUEUED}, holder="slow") is None
    started = store.transition(job.id, S.RUNNING, expect={S.QUEUED}, holder="fast")
    assert started is not None
    assert started.worker_id == "fast"


def _claim_all(stores: list[JobStore], workers: int) -> list[str]:
    def drain(i: int) -> list[str]:
        mine = []
        while (job := stores[i % len(stores)].claim_next(f"w{i}", now=1.0)) is not None:
            mine.append(job.id)
        return mine

    return [job_id for claimed in race(workers, drain) for job_id in claimed]


def test_concurrent_claims_never_share_a_job(db: Database, project: Project) -> None:
    store = JobStore(db)
    added = add_jobs(store, project, 24)
    claimed = _claim_all([store], workers=6)
    assert sorted(claimed) == sorted(ids(added))
    with db.read() as conn:
        holders = conn.execute(select(func.count(jobs.c.worker_id.distinct()))).scalar()
    assert holders is not None
    assert 1 <= holders <= 6


def test_claims_from_two_engines_never_share_a_job(db: Database, second_db: Database, project: Project) -> None:
    store = JobStore(db)
    added = add_jobs(store, project, 24)
    claimed = _claim_all([store, JobStore(second_db)], workers=6)
    assert sorted(claimed) == sorted(ids(added))


def test_heartbeat_updates_only_for_the_holder(db: Database, project: Project) -> None:
    store = JobStore(db)
    (job,) = add_jobs(store, project, 1)
    assert not store.heartbeat(job.id, "w1", 5.0, step=3)  # nobody holds it
    store.claim_next("w1", now=1.0)
    assert store.heartbeat(job.id, "w1", 5.5, step=3, estimated_finish=99, total_steps=30, trainer_pid=321)
    assert not store.heartbeat(job.id, "w2", 6.0, step=4)
    assert not store.heartbeat("ftjob-missing", "w1", 6.0)
    assert store.get(project.id, job.id) == job.with_changes(
        worker_id="w1", heartbeat_at=5.5, step=3, estimated_finish=99, total_steps=30, trainer_pid=321
    )


def test_list_stale_finds_jobs_of_silent_workers(db: Database, project: Project, other_project: Project) -> None:
    store = JobStore(db)
    old, fresh = 100.0, 190.0
    stale = [
        make_job(project, status=S.RUNNING, worker_id="w", heartbeat_at=old),
        make_job(other_project, status=S.PAUSING, worker_id="w", heartbeat_at=old),
        make_job(project, status=S.QUEUED, worker_id="w", heartbeat_at=old),  # claimed, never started
        make_job(project, status=S.RESUMING, worker_id="w", heartbeat_at=old),
        make_job(project, status=S.RUNNING, worker_id=None, heartbeat_at=None),
    ]
    alive = [
        make_job(project, status=S.RUNNING, worker_id="w", heartbeat_at=fresh),
        make_job(project, status=S.QUEUED, worker_id=None, heartbeat_at=None),  # unclaimed
        make_job(project, status=S.PAUSED, worker_id="w", heartbeat_at=old),
        make_job(project, status=S.SUCCEEDED, worker_id="w", heartbeat_at=old),
        make_job(project, status=S.PENDING, worker_id="w", heartbeat_at=fresh),
    ]
    for job in [*stale, *alive]:
        store.insert(job)
    assert store.list_stale(now=200.0, stale_after=30.0) == stale
    assert store.list_stale(now=200.0, stale_after=1000.0) == [stale[-1]]


def test_delete_removes_the_job_and_everything_under_it(db: Database, project: Project) -> None:
    store, models = JobStore(db), ModelStore(db)
    doomed, kept = add_jobs(store, project, 2, status=S.SUCCEEDED)
    for job in (doomed, kept):
        EventStore(db).append(
            JobEvent(id=new_id("ftevent"), job_id=job.id, created_at=1, level=EventLevel.INFO, message="hi")
        )
        MetricStore(db).upsert(MetricRow(job_id=job.id, step=1, values={"train_loss": 1.0}))
        CheckpointStore(db).insert(
            Checkpoint(
                id=new_id("ftchkpt"),
                job_id=job.id,
                project_id=project.id,
                created_at=1,
                step_number=1,
                fine_tuned_model_checkpoint=f"m.ft-{job.job_hex}:ckpt-step-1",
                adapter_key=f"adapters/{job.id}/1",
            )
        )
        models.insert(
            FineTunedModel(
                id=f"m.ft-{job.job_hex}",
                project_id=project.id,
                job_id=job.id,
                base_model="m",
                parent_model=None,
                adapter_key=f"adapters/{job.id}/final",
                created_at=1,
            )
        )

    with pytest.raises(Conflict) as caught:
        store.delete(project.id, doomed.id)
    assert f"m.ft-{doomed.job_hex}" in caught.value.message
    models.mark_deleted(project.id, f"m.ft-{doomed.job_hex}", now=2)
    store.delete(project.id, doomed.id)

    with pytest.raises(NotFound):
        store.get(project.id, doomed.id)
    with db.read() as conn:
        for table in (jobs, job_events, job_metrics, checkpoints, fine_tuned_models):
            column = table.c.id if table is jobs else table.c.job_id
            left: dict[str, Any] = dict(
                conn.execute(select(column, func.count()).select_from(table).group_by(column)).all()
            )
            assert left == {kept.id: 1}, table.name
    with pytest.raises(NotFound):
        store.delete(project.id, doomed.id)


def test_delete_of_a_foreign_job_is_not_found(db: Database, project: Project, other_project: Project) -> None:
    store = JobStore(db)
    (job,) = add_jobs(store, project, 1)
    with pytest.raises(NotFound):
        store.delete(other_project.id, job.id)
    assert store.get(project.id, job.id) == job
