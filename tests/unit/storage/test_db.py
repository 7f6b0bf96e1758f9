"""Database set-up and migrations: SQLite pragmas, idempotent and concurrent upgrades, schema drift.

Run: ``pytest tests/unit/storage/test_db.py`` (add TUNERY_TEST_DATABASE_URL for the PostgreSQL half).
"""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from tunery.domain.files import FilePurpose, FileRecord, FileStatus
from tunery.domain.projects import Project
from tunery.storage import Database, FileStore, ProjectStore, sqlite_url
from tunery.storage.tables import files, metadata


def _head(db: Database) -> str:
    head = ScriptDirectory.from_config(db.alembic_config()).get_current_head()
    assert head is not None
    return head


def _current(db: Database) -> str | None:
    with db.read() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_sqlite_url_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_url(Path("data/tunery.db")) == f"sqlite:///{tmp_path.resolve()}/data/tunery.db"


def test_repr_hides_the_password() -> None:
    db = Database("postgresql+psycopg://tunery:secret@127.0.0.1:1/x")
    assert "secret" not in repr(db)
    db.dispose()


def test_sqlite_connections_use_wal_foreign_keys_and_a_busy_timeout(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path / "t.db"))
    with db.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert (conn.exec_driver_sql("PRAGMA busy_timeout").scalar() or 0) >= 10_000
    db.dispose()


def test_migrated_schema_matches_the_table_definitions(db: Database) -> None:
    with db.read() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []


def test_upgrade_is_idempotent_and_keeps_rows(db: Database, project: Project) -> None:
    assert _current(db) == _head(db)
    db.upgrade()
    db.upgrade()
    assert _current(db) == _head(db)
    assert ProjectStore(db).get(project.id) == project


def test_downgrade_to_base_then_upgrade_again(db: Database) -> None:
    with db.transaction() as conn:
        command.downgrade(db.alembic_config(conn), "base")
    assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
    db.upgrade()
    assert {"projects", "api_keys", "files"} <= set(inspect(db.engine).get_table_names())


def test_foreign_keys_are_enforced(db: Database) -> None:
    record = FileRecord(
        id="file-" + "0" * 32,
        project_id="proj-missing",
        filename="a.jsonl",
        purpose=FilePurpose.FINE_TUNE,
        bytes=1,
        created_at=1,
        status=FileStatus.PENDING,
    )
    with pytest.raises(IntegrityError):
        FileStore(db).insert(record)


def _upgrade_in_child(url: str) -> str | None:
    db = Database(url)
    try:
        db.upgrade()
        return _current(db)
    finally:
        db.dispose()


def test_processes_starting_together_migrate_once(db: Database) -> None:
    with db.transaction() as conn:
        command.downgrade(db.alembic_config(conn), "base")
    url = db.url.render_as_string(hide_password=False)
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        revisions = pool.map(_upgrade_in_child, [url] * 3)
    assert revisions == [_head(db)] * 3


def test_concurrent_writers_and_readers_do_not_fail(db: Database, project: Project) -> None:
    store = FileStore(db)
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def writer(n: int) -> None:
        try:
            start.wait()
            for i in range(15):
                file_id = f"file-{n:016x}{i:016x}"
                store.insert(
                    FileRecord(
                        id=file_id,
                        project_id=project.id,
                        filename=f"{n}-{i}.jsonl",
                        purpose=FilePurpose.FINE_TUNE,
                        bytes=i,
                        created_at=i,
                        status=FileStatus.PENDING,
                    )
                )
                assert store.set_status(file_id, FileStatus.RUNNING, expect={FileStatus.PENDING})
                store.count(project.id)
        except BaseException as error:  # collected and re-raised in the test thread
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with db.read() as conn:
        assert len(conn.execute(select(files.c.id)).all()) == 90


def test_sqlite_file_in_a_new_folder(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path / "new" / "folder" / "tunery.db"))
    db.upgrade()
    assert (tmp_path / "new" / "folder" / "tunery.db").is_file()
    db.dispose()
