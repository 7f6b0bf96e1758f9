"""Imported models and migrated jobs: rows in ``imported_models`` and ``migrated_jobs``.

An imported model is an adapter trained elsewhere; a migrated job links a job of a remote service (and its
fine-tuned model id, which becomes an alias) to the job recreated here. Both are scoped to a project.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tunery.domain.errors import Conflict
from tunery.storage.db import Database
from tunery.storage.tables import imported_models, migrated_jobs


@dataclass(frozen=True, slots=True)
class ImportedModel:
    id: str
    project_id: str
    base_model: str
    adapter_key: str
    source: str
    created_at: int


@dataclass(frozen=True, slots=True)
class MigratedJob:
    project_id: str
    source_url: str
    source_job_id: str
    source_model: str | None
    job_id: str | None
    status: str  # moved | not_moved
    reason: str | None
    created_at: int
    details: dict[str, Any] = field(default_factory=dict)


class ImportedModelStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def insert(self, model: ImportedModel) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                imported_models.insert().values(
                    id=model.id, project_id=model.project_id, base_model=model.base_model,
                    adapter_key=model.adapter_key, source=model.source, created_at=model.created_at,
                )
            )  # fmt: skip

    def get(self, project_id: str, model_id: str) -> ImportedModel | None:
        query = select(imported_models).where(
            imported_models.c.id == model_id,
            imported_models.c.project_id == project_id,
            imported_models.c.deleted_at.is_(None),
        )
        with self._db.read() as conn:
            row = conn.execute(query).mappings().first()
        return _imported(row) if row is not None else None

    def list(self, project_id: str) -> list[ImportedModel]:
        query = (
            select(imported_models)
            .where(imported_models.c.project_id == project_id, imported_models.c.deleted_at.is_(None))
            .order_by(imported_models.c.seq.desc())
        )
        with self._db.read() as conn:
            return [_imported(row) for row in conn.execute(query).mappings()]

    def mark_deleted(self, project_id: str, model_id: str, now: int) -> bool:
        with self._db.transaction() as conn:
            result = conn.execute(
                imported_models.update()
                .where(
                    imported_models.c.id == model_id,
                    imported_models.c.project_id == project_id,
                    imported_models.c.deleted_at.is_(None),
                )
                .values(deleted_at=now)
            )
        return bool(result.rowcount == 1)


class MigrationStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def record(self, entry: MigratedJob) -> None:
        """Store what happened to a source job.

        Raises:
            Conflict: this source job is recorded already (a concurrent run moved it).
        """
        try:
            with self._db.transaction() as conn:
                conn.execute(
                    migrated_jobs.insert().values(
                        project_id=entry.project_id, source_url=entry.source_url, source_job_id=entry.source_job_id,
                        source_model=entry.source_model, job_id=entry.job_id, status=entry.status,
                        reason=entry.reason, details=dict(entry.details), created_at=entry.created_at,
                    )
                )  # fmt: skip
        except IntegrityError:
            raise Conflict(f"The source job '{entry.source_job_id}' was already migrated.") from None

    def get(self, project_id: str, source_url: str, source_job_id: str) -> MigratedJob | None:
        query = select(migrated_jobs).where(
            migrated_jobs.c.project_id == project_id,
            migrated_jobs.c.source_url == source_url,
            migrated_jobs.c.source_job_id == source_job_id,
        )
        with self._db.read() as conn:
            row = conn.execute(query).mappings().first()
        return _migrated(row) if row is not None else None

    def delete(self, project_id: str, source_url: str, source_job_id: str) -> None:
        """Forget a source job that was not moved, so a later run tries it again."""
        with self._db.transaction() as conn:
            conn.execute(
                migrated_jobs.delete().where(
                    migrated_jobs.c.project_id == project_id,
                    migrated_jobs.c.source_url == source_url,
                    migrated_jobs.c.source_job_id == source_job_id,
                    migrated_jobs.c.status != "moved",
                )
            )

    def by_alias(self, project_id: str, source_model: str) -> MigratedJob | None:
        """The moved job whose source fine-tuned model had this id (newest first), or None."""
        query = (
            select(migrated_jobs)
            .where(
                migrated_jobs.c.project_id == project_id,
                migrated_jobs.c.source_model == source_model,
                migrated_jobs.c.status == "moved",
            )
            .order_by(migrated_jobs.c.seq.desc())
        )
        with self._db.read() as conn:
            row = conn.execute(query).mappings().first()
        return _migrated(row) if row is not None else None

    def list(self, project_id: str) -> list[MigratedJob]:
        query = select(migrated_jobs).where(migrated_jobs.c.project_id == project_id).order_by(migrated_jobs.c.seq)
        with self._db.read() as conn:
            return [_migrated(row) for row in conn.execute(query).mappings()]


def _imported(row: Any) -> ImportedModel:
    return ImportedModel(
        id=row["id"], project_id=row["project_id"], base_model=row["base_model"], adapter_key=row["adapter_key"],
        source=row["source"], created_at=row["created_at"],
    )  # fmt: skip


def _migrated(row: Any) -> MigratedJob:
    return MigratedJob(
        project_id=row["project_id"], source_url=row["source_url"], source_job_id=row["source_job_id"],
        source_model=row["source_model"], job_id=row["job_id"], status=row["status"], reason=row["reason"],
        created_at=row["created_at"], details=dict(row["details"] or {}),
    )  # fmt: skip
