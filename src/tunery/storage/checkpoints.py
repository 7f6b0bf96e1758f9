"""Checkpoints and per-step metrics: rows in ``checkpoints`` <-> ``Checkpoint``, ``job_metrics`` <-> ``MetricRow``.

A checkpoint is named ``<model>:ckpt-step-<N>``; when the job succeeds its newest checkpoint is renamed
to the plain model name. Names are unique across projects (they embed the job id). Metrics hold one
results.csv row per optimizer step: a resumed run writes its steps again, replacing the old rows, and a
resume from an earlier state first drops the rows after it. Both go when their job is deleted
(``JobStore.delete``).
"""

from __future__ import annotations

import builtins
from typing import Any

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from tunery.domain.checkpoints import Checkpoint, MetricRow
from tunery.domain.errors import Conflict, InvalidRequest, NotFound
from tunery.domain.pagination import Order, Page, PageRequest
from tunery.storage.db import Database
from tunery.storage.tables import checkpoints, job_metrics

_values = job_metrics.c["values"]  # ``job_metrics.c.values`` is ColumnCollection.values()


class CheckpointStore:
    """Checkpoints, per job; lookups by id or name are scoped to a project."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def insert(self, checkpoint: Checkpoint) -> None:
        """Store a new checkpoint; its job must exist (foreign key) and its name be new (unique)."""
        with self._db.transaction() as conn:
            conn.execute(
                checkpoints.insert().values(
                    id=checkpoint.id,
                    job_id=checkpoint.job_id,
                    project_id=checkpoint.project_id,
                    created_at=checkpoint.created_at,
                    step_number=checkpoint.step_number,
                    fine_tuned_model_checkpoint=checkpoint.fine_tuned_model_checkpoint,
                    adapter_key=checkpoint.adapter_key,
                    metrics=dict(checkpoint.metrics),
                    pinned=checkpoint.pinned,
                )
            )

    def list(self, job_id: str, page: PageRequest) -> Page[Checkpoint]:
        """One page of the job's checkpoints by step (``page.order``; DESC is newest first).

        Raises:
            InvalidRequest: ``page.after`` is not a checkpoint of this job (param ``after``).
        """
        ascending = page.order is Order.ASC
        step, seq = checkpoints.c.step_number, checkpoints.c.seq
        query = select(checkpoints).where(checkpoints.c.job_id == job_id)
        with self._db.read() as conn:
            if page.after is not None:
                cursor = conn.execute(
                    select(step, seq).where(checkpoints.c.id == page.after, checkpoints.c.job_id == job_id)
                ).first()
                if cursor is None:
                    raise InvalidRequest(
                        f"No checkpoint with id '{page.after}' was found to list after.", param="after"
                    )
                # Steps are unique within a job in practice; seq breaks a tie all the same.
                at_step, at_seq = cursor
                if ascending:
                    query = query.where(or_(step > at_step, and_(step == at_step, seq > at_seq)))
                else:
                    query = query.where(or_(step < at_step, and_(step == at_step, seq < at_seq)))
            query = query.order_by(*((step.asc(), seq.asc()) if ascending else (step.desc(), seq.desc())))
            rows = conn.execute(query.limit(page.limit + 1)).mappings().all()
        return Page(data=[_row_to_checkpoint(row) for row in rows[: page.limit]], has_more=len(rows) > page.limit)

    def list_all(self, job_id: str) -> builtins.list[Checkpoint]:
        """Every checkpoint of the job, lowest step first."""
        query = (
            select(checkpoints)
            .where(checkpoints.c.job_id == job_id)
            .order_by(checkpoints.c.step_number, checkpoints.c.seq)
        )
        with self._db.read() as conn:
            return [_row_to_checkpoint(row) for row in conn.execute(query).mappings()]

    def get(self, project_id: str, checkpoint_id: str) -> Checkpoint | None:
        """The project's checkpoint with this id, or None."""
        query = select(checkpoints).where(checkpoints.c.id == checkpoint_id, checkpoints.c.project_id == project_id)
        with self._db.read() as conn:
            row = conn.execute(query).mappings().first()
        return _row_to_checkpoint(row) if row is not None else None

    def get_by_name(self, project_id: str, fine_tuned_model_checkpoint: str) -> Checkpoint | None:
        """The project's checkpoint with this model name, or None."""
        query = select(checkpoints).where(
            checkpoints.c.fine_tuned_model_checkpoint == fine_tuned_model_checkpoint,
            checkpoints.c.project_id == project_id,
        )
        with self._db.read() as conn:
            row = conn.execute(query).mappings().first()
        return _row_to_checkpoint(row) if row is not None else None

    def rename(self, checkpoint_id: str, new_name: str) -> None:
        """Give the checkpoint a new ``fine_tuned_model_checkpoint`` (the newest takes the model's name).

        Raises:
            NotFound: no such checkpoint.
            Conflict: another checkpoint has this name.
        """
        query = (
            checkpoints.update().where(checkpoints.c.id == checkpoint_id).values(fine_tuned_model_checkpoint=new_name)
        )
        try:
            with self._db.transaction() as conn:
                result = conn.execute(query)
        except IntegrityError:
            raise Conflict(
                f"A checkpoint named '{new_name}' already exists.", param="fine_tuned_model_checkpoint"
            ) from None
        if result.rowcount != 1:
            raise NotFound(f"No checkpoint with id '{checkpoint_id}' was found.", param="checkpoint_id")

    def pin(self, checkpoint_id: str) -> None:
        """Keep the checkpoint whatever retention says (a pause checkpoint users may deploy)."""
        with self._db.transaction() as conn:
            conn.execute(checkpoints.update().where(checkpoints.c.id == checkpoint_id).values(pinned=True))

    def delete(self, checkpoint_id: str) -> None:
        """Delete the checkpoint's row (retention); nothing happens when there is none."""
        with self._db.transaction() as conn:
            conn.execute(delete(checkpoints).where(checkpoints.c.id == checkpoint_id))


