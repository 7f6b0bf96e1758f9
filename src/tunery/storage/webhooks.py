"""Webhook endpoints and the outbox: rows in ``webhook_endpoints`` / ``outbox`` <-> domain records.

``enqueue_job_end`` runs inside the transaction that moves a job to a terminal status (``JobStore.transition``),
``enqueue_eval_run_end`` inside the one that ends an eval run (``EvalStore.transition``), so an event exists
exactly when its job or run ended: never lost by a crash between the two, never sent for a move
that rolled back. It writes one row per receiver (each subscribed endpoint, each tracker of the job, and for a
succeeded job with ``hf_output_repo_name`` the Hub push), all with one event id, which every attempt reuses.

Claiming: ``claim_due`` takes due rows under a lease (``claimed_until``) in one write transaction; on
PostgreSQL with ``FOR UPDATE SKIP LOCKED``, so senders in several processes never take the same row while
the lease runs. A sender that dies mid-attempt leaves the lease to expire and another sender retries the
row, with the same event id (at-least-once; receivers deduplicate on ``webhook-id``).
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Collection
from typing import Any

from sqlalchemy import Connection, case, delete, or_, select

from tunery.domain.errors import NotFound
from tunery.domain.evals import RunStatus
from tunery.domain.ids import new_id
from tunery.domain.jobs import TERMINAL, JobStatus
from tunery.domain.pagination import Page, PageRequest
from tunery.domain.webhooks import (
    EVAL_RUN_EVENT_TYPES,
    JOB_EVENT_TYPES,
    Delivery,
    DeliveryState,
    Target,
    WebhookEndpoint,
    event_body,
    new_event_id,
)
from tunery.storage.db import Database
from tunery.storage.tables import outbox, webhook_endpoints

TRACKERS = {Target.WANDB.value, Target.MLFLOW.value}
# Set when this process commits new outbox rows, so its sender thread wakes at once instead of at its next
# poll (rows written by other processes are found by polling).
OUTBOX_WAKEUP = threading.Event()
MAX_RESPONSE_CHARS = 2000


def enqueue_job_end(conn: Connection, job_row: Any, now: float) -> str | None:
    """Write the outbox rows for a job that has just reached a terminal status (inside its transaction).

    Returns:
        The event id, or None when the status is not terminal.
    """
    status = JobStatus(job_row["status"])
    if status not in TERMINAL:
        return None
    trackers = [
        integration["type"]
        for integration in job_row["integrations"] or []
        if isinstance(integration, dict) and integration.get("type") in TRACKERS
    ]
    if status is JobStatus.SUCCEEDED and (job_row["extras"] or {}).get("hf_output"):
        trackers.append(Target.HUB.value)  # the Hub push: one attempt, like a tracker
    return _enqueue(
        conn, JOB_EVENT_TYPES[status], job_row["project_id"], job_row["id"], int(job_row["finished_at"] or now),
        now, job_id=job_row["id"], trackers=trackers,
    )  # fmt: skip


def enqueue_eval_run_end(conn: Connection, run_row: Any, now: float) -> str | None:
    """Write the outbox rows for an eval run that has just ended (inside the transaction that ended it):
    ``eval.run.succeeded|failed|canceled`` to each subscribed endpoint.

    Returns:
        The event id, or None when the status is not terminal or no endpoint subscribed.
    """
    event_type = EVAL_RUN_EVENT_TYPES.get(RunStatus(run_row["status"]))
    if event_type is None:
        return None
    created_at = int(run_row["finished_at"] or now)
    return _enqueue(conn, event_type, run_row["project_id"], run_row["id"], created_at, now, job_id=None, trackers=[])


def _enqueue(
    conn: Connection,
    event_type: str,
    project_id: str,
    subject_id: str,
    created_at: int,
    now: float,
    *,
    job_id: str | None,
    trackers: list[str],
) -> str | None:
    """One event (``data.id`` = ``subject_id``): a row per subscribed endpoint and per other target (trackers,
    the Hub push), one event id."""
    event_id = new_event_id()
    body = event_body(event_id, event_type, created_at, {"id": subject_id})
    rows: list[dict[str, Any]] = []
    endpoints = conn.execute(
        select(webhook_endpoints.c.id, webhook_endpoints.c.event_types).where(
            webhook_endpoints.c.project_id == project_id
        )
    ).all()
    for endpoint_id, types in endpoints:
        if event_type in types:
            rows.append({"target": Target.WEBHOOK.value, "endpoint_id": endpoint_id})
    rows += [{"target": tracker, "endpoint_id": None} for tracker in trackers]
    for row in rows:
        conn.execute(
            outbox.insert().values(
                id=new_id("whdl"),
                event_id=event_id,
                event_type=event_type,
                project_id=project_id,
                job_id=job_id,
                payload=body,
                created_at=created_at,
                state=DeliveryState.PENDING.value,
                attempts=0,
                next_attempt_at=now,
                **row,
            )
        )
    return event_id if rows else None


class WebhookStore:
    """A project's webhook endpoints, and the outbox that feeds them."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # Endpoints -------------------------------------------------------------------------------------------

    def insert(self, endpoint: WebhookEndpoint) -> None:
        with self._db.transaction() as conn:
            conn.execute(webhook_endpoints.insert().values(_endpoint_to_row(endpoint)))

    def get(self, project_id: str, endpoint_id: str) -> WebhookEndpoint:
        """Raises NotFound: no such endpoint in this project."""
        query = select(webhook_endpoints).where(
            webhook_endpoints.c.id == endpoint_id, webhook_endpoints.c.project_id == project_id
        )
        with self._db.read() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            raise _endpoint_not_found(endpoint_id)
        return _row_to_endpoint(row)

    def get_any(self, endpoint_id: str) -> WebhookEndpoint | None:
        with self._db.read() as conn:
            row = (
                conn.execute(select(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id)).mappings().first()
            )
        return _row_to_endpoint(row) if row is not None else None

    def list(self, project_id: str, page: PageRequest) -> Page[WebhookEndpoint]:
        """Newest first."""
        query = (
            select(webhook_endpoints)
            .where(webhook_endpoints.c.project_id == project_id)
            .order_by(webhook_endpoints.c.seq.desc())
        )
        with self._db.read() as conn:
            if page.after is not None:
                cursor = conn.scalar(
                    select(webhook_endpoints.c.seq).where(
                        webhook_endpoints.c.id == page.after, webhook_endpoints.c.project_id == project_id
                    )
                )
                if cursor is None:
                    raise _endpoint_not_found(page.after, param="after")
                query = query.where(webhook_endpoints.c.seq < cursor)
            rows = conn.execute(query.limit(page.limit + 1)).mappings().all()
        return Page(data=[_row_to_endpoint(r) for r in rows[: page.limit]], has_more=len(rows) > page.limit)

    def update(self, endpoint: WebhookEndpoint) -> None:
        values = _endpoint_to_row(endpoint)
        for name in ("id", "project_id", "created_at"):
            values.pop(name)
        with self._db.transaction() as conn:
            result = conn.execute(
                webhook_endpoints.update()
                .where(webhook_endpoints.c.id == endpoint.id, webhook_endpoints.c.project_id == endpoint.project_id)
                .values(values)
            )
        if result.rowcount != 1:
            raise _endpoint_not_found(endpoint.id)

    def delete(self, project_id: str, endpoint_id: str) -> None:
        """Delete the endpoint; its pending deliveries are dropped, its delivery log goes with it."""
        with self._db.transaction() as conn:
            result = conn.execute(
                delete(webhook_endpoints).where(
                    webhook_endpoints.c.id == endpoint_id, webhook_endpoints.c.project_id == project_id
                )
            )
            if result.rowcount != 1:
                raise _endpoint_not_found(endpoint_id)
            conn.execute(delete(outbox).where(outbox.c.endpoint_id == endpoint_id))

    # Outbox ----------------------------------------------------------------------------------------------

    def add_delivery(self, delivery: Delivery) -> None:
        """A row written outside a job's transition (the "send test event" action)."""
        with self._db.transaction() as conn:
            conn.execute(outbox.insert().values(_delivery_to_row(delivery)))
        if delivery.state is DeliveryState.PENDING:
            OUTBOX_WAKEUP.set()

    def claim_due(
        self,
        sender_id: str,
        now: float,
        lease_s: float,
        limit: int = 16,
        tracker_lease_s: float | None = None,
        exclude: Collection[str] = (),
    ) -> builtins.list[Delivery]:
        """Take up to ``limit`` pending rows whose next attempt is due and that no live lease holds.

        Webhook rows are held for ``lease_s``, tracker rows for ``tracker_lease_s`` (default ``lease_s``): a
        sender killed mid-attempt holds a webhook only as long as one POST may take, not as long as a tracker
        upload may, so a restarted server retries it within seconds. Rows whose id is in ``exclude`` are
        skipped (a sender's pass attempts each row at most once)."""
        due = (
            select(outbox.c.seq)
            .where(
                outbox.c.state == DeliveryState.PENDING.value,
                outbox.c.next_attempt_at <= now,
                or_(outbox.c.claimed_until.is_(None), outbox.c.claimed_until < now),
                outbox.c.id.not_in(list(exclude)),
            )
            .order_by(outbox.c.next_attempt_at, outbox.c.seq)
            .limit(limit)
        )
        with self._db.read() as conn:  # idle senders poll: look first without the write lock
            if conn.scalar(due) is None:
                return []
        with self._db.transaction() as conn:
            seqs = list(conn.scalars(due.with_for_update(skip_locked=True)))
            if not seqs:
                return []
            rows = (
                conn.execute(
                    outbox.update()
                    .where(outbox.c.seq.in_(seqs))
                    .values(
                        claimed_by=sender_id,
                        claimed_until=case(
                            (outbox.c.target == Target.WEBHOOK.value, now + lease_s),
                            else_=now + (lease_s if tracker_lease_s is None else tracker_lease_s),
                        ),
                    )
                    .returning(*outbox.c)
                )
                .mappings()
                .all()
            )
        return sorted((_row_to_delivery(r) for r in rows), key=lambda d: d.next_attempt_at)

    def record_attempt(
        self,
        delivery_id: str,
        sender_id: str,
        *,
        now: float,
        state: DeliveryState,
        next_attempt_at: float,
        status_code: int | None,
        response: str | None,
        error: str | None,
    ) -> bool:
        """Save an attempt's outcome and release the lease. False when the lease was lost to another sender."""
        values: dict[str, Any] = {
            "attempts": outbox.c.attempts + 1,
            "state": state.value,
            "next_attempt_at": next_attempt_at,
            "claimed_by": None,
            "claimed_until": None,
            "last_attempt_at": now,
            "last_status_code": status_code,
            "last_response": response[:MAX_RESPONSE_CHARS] if response is not None else None,
            "last_error": error[:MAX_RESPONSE_CHARS] if error is not None else None,
            "finished_at": now if state is not DeliveryState.PENDING else None,
        }
        with self._db.transaction() as conn:
            result = conn.execute(
                outbox.update().where(outbox.c.id == delivery_id, outbox.c.claimed_by == sender_id).values(values)
            )
        return result.rowcount == 1

    def deliveries(
        self, project_id: str, page: PageRequest, *, endpoint_id: str | None = None, job_id: str | None = None
    ) -> Page[Delivery]:
        """The project's outbox rows, newest first: one endpoint's delivery log, or one job's."""
        query = select(outbox).where(outbox.c.project_id == project_id)
        if endpoint_id is not None:
            query = query.where(outbox.c.endpoint_id == endpoint_id)
        if job_id is not None:
            query = query.where(outbox.c.job_id == job_id)
        query = query.order_by(outbox.c.seq.desc())
        with self._db.read() as conn:
            if page.after is not None:
                cursor = conn.scalar(select(outbox.c.seq).where(outbox.c.id == page.after))
                if cursor is not None:
                    query = query.where(outbox.c.seq < cursor)
            rows = conn.execute(query.limit(page.limit + 1)).mappings().all()
        return Page(data=[_row_to_delivery(r) for r in rows[: page.limit]], has_more=len(rows) > page.limit)


