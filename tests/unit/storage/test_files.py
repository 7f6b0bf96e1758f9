"""FileStore: every field round-trips; pages, cursors and filters; project scoping; the status
compare-and-set that claims a file for validation exactly once; quotas.

Run: ``pytest tests/unit/storage/test_files.py`` (add TUNERY_TEST_DATABASE_URL for PostgreSQL too).
"""

from __future__ import annotations

import itertools
import threading

import pytest
from sqlalchemy import select

from tunery.domain.datasets import DatasetFormat, DatasetStats, Problem
from tunery.domain.errors import InvalidRequest, NotFound
from tunery.domain.files import FilePurpose, FileRecord, FileStatus
from tunery.domain.ids import new_id
from tunery.domain.pagination import Order, PageRequest
from tunery.domain.projects import Project
from tunery.storage import Database, FileStore
from tunery.storage.tables import files

_clock = itertools.count(1_700_000_000)
STATS = DatasetStats(
    examples=12,
    tokens_total=3456,
    tokens_min=10,
    tokens_mean=288.25,
    tokens_max=900,
    trainable_tokens=1200,
    examples_over_context=1,
    context_length=8192,
    tokenizer="SmolLM2-135M-Instruct",
)


def make_file(project: Project, **changes: object) -> FileRecord:
    record = FileRecord(
        id=new_id("file"),
        project_id=project.id,
        filename="train.jsonl",
        purpose=FilePurpose.FINE_TUNE,
        bytes=100,
        created_at=next(_clock),
        status=FileStatus.PENDING,
    )
    return record.with_changes(**changes)


def add_files(store: FileStore, project: Project, n: int, **changes: object) -> list[FileRecord]:
    records = [make_file(project, filename=f"f{i}.jsonl", **changes) for i in range(n)]
    for record in records:
        store.insert(record)
    return records


def ids(records: list[FileRecord]) -> list[str]:
    return [r.id for r in records]


def test_every_field_round_trips(db: Database, project: Project) -> None:
    store = FileStore(db)
    record = make_file(
        project,
        filename="données ✓.jsonl",
        purpose=FilePurpose.FINE_TUNE_RESULTS,
        bytes=5 * 1024**3,  # over 32 bits
        status=FileStatus.ERROR,
        status_details="2 problem(s) found:\nLine 3: bad role",
        expires_at=4_102_444_800,  # after 2038
        problems=[Problem(3, "unrecognized_role", "bad role"), Problem(None, "too_few_examples", "few")],
        problem_count=7,
        stats=STATS,
        format=DatasetFormat.PREFERENCE.value,
    )
    store.insert(record)
    assert store.get(project.id, record.id) == record


def test_defaults_round_trip_and_missing_stats_are_sql_null(db: Database, project: Project) -> None:
    store = FileStore(db)
    record = make_file(project)
    store.insert(record)
    assert store.get(project.id, record.id) == record
    with db.read() as conn:
        assert conn.scalar(select(files.c.stats.is_(None)).where(files.c.id == record.id))


def test_update_saves_the_mutable_fields_only(db: Database, project: Project) -> None:
    store = FileStore(db)
    record = make_file(project)
    store.insert(record)
    changed = record.with_changes(
        status=FileStatus.PROCESSED,
        status_details="12 valid examples.",
        problems=[Problem(1, "x", "y")],
        problem_count=1,
        stats=STATS,
        format=DatasetFormat.CHAT.value,
        bytes=4242,
    )
    store.update(changed.with_changes(filename="renamed.jsonl", created_at=1))
    assert store.get(project.id, record.id) == changed
    store.update(changed.with_changes(stats=None, problems=[], format=None, status_details=None))
    assert store.get(project.id, record.id).stats is None


def test_update_of_a_deleted_or_foreign_file_is_not_found(
    db: Database, project: Project, other_project: Project
) -> None:
    store = FileStore(db)
    record = make_file(project)
    store.insert(record)
    with pytest.raises(NotFound):
        store.update(record.with_changes(project_id=other_project.id, status=FileStatus.RUNNING))
    store.mark_deleted(project.id, record.id)
    with pytest.raises(NotFound):
        store.update(record.with_changes(status=FileStatus.PROCESSED))
    with db.read() as conn:
        assert conn.scalar(select(files.c.status).where(files.c.id == record.id)) == "deleted"


def test_get_is_scoped_to_the_project(db: Database, project: Project, other_project: Project) -> None:
    store = FileStore(db)
    record = make_file(project)
    store.insert(record)
    with pytest.raises(NotFound) as caught:
        store.get(other_project.id, record.id)
    assert caught.value.message == f"No file with id '{record.id}' was found."
    assert caught.value.param == "file_id"
    with pytest.raises(NotFound):
        store.get(project.id, "file-missing")


def test_deleted_files_are_not_found_counted_or_listed(db: Database, project: Project) -> None:
    store = FileStore(db)
    kept, gone = add_files(store, project, 2, bytes=10)
    store.mark_deleted(project.id, gone.id)
    with pytest.raises(NotFound):
        store.get(project.id, gone.id)
    with pytest.raises(NotFound):
        store.mark_deleted(project.id, gone.id)
    assert ids(store.list(project.id, PageRequest(limit=10)).data) == [kept.id]
    assert store.count(project.id) == 1
    assert store.total_bytes(project.id) == 10


def test_mark_deleted_of_a_foreign_file_is_not_found(db: Database, project: Project, other_project: Project) -> None:
    store = FileStore(db)
    record = make_file(project)
    store.insert(record)
    with pytest.raises(NotFound):
        store.mark_deleted(other_project.id, record.id)
    assert store.get(project.id, record.id) == record


