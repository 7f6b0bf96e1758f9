"""The database handle: one SQLAlchemy engine set up for SQLite or PostgreSQL, and schema migrations.

The same code runs on the embedded default (one SQLite file shared by the API process, its validation
threads and the worker processes) and on PostgreSQL. This module knows nothing about tables or records;
the stores (``files.py``, ``projects.py``) do. It never reads settings: the caller passes a URL.

SQLite notes. Every connection turns on WAL (readers never block the writer), ``foreign_keys`` and a busy
timeout. pysqlite's own transaction handling is switched off and SQLAlchemy emits ``BEGIN IMMEDIATE`` for
``transaction()``, so a write transaction takes the write lock up front and waits (busy timeout) instead of
failing with ``database is locked`` when it later upgrades from a read. ``read()`` uses a plain deferred
``BEGIN`` so readers do not queue behind writers.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import DBAPIError

from tunery.storage.disk import disk_full, is_disk_full

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30.0
# Any constant will do: it only has to be the same in every process that runs migrations.
_PG_MIGRATION_LOCK_ID = 0x7475_6E65_7279  # "tunery"
_BEGIN_OPTION = "tunery_sqlite_begin"


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of the SQLite file at ``path`` (made absolute)."""
    return f"sqlite:///{Path(path).resolve()}"


class Database:
    """One engine for the process; create it once (per process) and share it between threads.

    Args:
        url: ``sqlite:///path/to/file.db`` or ``postgresql+psycopg://user:pass@host/db``.
        echo: log every SQL statement (debugging).
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if self.url.database and self.url.database != ":memory:" and not self.url.database.startswith("file:"):
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(
                self.url,
                echo=echo,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
            )
            _configure_sqlite(self.engine)
        else:
            self.engine = create_engine(self.url, echo=echo, pool_pre_ping=True)
        _forget_pool_after_fork(self.engine)

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection inside a write transaction: committed on success, rolled back on an exception.

        Raises:
            InsufficientStorage: the disk or the database is full (nothing was written).
        """
        try:
            with self.engine.begin() as conn:
                yield conn
        except DBAPIError as exc:
            if is_disk_full(exc):
                raise disk_full("saving the change") from exc
            raise

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection inside a read transaction (one consistent snapshot; on SQLite no write lock)."""
        with self.engine.connect().execution_options(**{_BEGIN_OPTION: "DEFERRED"}) as conn, conn.begin():
            yield conn

    def upgrade(self, revision: str = "head") -> None:
        """Bring the schema up to ``revision`` with Alembic; does nothing when it is already there.

        Safe to call from several processes at start-up: on SQLite the migration runs under the write
        lock, on PostgreSQL under an advisory lock, so the second caller finds the schema current.
        """
        with self.engine.connect() as conn:
            if self.is_sqlite:
                # Batch migrations rebuild tables (copy, drop, rename); with foreign keys on, dropping a
                # referenced table fails. The pragma is ignored inside a transaction, so set it first.
                _sqlite_pragma(conn, "foreign_keys=OFF")
            try:
                with conn.begin():
                    if not self.is_sqlite:
                        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_MIGRATION_LOCK_ID})
                    command.upgrade(self.alembic_config(conn), revision)
                    if self.is_sqlite:
                        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                        if broken:
                            raise RuntimeError(f"migration left rows with broken foreign keys: {broken}")
            finally:
                if self.is_sqlite:
                    _sqlite_pragma(conn, "foreign_keys=ON")

    def alembic_config(self, connection: Connection | None = None) -> Config:
        """An Alembic ``Config`` for the package's migrations, bound to ``connection`` or to this database.

        Use it for Alembic commands in code, e.g. writing a new migration::

            command.revision(db.alembic_config(), message="add jobs", autogenerate=True)
        """
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = connection
        config.attributes["engine"] = self.engine
        return config

    def dispose(self) -> None:
        """Close every pooled connection (at shut-down, and in tests)."""
        self.engine.dispose()


def _sqlite_pragma(conn: Connection, pragma: str) -> None:
    """Run a pragma on the raw connection, outside any transaction (where some pragmas are ignored)."""
    raw = conn.connection.driver_connection
    assert raw is not None
    raw.execute(f"PRAGMA {pragma}")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy (see the "begin" hook below).
        dbapi_connection.isolation_level = None
        dbapi_connection.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        dbapi_connection.execute("PRAGMA journal_mode = WAL")
        # In WAL mode NORMAL never corrupts the file; a power cut may lose the last commits only.
        dbapi_connection.execute("PRAGMA synchronous = NORMAL")
        dbapi_connection.execute("PRAGMA foreign_keys = ON")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


def _forget_pool_after_fork(engine: Engine) -> None:
    """A forked child must not use its parent's connections: give it an empty pool of its own."""
    ref = weakref.ref(engine)

    def _after_fork() -> None:
        forked = ref()
        if forked is not None:
            forked.dispose(close=False)

    os.register_at_fork(after_in_child=_after_fork)