class MetricStore:
    """Per-step metrics, per job: the rows of results.csv."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def upsert(self, row: MetricRow) -> None:
        """Store the step's row, replacing the one already there; the job must exist (foreign key)."""
        insert = sqlite.insert if self._db.is_sqlite else postgresql.insert
        query = insert(job_metrics).values({"job_id": row.job_id, "step": row.step, "values": dict(row.values)})
        query = query.on_conflict_do_update(
            index_elements=[job_metrics.c.job_id, job_metrics.c.step],
            set_={"values": query.excluded["values"]},
        )
        with self._db.transaction() as conn:
            conn.execute(query)

    def list(self, job_id: str, *, after_step: int | None = None, limit: int | None = None) -> builtins.list[MetricRow]:
        """The job's rows, lowest step first (only steps after ``after_step``, at most ``limit``, when given)."""
        query = select(job_metrics).where(job_metrics.c.job_id == job_id).order_by(job_metrics.c.step)
        if after_step is not None:
            query = query.where(job_metrics.c.step > after_step)
        if limit is not None:
            query = query.limit(limit)
        with self._db.read() as conn:
            return [
                MetricRow(job_id=row["job_id"], step=row["step"], values=row["values"])
                for row in conn.execute(query).mappings()
            ]

    def delete_after(self, job_id: str, step: int) -> None:
        """Drop the job's rows for steps after ``step`` (a resume from an earlier state redoes them)."""
        with self._db.transaction() as conn:
            conn.execute(delete(job_metrics).where(job_metrics.c.job_id == job_id, job_metrics.c.step > step))


def _row_to_checkpoint(row: Any) -> Checkpoint:
    return Checkpoint(
        id=row["id"],
        job_id=row["job_id"],
        project_id=row["project_id"],
        created_at=row["created_at"],
        step_number=row["step_number"],
        fine_tuned_model_checkpoint=row["fine_tuned_model_checkpoint"],
        adapter_key=row["adapter_key"],
        metrics=row["metrics"],
        pinned=bool(row["pinned"]),
    )
