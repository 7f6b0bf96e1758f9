"""Fresh, migrated databases for tests: a SQLite file in a temporary folder, or a schema of its own on a
PostgreSQL server, so every test starts empty and tests never see each other's rows.

Used by the storage tests and the API tests (``tests/unit/storage/conftest.py`` shows the fixture).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, make_url
from sqlalchemy.pool import NullPool

from tunery.storage import Database, sqlite_url

# The environment variable that points the tests at a PostgreSQL server (scripts/postgres.sh prints it).
POSTGRES_URL_VARIABLE = "TUNERY_TEST_DATABASE_URL"


@contextmanager
def fresh_database(tmp_path: Path, url: str | None = None) -> Iterator[Database]:
    """Yield an empty ``Database`` migrated to head; clean it away afterwards.

    Args:
        tmp_path: a per-test folder; the SQLite file goes here.
        url: ``None`` for SQLite, or a PostgreSQL URL whose role may create schemas in its database.
            A schema ``test_<random>`` is created, made the connection's ``search_path``, and dropped
            on exit.
    """
    if url is None:
        db = Database(sqlite_url(tmp_path / "tunery.db"))
        try:
            db.upgrade()
            yield db
        finally:
            db.dispose()
        return

    server = make_url(url)
    if server.get_backend_name() != "postgresql":
        raise ValueError(f"fresh_database supports SQLite (url=None) and PostgreSQL, not {server.drivername}")
    schema = f"test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(server, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        scoped = server.update_query_dict({"options": f"-csearch_path={schema}"})
        db = Database(scoped.render_as_string(hide_password=False))
        try:
            db.upgrade()
            yield db
        finally:
            db.dispose()
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        admin.dispose()
