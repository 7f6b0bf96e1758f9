"""Fine-tuning jobs: rows in ``jobs`` <-> ``Job``, and the atomic moves that API requests and workers race on.

Reads through ``get`` and ``list`` are scoped to a project; ``get_any``, ``claim_next``, ``heartbeat`` and
``list_stale`` are for workers and span projects. Status changes that can race (cancel against a worker
finishing, two workers claiming one job) go through ``transition`` and ``claim_next``, which compare and set
in one transaction; ``update`` is a plain last-writer-wins save.

Holding a job: ``claim_next`` stamps ``worker_id`` and ``heartbeat_at`` without changing the status; the
worker then moves the job on with ``transition`` and keeps ``heartbeat_at`` fresh with ``heartbeat``. A job
whose heartbeat is older than ``stale_after`` seconds is held by nobody: ``claim_next`` may take it again
and ``list_stale`` reports it for recovery.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import fields
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, or_, select

from tunery.domain.errors import Conflict, InvalidRequest, NotFound
from tunery.domain.jobs import ACTIVE, CLAIMABLE, TERMINAL, Hyperparameters, Job, JobError, JobStatus, Method
from tunery.domain.pagination import Order, Page, PageRequest
from tunery.storage.db import Database
from tunery.storage.tables import checkpoints, fine_tuned_models, job_events, job_metrics, jobs
from tunery.storage.webhooks import OUTBOX_WAKEUP, enqueue_job_end

# A worker that has not beaten for this long is taken for dead.
DEFAULT_STALE_AFTER_S = 30.0
# Rows read per round when a metadata filter is applied in Python.
_SCAN_BATCH = 200


class JobStore:
    """Fine-tuning jobs, scoped by project for API reads; claimed and held by workers."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def insert(self, job: Job) -> None:
        """Store a new job; its project must exist (foreign key)."""
        with self._db.transaction() as conn:
            conn.execute(jobs.insert().values(_job_to_row(job)))

    def get(self, project_id: str, job_id: str) -> Job:
        """The project's job with this id.

        Raises:
            NotFound: no such job in this project.
        """
        query = select(jobs).where(jobs.c.id == job_id, jobs.c.project_id == project_id)
        with self._db.read() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            raise _not_found(job_id)
        return _row_to_job(row)

    def get_any(self, job_id: str) -> Job:
        """The job with this id in whatever project (workers only).

        Raises:
            NotFound: no such job.
        """
        with self._db.read() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
        if row is None:
            raise _not_found(job_id)
        return _row_to_job(row)

    def forget_extra(self, job_id: str, name: str) -> None:
        """Drop one extension value from a job (a Hub token once its push was tried); gone jobs are ignored."""
        with self._db.transaction() as conn:
            row = conn.execute(select(jobs.c.extras).where(jobs.c.id == job_id)).first()
            if row is not None and name in (row[0] or {}):
                extras = {k: v for k, v in row[0].items() if k != name}
                conn.execute(jobs.update().where(jobs.c.id == job_id).values(extras=extras))

    def list(self, project_id: str, page: PageRequest, metadata: dict[str, str] | None = None) -> Page[Job]:
        """One page of the project's jobs in creation order (``page.order``; DESC is newest first).

        Args:
            metadata: keep only jobs whose metadata holds every one of these key/value pairs.

        Raises:
            InvalidRequest: ``page.after`` is not a job of this project (param ``after``).
        """
        ascending = page.order is Order.ASC
        query = select(jobs).where(jobs.c.project_id == project_id)
        query = query.order_by(jobs.c.seq.asc() if ascending else jobs.c.seq.desc())

        def beyond(seq: int) -> ColumnElement[bool]:
            return jobs.c.seq > seq if ascending else jobs.c.seq < seq

        with self._db.read() as conn:
            if page.after is not None:
                cursor = conn.scalar(select(jobs.c.seq).where(jobs.c.id == page.after, jobs.c.project_id == project_id))
                if cursor is None:
                    raise InvalidRequest(
                        f"No fine-tuning job with id '{page.after}' was found to list after.", param="after"
                    )
                query = query.where(beyond(cursor))
            if not metadata:
                rows = conn.execute(query.limit(page.limit + 1)).mappings().all()
                found = [_row_to_job(row) for row in rows]
            else:
                # JSON lookups differ between SQLite and PostgreSQL (and SQLite's path syntax cannot quote
                # every key), so filter here, reading on in batches until a page and one more are found.
                found = []
                batch = max(page.limit + 1, _SCAN_BATCH)
                scan = query
                while len(found) <= page.limit:
                    rows = conn.execute(scan.limit(batch)).mappings().all()
                    found += [_row_to_job(row) for row in rows if _metadata_matches(row["metadata"], metadata)]
                    if len(rows) < batch:
                        break
                    scan = query.where(beyond(rows[-1]["seq"]))
        return Page(data=found[: page.limit], has_more=len(found) > page.limit)

    def count(self, project_id: str, statuses: AbstractSet[JobStatus] | None = None) -> int:
        """The project's jobs, only those in ``statuses`` when given (for quotas)."""
        query = select(func.count()).select_from(jobs).where(jobs.c.project_id == project_id)
        if statuses is not None:
            if not statuses:
                return 0
            query = query.where(jobs.c.status.in_([s.value for s in statuses]))
        with self._db.read() as conn:
            return int(conn.scalar(query) or 0)

    def count_ahead(self, job_id: str) -> tuple[int, int]:
        """(waiting, training): jobs of any project a worker takes before ``job_id`` (claimable and older), and
        jobs training now. The portal's "queue position" for a queued job."""
        seq = select(jobs.c.seq).where(jobs.c.id == job_id).scalar_subquery()
        waiting = (
            select(func.count())
            .select_from(jobs)
            .where(jobs.c.status.in_([s.value for s in CLAIMABLE]), jobs.c.seq < seq)
        )
        training = select(func.count()).select_from(jobs).where(jobs.c.status.in_([s.value for s in ACTIVE]))
        with self._db.read() as conn:
            return int(conn.scalar(waiting) or 0), int(conn.scalar(training) or 0)

    def starting_from(self, project_id: str, models: AbstractSet[str]) -> builtins.list[str]:
        """Ids of the project's unfinished jobs whose parent model is one of ``models`` (they still need it)."""
        if not models:
            return []
        query = select(jobs.c.id).where(
            jobs.c.project_id == project_id,
            jobs.c.parent_model.in_(sorted(models)),
            jobs.c.status.not_in([s.value for s in TERMINAL]),
        )
        with self._db.read() as conn:
            return [str(job_id) for job_id in conn.scalars(query.order_by(jobs.c.seq))]

    def update(self, job: Job) -> None:
        """Save every field but ``id``, ``project_id`` and ``created_at``, status included, whatever the
        row holds now (last writer wins: use ``transition`` or ``heartbeat`` where callers race).

        Raises:
            NotFound: no such job in the job's project.
        """
        row = _job_to_row(job)
        values = {name: value for name, value in row.items() if name not in _IMMUTABLE}
        with self._db.transaction() as conn:
            result = conn.execute(
                jobs.update().where(jobs.c.id == job.id, jobs.c.project_id == job.project_id).values(values)
            )
        if result.rowcount != 1:
            raise _not_found(job.id)

    def transition(
        self,
        job_id: str,
        target: JobStatus,
        *,
        expect: AbstractSet[JobStatus],
        holder: str | None = None,
        **changes: Any,
    ) -> Job | None:
        """Compare-and-set: if the job's status is in ``expect``, set it to ``target`` along with ``changes``
        (``Job`` field names: ``error=``, ``finished_at=``, ``worker_id=`` ...), all in one transaction.

        Only one of several callers, in any process, wins a given move. A move into a terminal status
        writes the job's webhook/tracker event to the outbox in the same transaction.

        With ``holder``, the move also needs the job to be claimed by that worker (a worker whose claim went
        stale and was taken over loses).

        Returns:
            The job as saved; None when the job is missing, its status is not in ``expect`` or (with
            ``holder``) another worker holds it.

        Raises:
            TypeError: a name in ``changes`` is not a ``Job`` field that may change.
        """
        values = _changes_to_columns(changes)
        if not expect:
            return None
        values["status"] = target.value
        query = (
            jobs.update()
            .where(
                jobs.c.id == job_id,
                jobs.c.status.in_([s.value for s in expect]),
                *([jobs.c.worker_id == holder] if holder is not None else []),
            )
            .values(values)
            .returning(*jobs.c)
        )
        event_id = None
        with self._db.transaction() as conn:
            row = conn.execute(query).mappings().first()
            if row is not None and target not in expect:
                event_id = enqueue_job_end(conn, row, time.time())
        if event_id is not None:
            OUTBOX_WAKEUP.set()  # committed: this process's sender may send it now
        return _row_to_job(row) if row is not None else None

    def claim_next(self, worker_id: str, now: float, stale_after: float = DEFAULT_STALE_AFTER_S) -> Job | None:
        """Take the oldest claimable job (pending, queued, resuming) that no live worker holds.

        Sets ``worker_id`` and ``heartbeat_at=now``; the status stays as it was (the worker moves it on with
        ``transition``). A job held by a worker whose heartbeat is older than ``stale_after`` seconds counts
        as free. Concurrent callers, in any process, never get the same job.

        Returns:
            The claimed job, or None when there is nothing to take.
        """
        free = or_(
            jobs.c.worker_id.is_(None),
            jobs.c.heartbeat_at.is_(None),
            jobs.c.heartbeat_at < now - stale_after,
        )
        oldest_free = (
            select(jobs.c.seq)
            .where(jobs.c.status.in_([s.value for s in CLAIMABLE]), free)
            .order_by(jobs.c.seq)
            .limit(1)
        )
        # Idle workers poll: look first without the write lock (SQLite) or any row lock.
        with self._db.read() as conn:
            if conn.scalar(oldest_free) is None:
                return None
        # PostgreSQL locks the row it picks and skips rows that other claimers hold locked, re-checking the
        # conditions on rows changed meanwhile; SQLite ignores FOR UPDATE: its write transaction
        # (BEGIN IMMEDIATE) already lets one claimer in at a time.
        with self._db.transaction() as conn:
            seq = conn.scalar(oldest_free.with_for_update(skip_locked=True))
            if seq is None:
                return None
            row = (
                conn.execute(
                    jobs.update()
                    .where(jobs.c.seq == seq)
                    .values(worker_id=worker_id, heartbeat_at=now)
                    .returning(*jobs.c)
                )
                .mappings()
                .one()
            )
        return _row_to_job(row)

    def heartbeat(self, job_id: str, worker_id: str, now: float, **changes: Any) -> bool:
        """Set ``heartbeat_at=now`` and ``changes`` (e.g. ``step=``, ``estimated_finish=``) if ``worker_id``
        still holds the job.

        Returns:
            False when the job is missing or another worker (or none) holds it: this worker lost it.

        Raises:
            TypeError: a name in ``changes`` is not a ``Job`` field that may change.
        """
        values = _changes_to_columns(changes)
        values["heartbeat_at"] = now
        query = jobs.update().where(jobs.c.id == job_id, jobs.c.worker_id == worker_id).values(values)
        with self._db.transaction() as conn:
            result = conn.execute(query)
        return result.rowcount == 1

    def release(self, job_id: str, worker_id: str) -> bool:
        """Let go of a job ``worker_id`` holds (its trainer is gone): any worker may claim it at once."""
        query = (
            jobs.update()
            .where(jobs.c.id == job_id, jobs.c.worker_id == worker_id)
            .values(worker_id=None, trainer_pid=None)
        )
        with self._db.transaction() as conn:
            result = conn.execute(query)
        return result.rowcount == 1

    def list_stale(self, now: float, stale_after: float) -> builtins.list[Job]:
        """Jobs a dead worker left behind, in every project, oldest first (crash recovery).

        That is jobs running or pausing, and claimable jobs some worker claimed, whose heartbeat is older
        than ``stale_after`` seconds (or missing).
        """
        held = or_(
            jobs.c.status.in_([s.value for s in ACTIVE]),
            and_(jobs.c.status.in_([s.value for s in CLAIMABLE]), jobs.c.worker_id.is_not(None)),
        )
        silent = or_(jobs.c.heartbeat_at.is_(None), jobs.c.heartbeat_at < now - stale_after)
        query = select(jobs).where(held, silent).order_by(jobs.c.seq)
        with self._db.read() as conn:
            return [_row_to_job(row) for row in conn.execute(query).mappings()]

    def delete(self, project_id: str, job_id: str) -> None:
        """Delete the job for good, with its events, metrics and checkpoints.

        The job's fine-tuned model is the caller's: mark it deleted first (``ModelStore.mark_deleted``);
        its row then goes with the job.

        Raises:
            NotFound: no such job in this project.
            Conflict: the job's fine-tuned model is not deleted.
        """
        with self._db.transaction() as conn:
            # Lock the row (PostgreSQL), so that no event or checkpoint is added under our feet.
            found = conn.scalar(
                select(jobs.c.id).where(jobs.c.id == job_id, jobs.c.project_id == project_id).with_for_update()
            )
            if found is None:
                raise _not_found(job_id)
            model = conn.scalar(
                select(fine_tuned_models.c.id).where(
                    fine_tuned_models.c.job_id == job_id, fine_tuned_models.c.deleted_at.is_(None)
                )
            )
            if model is not None:
                raise Conflict(
                    f"Cannot delete job {job_id}: its fine-tuned model '{model}' still exists; delete the model first.",
                    param="fine_tuning_job_id",
                )
            for child in (job_events, job_metrics, checkpoints, fine_tuned_models):
                conn.execute(delete(child).where(child.c.job_id == job_id))
            conn.execute(delete(jobs).where(jobs.c.id == job_id))


