"""Alembic environment: runs the migrations in ``versions/`` against the connection ``Database`` hands over.

There is no alembic.ini: ``Database.alembic_config()`` builds the ``Config`` in code and puts the live
connection (or the engine) in ``config.attributes``, so this works from an installed package too.
Migrations use batch mode so that ALTERs work on SQLite (Alembic rebuilds the table there).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from tunery.storage.tables import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = config.attributes.get("engine")
    if engine is None:
        raise RuntimeError("build the Alembic config with tunery.storage.Database(url).alembic_config()")
    with engine.begin() as conn:
        _run(conn)


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; run Database(url).upgrade()")
run_migrations_online()