def _endpoint_not_found(endpoint_id: str, param: str = "webhook_endpoint_id") -> NotFound:
    return NotFound(f"No webhook endpoint with id '{endpoint_id}' was found.", param=param)


def _endpoint_to_row(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return {
        "id": endpoint.id,
        "project_id": endpoint.project_id,
        "name": endpoint.name,
        "url": endpoint.url,
        "event_types": list(endpoint.event_types),
        "secret": endpoint.secret,
        "previous_secret": endpoint.previous_secret,
        "previous_secret_until": endpoint.previous_secret_until,
        "created_at": endpoint.created_at,
        "updated_at": endpoint.updated_at,
    }


def _row_to_endpoint(row: Any) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=row["id"],
        project_id=row["project_id"],
        name=row["name"],
        url=row["url"],
        event_types=tuple(row["event_types"]),
        secret=row["secret"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        previous_secret=row["previous_secret"],
        previous_secret_until=row["previous_secret_until"],
    )


def _delivery_to_row(d: Delivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "project_id": d.project_id,
        "job_id": d.job_id,
        "target": d.target.value,
        "endpoint_id": d.endpoint_id,
        "payload": d.payload,
        "created_at": d.created_at,
        "state": d.state.value,
        "attempts": d.attempts,
        "next_attempt_at": d.next_attempt_at,
        "last_attempt_at": d.last_attempt_at,
        "last_status_code": d.last_status_code,
        "last_response": d.last_response,
        "last_error": d.last_error,
        "finished_at": d.finished_at,
    }


def _row_to_delivery(row: Any) -> Delivery:
    return Delivery(
        id=row["id"],
        event_id=row["event_id"],
        event_type=row["event_type"],
        project_id=row["project_id"],
        job_id=row["job_id"],
        target=Target(row["target"]),
        endpoint_id=row["endpoint_id"],
        payload=row["payload"],
        created_at=row["created_at"],
        state=DeliveryState(row["state"]),
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_attempt_at=row["last_attempt_at"],
        last_status_code=row["last_status_code"],
        last_response=row["last_response"],
        last_error=row["last_error"],
        finished_at=row["finished_at"],
    )