_IMMUTABLE = frozenset({"id", "project_id", "created_at"})
_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "method": lambda method: Method(method).value,
    "status": lambda status: JobStatus(status).value,
    "hyperparameters": lambda hp: hp.to_dict(),
    "resolved": lambda hp: hp.to_dict() if hp is not None else None,
    "error": lambda error: (
        {"code": error.code, "message": error.message, "param": error.param} if error is not None else None
    ),
    "metadata": lambda metadata: dict(metadata) if metadata is not None else None,
    "integrations": lambda integrations: list(integrations) if integrations is not None else None,
    "extras": dict,
    "result_files": list,
}
_JOB_FIELDS = tuple(f.name for f in fields(Job))
# Fields that ``transition`` and ``heartbeat`` may set; the status moves only through ``target``.
_CHANGEABLE = frozenset(_JOB_FIELDS) - _IMMUTABLE - {"status"}


def _changes_to_columns(changes: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(changes) - _CHANGEABLE)
    if unknown:
        raise TypeError(f"cannot set job field(s) {', '.join(unknown)}")
    return {name: _CONVERTERS.get(name, _same)(value) for name, value in changes.items()}


def _same(value: Any) -> Any:
    return value


def _metadata_matches(stored: dict[str, str] | None, wanted: dict[str, str]) -> bool:
    return stored is not None and all(key in stored and stored[key] == value for key, value in wanted.items())


