"""Projects and their API keys: rows in ``projects`` and ``api_keys`` <-> ``Project`` / ``ApiKey``.

Only key hashes are stored; hashing the secret is the caller's job (``domain.projects.hash_api_key``).
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from tunery.domain.errors import Conflict, NotFound
from tunery.domain.ids import new_id
from tunery.domain.projects import ApiKey, KeyRole, Project
from tunery.storage.db import Database
from tunery.storage.tables import api_keys, projects


class ProjectStore:
    """Projects: every object and every API key belongs to one."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, name: str) -> Project:
        """Create a project with a fresh id.

        Raises:
            Conflict: a project with this name exists already.
        """
        project = Project(id=new_id("proj"), name=name, created_at=int(time.time()))
        conflict = Conflict(f"A project named '{name}' already exists.", param="name")
        try:
            with self._db.transaction() as conn:
                if conn.scalar(select(projects.c.id).where(projects.c.name == name)) is not None:
                    raise conflict
                conn.execute(projects.insert().values(id=project.id, name=name, created_at=project.created_at))
        except IntegrityError:
            # Another process created the same name between our check and our insert (PostgreSQL).
            raise conflict from None
        return project

    def get(self, project_id: str) -> Project:
        """Raises NotFound when there is no project with this id."""
        with self._db.read() as conn:
            row = conn.execute(select(projects).where(projects.c.id == project_id)).mappings().first()
        if row is None:
            raise NotFound(f"No project with id '{project_id}' was found.", param="project_id")
        return _row_to_project(row)

    def get_by_name(self, name: str) -> Project | None:
        with self._db.read() as conn:
            row = conn.execute(select(projects).where(projects.c.name == name)).mappings().first()
        return _row_to_project(row) if row is not None else None

    def list(self) -> list[Project]:
        """All projects, oldest first."""
        query = select(projects).order_by(projects.c.created_at, projects.c.name)
        with self._db.read() as conn:
            return [_row_to_project(row) for row in conn.execute(query).mappings()]


class ApiKeyStore:
    """API keys, looked up by the hash of the secret the client sends."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, project_id: str, key_hash: str, prefix: str, role: KeyRole = KeyRole.MEMBER) -> ApiKey:
        """Store a key for an existing project (the foreign key rejects an unknown project)."""
        key = ApiKey(
            id=new_id("key"),
            project_id=project_id,
            key_hash=key_hash,
            prefix=prefix,
            created_at=int(time.time()),
            role=role,
        )
        with self._db.transaction() as conn:
            conn.execute(
                api_keys.insert().values(
                    id=key.id,
                    project_id=key.project_id,
                    key_hash=key.key_hash,
                    prefix=key.prefix,
                    created_at=key.created_at,
                    role=key.role.value,
                )
            )
        return key

    def find_by_hash(self, key_hash: str) -> ApiKey | None:
        with self._db.read() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.key_hash == key_hash)).mappings().first()
        return _row_to_api_key(row) if row is not None else None

    def count(self) -> int:
        """Keys in all projects (start-up creates a first key when there is none)."""
        with self._db.read() as conn:
            return int(conn.scalar(select(func.count()).select_from(api_keys)) or 0)

    def list(self, project_id: str) -> list[ApiKey]:
        """The project's keys, oldest first."""
        query = (
            select(api_keys).where(api_keys.c.project_id == project_id).order_by(api_keys.c.created_at, api_keys.c.id)
        )
        with self._db.read() as conn:
            return [_row_to_api_key(row) for row in conn.execute(query).mappings()]


def _row_to_project(row: Any) -> Project:
    return Project(id=row["id"], name=row["name"], created_at=row["created_at"])


def _row_to_api_key(row: Any) -> ApiKey:
    return ApiKey(
        id=row["id"],
        project_id=row["project_id"],
        key_hash=row["key_hash"],
        prefix=row["prefix"],
        created_at=row["created_at"],
        role=KeyRole(row["role"]),
    )