@pytest.mark.parametrize("order", [Order.ASC, Order.DESC])
def test_pages_follow_upload_order_with_has_more(db: Database, project: Project, order: Order) -> None:
    store = FileStore(db)
    records = add_files(store, project, 5)
    expected = ids(records) if order is Order.ASC else ids(records)[::-1]
    seen: list[str] = []
    pages: list[bool] = []
    after = None
    while True:
        page = store.list(project.id, PageRequest(limit=2, after=after, order=order))
        seen += ids(page.data)
        pages.append(page.has_more)
        if not page.has_more:
            break
        after = page.data[-1].id
    assert seen == expected
    assert pages == [True, True, False]


def test_a_full_last_page_has_no_more(db: Database, project: Project) -> None:
    store = FileStore(db)
    records = add_files(store, project, 4)
    first = store.list(project.id, PageRequest(limit=2, order=Order.ASC))
    second = store.list(project.id, PageRequest(limit=2, after=first.data[-1].id, order=Order.ASC))
    assert (ids(first.data), first.has_more) == (ids(records[:2]), True)
    assert (ids(second.data), second.has_more) == (ids(records[2:]), False)
    assert store.list(project.id, PageRequest(limit=2, after=records[-1].id, order=Order.ASC)).data == []


def test_list_is_scoped_filtered_by_purpose_and_skips_deleted(
    db: Database, project: Project, other_project: Project
) -> None:
    store = FileStore(db)
    training = add_files(store, project, 3)
    results = add_files(store, project, 2, purpose=FilePurpose.FINE_TUNE_RESULTS)
    add_files(store, other_project, 2)
    store.mark_deleted(project.id, training[1].id)
    everything = store.list(project.id, PageRequest(limit=100, order=Order.ASC))
    assert ids(everything.data) == [training[0].id, training[2].id, *ids(results)]
    assert not everything.has_more
    only_results = store.list(project.id, PageRequest(limit=100), purpose=FilePurpose.FINE_TUNE_RESULTS)
    assert ids(only_results.data) == ids(results)[::-1]


def test_a_deleted_file_is_still_a_cursor(db: Database, project: Project) -> None:
    store = FileStore(db)
    records = add_files(store, project, 3)
    store.mark_deleted(project.id, records[1].id)
    page = store.list(project.id, PageRequest(limit=10, after=records[1].id, order=Order.ASC))
    assert ids(page.data) == [records[2].id]


def test_unknown_or_foreign_cursor_is_rejected(db: Database, project: Project, other_project: Project) -> None:
    store = FileStore(db)
    (foreign,) = add_files(store, other_project, 1)
    for cursor in ("file-missing", foreign.id):
        with pytest.raises(InvalidRequest) as caught:
            store.list(project.id, PageRequest(limit=10, after=cursor))
        assert caught.value.param == "after"
        assert cursor in caught.value.message


def test_set_status_compares_before_it_sets(db: Database, project: Project) -> None:
    store = FileStore(db)
    record = make_file(project)
    store.insert(record)
    assert not store.set_status(record.id, FileStatus.RUNNING, expect={FileStatus.PROCESSED})
    assert store.get(project.id, record.id).status is FileStatus.PENDING
    assert store.set_status(record.id, FileStatus.RUNNING, expect={FileStatus.PENDING})
    assert not store.set_status(record.id, FileStatus.RUNNING, expect={FileStatus.PENDING})
    assert not store.set_status(record.id, FileStatus.PROCESSED, expect=set())
    assert store.set_status(record.id, FileStatus.PROCESSED)
    assert store.get(project.id, record.id).status is FileStatus.PROCESSED
    assert not store.set_status("file-missing", FileStatus.RUNNING)


def test_a_deleted_file_never_changes_status(db: Database, project: Project) -> None:
    store = FileStore(db)
    record = make_file(project)
    store.insert(record)
    store.mark_deleted(project.id, record.id)
    assert not store.set_status(record.id, FileStatus.RUNNING, expect={FileStatus.PENDING})
    assert not store.set_status(record.id, FileStatus.PROCESSED)
    assert store.list_by_status([FileStatus.DELETED]) == [record.with_changes(status=FileStatus.DELETED)]


def test_only_one_of_two_threads_claims_a_pending_file(db: Database, project: Project) -> None:
    store = FileStore(db)
    records = add_files(store, project, 10)
    for record in records:
        start = threading.Barrier(2)
        wins: list[bool] = []

        def claim(file_id: str = record.id, start: threading.Barrier = start, wins: list[bool] = wins) -> None:
            start.wait()
            wins.append(store.set_status(file_id, FileStatus.RUNNING, expect={FileStatus.PENDING}))

        threads = [threading.Thread(target=claim) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(wins) == [False, True]


def test_list_by_status_spans_projects(db: Database, project: Project, other_project: Project) -> None:
    store = FileStore(db)
    pending = add_files(store, project, 1)[0]
    running = add_files(store, other_project, 1, status=FileStatus.RUNNING)[0]
    add_files(store, project, 1, status=FileStatus.PROCESSED)
    found = store.list_by_status([FileStatus.PENDING, FileStatus.RUNNING])
    assert found == [pending, running]
    assert store.list_by_status([]) == []


def test_quotas_count_the_projects_own_files(db: Database, project: Project, other_project: Project) -> None:
    store = FileStore(db)
    assert (store.count(project.id), store.total_bytes(project.id)) == (0, 0)
    add_files(store, project, 3, bytes=2**33)
    add_files(store, other_project, 1, bytes=7)
    assert (store.count(project.id), store.total_bytes(project.id)) == (3, 3 * 2**33)
    assert (store.count(other_project.id), store.total_bytes(other_project.id)) == (1, 7)