def _not_found(job_id: str) -> NotFound:
    return NotFound(f"No fine-tuning job with id '{job_id}' was found.", param="fine_tuning_job_id")


def _job_to_row(job: Job) -> dict[str, Any]:
    """Every column but ``seq``."""
    return {name: _CONVERTERS.get(name, _same)(getattr(job, name)) for name in _JOB_FIELDS}


def _row_to_job(row: Any) -> Job:
    resolved = row["resolved"]
    error = row["error"]
    return Job(
        id=row["id"],
        project_id=row["project_id"],
        created_at=row["created_at"],
        model=row["model"],
        base_model=row["base_model"],
        training_file=row["training_file"],
        validation_file=row["validation_file"],
        method=Method(row["method"]),
        hyperparameters=Hyperparameters.from_dict(row["hyperparameters"]),
        seed=row["seed"],
        status=JobStatus(row["status"]),
        parent_model=row["parent_model"],
        resolved=Hyperparameters.from_dict(resolved) if resolved is not None else None,
        suffix=row["suffix"],
        metadata=row["metadata"],
        integrations=row["integrations"],
        training_type=row["training_type"],
        extras=row["extras"],
        error=JobError(code=error["code"], message=error["message"], param=error["param"]) if error else None,
        fine_tuned_model=row["fine_tuned_model"],
        finished_at=row["finished_at"],
        started_at=row["started_at"],
        trained_tokens=row["trained_tokens"],
        result_files=row["result_files"],
        estimated_finish=row["estimated_finish"],
        step=row["step"],
        total_steps=row["total_steps"],
        worker_id=row["worker_id"],
        heartbeat_at=row["heartbeat_at"],
        trainer_pid=row["trainer_pid"],
    )
