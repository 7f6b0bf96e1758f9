"""Fixtures for the storage tests: ``db`` runs each test on SQLite and, when configured, on PostgreSQL.

PostgreSQL runs only when TUNERY_TEST_DATABASE_URL is set (``eval "$(scripts/postgres.sh)"`` starts a
local server and prints the export line); each test gets a schema of its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunery.domain.projects import Project
from tunery.storage import Database, ProjectStore
from tunery.testing.databases import POSTGRES_URL_VARIABLE, fresh_database


def database_url(backend: str) -> str | None:
    """The URL to hand to ``fresh_database`` for a ``db`` param; skips the test if PostgreSQL is not set up."""
    if backend == "sqlite":
        return None
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.skip(
            f"{POSTGRES_URL_VARIABLE} is not set; to run on PostgreSQL: "
            f'eval "$(scripts/postgres.sh)" (as root), then rerun'
        )
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with fresh_database(tmp_path, database_url(request.param)) as database:
        yield database


@pytest.fixture
def project(db: Database) -> Project:
    return ProjectStore(db).create("default")


@pytest.fixture
def other_project(db: Database) -> Project:
    return ProjectStore(db).create("other")
