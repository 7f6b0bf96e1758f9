"""Uploaded files' records: rows in ``files`` <-> ``FileRecord``. The bytes live in the blob store.

Every read is scoped to a project: another project's file, like a deleted one, is simply not found.
Deleting only marks the row ``deleted`` (its id stays a valid ``after`` cursor), and a deleted row never
changes again, so a validation that finishes after a delete cannot bring the file back.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Select, and_, func, or_, select

from tunery.domain.datasets import DatasetStats, Problem
from tunery.domain.errors import InvalidRequest, NotFound
from tunery.domain.files import FilePurpose, FileRecord, FileStatus
from tunery.domain.pagination import Order, Page, PageRequest
from tunery.storage.db import Database
from tunery.storage.tables import files

_DELETED = FileStatus.DELETED.value


class FileStore:
    """File records, scoped by project."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def insert(self, record: FileRecord) -> None:
        """Store a new record; its project must exist (foreign key)."""
        with self._db.transaction() as conn:
            conn.execute(files.insert().values(id=record.id, **_record_to_row(record)))

    def get(self, project_id: str, file_id: str) -> FileRecord:
        """The project's file with this id.

        Raises:
            NotFound: no such file in this project, or it was deleted.
        """
        with self._db.read() as conn:
            row = conn.execute(_visible(project_id).where(files.c.id == file_id)).mappings().first()
        if row is None:
            raise _not_found(file_id)
        return _row_to_file(row)

    def get_any(self, file_id: str) -> FileRecord:
        """The file with this id in whatever project, deleted ones excluded (background work only).

        Raises:
            NotFound: no such file, or it was deleted.
        """
        query = select(files).where(files.c.id == file_id, files.c.status != _DELETED)
        with self._db.read() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            raise _not_found(file_id)
        return _row_to_file(row)

    def list(self, project_id: str, page: PageRequest, purpose: FilePurpose | None = None) -> Page[FileRecord]:
        """One page of the project's files in upload order (``page.order``), deleted ones left out.

        Raises:
            InvalidRequest: ``page.after`` is not a file of this project (param ``after``).
        """
        query = _visible(project_id)
        if purpose is not None:
            query = query.where(files.c.purpose == purpose.value)
        ascending = page.order is Order.ASC
        with self._db.read() as conn:
            if page.after is not None:
                # A deleted file is still a valid cursor: the client may have deleted the last item it saw.
                cursor = conn.scalar(
                    select(files.c.seq).where(files.c.id == page.after, files.c.project_id == project_id)
                )
                if cursor is None:
                    raise InvalidRequest(f"No file with id '{page.after}' was found to list after.", param="after")
                query = query.where(files.c.seq > cursor if ascending else files.c.seq < cursor)
            query = query.order_by(files.c.seq.asc() if ascending else files.c.seq.desc())
            rows = conn.execute(query.limit(page.limit + 1)).mappings().all()
        return Page(data=[_row_to_file(row) for row in rows[: page.limit]], has_more=len(rows) > page.limit)

    def update(self, record: FileRecord) -> None:
        """Save the mutable fields: status, status_details, problems, problem_count, stats, format, bytes.

        Raises:
            NotFound: no such file in the record's project, or it was deleted meanwhile.
        """
        row = _record_to_row(record)
        values = {name: row[name] for name in _MUTABLE}
        with self._db.transaction() as conn:
            result = conn.execute(
                files.update()
                .where(
                    files.c.id == record.id,
                    files.c.project_id == record.project_id,
                    files.c.status != _DELETED,
                )
                .values(**values)
            )
        if result.rowcount != 1:
            raise _not_found(record.id)

    def set_status(self, file_id: str, status: FileStatus, *, expect: set[FileStatus] | None = None) -> bool:
        """Compare-and-set the status: only one caller, in any process, wins a given transition.

        Use it to claim a file, e.g. ``set_status(id, RUNNING, expect={PENDING})``.

        Returns:
            True when the row changed; False when the file is missing, deleted, or its current status
            is not in ``expect`` (``None``: any status but ``deleted``).
        """
        query = files.update().where(files.c.id == file_id, files.c.status != _DELETED)
        if expect is not None:
            if not expect:
                return False
            query = query.where(files.c.status.in_([s.value for s in expect]))
        with self._db.transaction() as conn:
            result = conn.execute(query.values(status=status.value))
        return result.rowcount == 1

    def mark_deleted(self, project_id: str, file_id: str) -> None:
        """Mark the file deleted; it disappears from ``get``, ``list``, ``count`` and ``total_bytes``.

        Raises:
            NotFound: no such file in this project, or it was deleted already.
        """
        with self._db.transaction() as conn:
            result = conn.execute(
                files.update()
                .where(files.c.id == file_id, files.c.project_id == project_id, files.c.status != _DELETED)
                .values(status=_DELETED)
            )
        if result.rowcount != 1:
            raise _not_found(file_id)

    def claim_check(self, file_id: str, now: float, lease_s: float) -> bool:
        """Take a file to check: a pending one, or a running one whose checker's lease has run out.

        Sets status ``running`` and a lease of ``lease_s`` seconds, in one conditional update: of several
        servers claiming at once, exactly one wins, and a file a live server is checking is never taken.
        """
        free = or_(
            files.c.status == FileStatus.PENDING.value,
            and_(
                files.c.status == FileStatus.RUNNING.value,
                or_(files.c.check_lease_until.is_(None), files.c.check_lease_until < now),
            ),
        )
        query = (
            files.update()
            .where(files.c.id == file_id, free)
            .values(status=FileStatus.RUNNING.value, check_lease_until=now + lease_s)
        )
        with self._db.transaction() as conn:
            result = conn.execute(query)
        return result.rowcount == 1

    def renew_check(self, file_id: str, now: float, lease_s: float) -> bool:
        """Extend the lease of a file being checked; False when it is no longer running (done, or deleted)."""
        query = (
            files.update()
            .where(files.c.id == file_id, files.c.status == FileStatus.RUNNING.value)
            .values(check_lease_until=now + lease_s)
        )
        with self._db.transaction() as conn:
            result = conn.execute(query)
        return result.rowcount == 1

    def list_unchecked(self, now: float) -> builtins.list[FileRecord]:
        """Files waiting for a check: pending ones, and running ones whose checker's lease ran out (oldest first)."""
        query = (
            select(files)
            .where(
                or_(
                    files.c.status == FileStatus.PENDING.value,
                    and_(
                        files.c.status == FileStatus.RUNNING.value,
                        or_(files.c.check_lease_until.is_(None), files.c.check_lease_until < now),
                    ),
                )
            )
            .order_by(files.c.seq)
        )
        with self._db.read() as conn:
            return [_row_to_file(row) for row in conn.execute(query).mappings()]

    def list_by_status(self, statuses: Iterable[FileStatus]) -> builtins.list[FileRecord]:
        """Files in any of these statuses, in every project, oldest first (crash recovery at start-up)."""
        wanted = [status.value for status in statuses]
        query = select(files).where(files.c.status.in_(wanted)).order_by(files.c.seq)
        with self._db.read() as conn:
            return [_row_to_file(row) for row in conn.execute(query).mappings()]

    def count(self, project_id: str) -> int:
        """The project's files, deleted ones not counted (for quotas)."""
        query = select(func.count()).select_from(files).where(*_visible_conditions(project_id))
        with self._db.read() as conn:
            return int(conn.scalar(query) or 0)

    def total_bytes(self, project_id: str) -> int:
        """The size of the project's files added up, deleted ones not counted (for quotas)."""
        query = select(func.coalesce(func.sum(files.c.bytes), 0)).where(*_visible_conditions(project_id))
        with self._db.read() as conn:
            return int(conn.scalar(query) or 0)


