"""Job events: rows in ``job_events`` <-> ``JobEvent``, the log a user pages through newest first.

Events are only ever appended; they go when their job is deleted (``JobStore.delete``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from tunery.domain.errors import InvalidRequest
from tunery.domain.events import EventLevel, EventType, JobEvent
from tunery.domain.pagination import Order, Page, PageRequest
from tunery.storage.db import Database
from tunery.storage.tables import job_events


class EventStore:
    """Events, per job; the caller checks that the job is the client's."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def append(self, event: JobEvent) -> None:
        """Store a new event; its job must exist (foreign key)."""
        with self._db.transaction() as conn:
            conn.execute(
                job_events.insert().values(
                    id=event.id,
                    job_id=event.job_id,
                    created_at=event.created_at,
                    level=event.level.value,
                    message=event.message,
                    type=event.type.value,
                    data=event.data,
                )
            )

    def list(self, job_id: str, page: PageRequest) -> Page[JobEvent]:
        """One page of the job's events in the order they were appended (``page.order``; DESC is newest
        first).

        Raises:
            InvalidRequest: ``page.after`` is not an event of this job (param ``after``).
        """
        ascending = page.order is Order.ASC
        query = select(job_events).where(job_events.c.job_id == job_id)
        with self._db.read() as conn:
            if page.after is not None:
                cursor = conn.scalar(
                    select(job_events.c.seq).where(job_events.c.id == page.after, job_events.c.job_id == job_id)
                )
                if cursor is None:
                    raise InvalidRequest(f"No event with id '{page.after}' was found to list after.", param="after")
                query = query.where(job_events.c.seq > cursor if ascending else job_events.c.seq < cursor)
            query = query.order_by(job_events.c.seq.asc() if ascending else job_events.c.seq.desc())
            rows = conn.execute(query.limit(page.limit + 1)).mappings().all()
        return Page(data=[_row_to_event(row) for row in rows[: page.limit]], has_more=len(rows) > page.limit)

    def count(self, job_id: str) -> int:
        """The job's events."""
        query = select(func.count()).select_from(job_events).where(job_events.c.job_id == job_id)
        with self._db.read() as conn:
            return int(conn.scalar(query) or 0)


def _row_to_event(row: Any) -> JobEvent:
    return JobEvent(
        id=row["id"],
        job_id=row["job_id"],
        created_at=row["created_at"],
        level=EventLevel(row["level"]),
        message=row["message"],
        type=EventType(row["type"]),
        data=row["data"],
    )