_MUTABLE = ("status", "status_details", "problems", "problem_count", "stats", "format", "bytes")


def _visible_conditions(project_id: str) -> tuple[Any, ...]:
    return (files.c.project_id == project_id, files.c.status != _DELETED)


def _visible(project_id: str) -> Select[Any]:
    return select(files).where(*_visible_conditions(project_id))


def _not_found(file_id: str) -> NotFound:
    return NotFound(f"No file with id '{file_id}' was found.", param="file_id")


def _record_to_row(record: FileRecord) -> dict[str, Any]:
    """Every column but ``seq`` and ``id``."""
    return {
        "project_id": record.project_id,
        "filename": record.filename,
        "purpose": record.purpose.value,
        "bytes": record.bytes,
        "created_at": record.created_at,
        "status": record.status.value,
        "status_details": record.status_details,
        "expires_at": record.expires_at,
        "problems": [{"line": p.line, "code": p.code, "message": p.message} for p in record.problems],
        "problem_count": record.problem_count,
        "stats": record.stats.to_dict() if record.stats is not None else None,
        "format": record.format,
    }


def _row_to_file(row: Any) -> FileRecord:
    return FileRecord(
        id=row["id"],
        project_id=row["project_id"],
        filename=row["filename"],
        purpose=FilePurpose(row["purpose"]),
        bytes=row["bytes"],
        created_at=row["created_at"],
        status=FileStatus(row["status"]),
        status_details=row["status_details"],
        expires_at=row["expires_at"],
        problems=[Problem(line=p["line"], code=p["code"], message=p["message"]) for p in row["problems"]],
        problem_count=row["problem_count"],
        stats=DatasetStats.from_dict(row["stats"]) if row["stats"] is not None else None,
        format=row["format"],
    )
