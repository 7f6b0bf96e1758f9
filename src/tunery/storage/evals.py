"""Evals, eval runs and output items: rows in ``evals``/``eval_runs``/``eval_output_items`` <-> records.

API reads are scoped to a project; ``claim_next``, ``heartbeat`` and ``transition`` are for the run
executor and span projects. A run is held like a job (``jobs.py``): ``claim_next`` stamps ``worker_id`` and
``heartbeat_at``; a run whose heartbeat is older than ``stale_after`` is free again, so a run left
``in_progress`` by a crash is picked up and resumed (its output items are unique by row index).
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from typing import Any

from sqlalchemy import ColumnElement, Table, delete, func, or_, select

from tunery.domain.errors import InvalidRequest, NotFound
from tunery.domain.evals import Eval, EvalRun, OutputItem, RunStatus, RunTarget
from tunery.domain.pagination import Order, Page, PageRequest
from tunery.storage.db import Database
from tunery.storage.tables import eval_output_items, eval_runs, evals
from tunery.storage.webhooks import OUTBOX_WAKEUP, enqueue_eval_run_end

DEFAULT_STALE_AFTER_S = 30.0


class EvalStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # ------------------------------------------------------------------------------------------ evals
    def insert_eval(self, ev: Eval) -> None:
        with self._db.transaction() as conn:
            conn.execute(evals.insert().values(_eval_to_row(ev)))

    def get_eval(self, project_id: str, eval_id: str) -> Eval:
        """Raises:
        NotFound: no such eval in this project.
        """
        query = select(evals).where(evals.c.id == eval_id, evals.c.project_id == project_id)
        with self._db.read() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            raise NotFound(f"No eval with id '{eval_id}' was found.", param="eval_id")
        return _row_to_eval(row)

    def list_evals(self, project_id: str, page: PageRequest) -> Page[Eval]:
        query = select(evals).where(evals.c.project_id == project_id)
        rows = self._page(evals, query, page, evals.c.project_id == project_id, "eval")
        return Page([_row_to_eval(r) for r in rows[: page.limit]], len(rows) > page.limit)

    def update_eval(self, ev: Eval) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                evals.update()
                .where(evals.c.id == ev.id, evals.c.project_id == ev.project_id)
                .values(name=ev.name, metadata=ev.metadata)
            )

    def delete_eval(self, project_id: str, eval_id: str) -> None:
        """Delete the eval with its runs and their output items.

        Raises:
            NotFound: no such eval in this project.
        """
        with self._db.transaction() as conn:
            found = conn.scalar(
                select(evals.c.id).where(evals.c.id == eval_id, evals.c.project_id == project_id).with_for_update()
            )
            if found is None:
                raise NotFound(f"No eval with id '{eval_id}' was found.", param="eval_id")
            conn.execute(delete(eval_output_items).where(eval_output_items.c.eval_id == eval_id))
            conn.execute(delete(eval_runs).where(eval_runs.c.eval_id == eval_id))
            conn.execute(delete(evals).where(evals.c.id == eval_id))

    # ------------------------------------------------------------------------------------------- runs
    def insert_run(self, run: EvalRun) -> None:
        with self._db.transaction() as conn:
            conn.execute(eval_runs.insert().values(_run_to_row(run)))

    def insert_finished_run(self, run: EvalRun, items: Iterable[OutputItem]) -> None:
        """Insert a run that is already over (an RFT job's evaluation) with its output items, and its
        ``eval.run.*`` webhook event, in one transaction: subscribers hear of it as of any other run."""
        rows = [_item_to_row(item) for item in items]
        with self._db.transaction() as conn:
            row = conn.execute(eval_runs.insert().values(_run_to_row(run)).returning(*eval_runs.c)).mappings().one()
            if rows:
                conn.execute(eval_output_items.insert(), rows)
            event_id = enqueue_eval_run_end(conn, row, time.time()) if run.status.terminal else None
        if event_id is not None:
            OUTBOX_WAKEUP.set()

    def get_run(self, project_id: str, eval_id: str, run_id: str) -> EvalRun:
        """Raises:
        NotFound: no such run of this eval in this project.
        """
        query = select(eval_runs).where(
            eval_runs.c.id == run_id, eval_runs.c.eval_id == eval_id, eval_runs.c.project_id == project_id
        )
        with self._db.read() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            raise NotFound(f"No run with id '{run_id}' was found in eval '{eval_id}'.", param="run_id")
        return _row_to_run(row)

    def get_run_any(self, run_id: str) -> EvalRun | None:
        with self._db.read() as conn:
            row = conn.execute(select(eval_runs).where(eval_runs.c.id == run_id)).mappings().first()
        return _row_to_run(row) if row is not None else None

    def list_runs(
        self, project_id: str, eval_id: str, page: PageRequest, status: RunStatus | None = None
    ) -> Page[EvalRun]:
        scope = (eval_runs.c.eval_id == eval_id) & (eval_runs.c.project_id == project_id)
        query = select(eval_runs).where(scope)
        if status is not None:
            query = query.where(eval_runs.c.status == status.value)
        rows = self._page(eval_runs, query, page, scope, "run")
        return Page([_row_to_run(r) for r in rows[: page.limit]], len(rows) > page.limit)

    def job_ids_with_runs(self) -> builtins.list[str]:
        """Fine-tuning jobs that have per-checkpoint runs (any project)."""
        query = select(eval_runs.c.job_id).where(eval_runs.c.job_id.is_not(None)).distinct()
        with self._db.read() as conn:
            return [str(job_id) for job_id in conn.scalars(query)]

    def runs_for_job(self, job_id: str) -> builtins.list[EvalRun]:
        """The per-checkpoint runs of a fine-tuning job, oldest first."""
        query = select(eval_runs).where(eval_runs.c.job_id == job_id).order_by(eval_runs.c.seq)
        with self._db.read() as conn:
            return [_row_to_run(r) for r in conn.execute(query).mappings()]

    def save_run(self, run: EvalRun) -> None:
        """Save the run's progress fields (counts, usage, status, error, ...)."""
        values = {k: v for k, v in _run_to_row(run).items() if k not in ("id", "eval_id", "project_id", "created_at")}
        with self._db.transaction() as conn:
            conn.execute(eval_runs.update().where(eval_runs.c.id == run.id).values(values))

    def transition(
        self, run_id: str, target: RunStatus, *, expect: AbstractSet[RunStatus], **values: Any
    ) -> EvalRun | None:
        """Compare-and-set the status (and raw column ``values``); None when the run is not in ``expect``.

        A move into a terminal status writes the run's ``eval.run.*`` webhook event to the outbox in the same
        transaction."""
        query = (
            eval_runs.update()
            .where(eval_runs.c.id == run_id, eval_runs.c.status.in_([s.value for s in expect]))
            .values(status=target.value, **values)
            .returning(*eval_runs.c)
        )
        event_id = None
        with self._db.transaction() as conn:
            row = conn.execute(query).mappings().first()
            if row is not None and target.terminal and target not in expect:
                event_id = enqueue_eval_run_end(conn, row, time.time())
        if event_id is not None:
            OUTBOX_WAKEUP.set()  # committed: this process's sender may send it now
        return _row_to_run(row) if row is not None else None

    def claim_next(self, worker_id: str, now: float, stale_after: float = DEFAULT_STALE_AFTER_S) -> EvalRun | None:
        """Take the oldest queued run, or an ``in_progress`` one whose holder stopped beating (recovery)."""
        free = or_(eval_runs.c.worker_id.is_(None), eval_runs.c.heartbeat_at.is_(None),
                   eval_runs.c.heartbeat_at < now - stale_after)  # fmt: skip
        oldest = (
            select(eval_runs.c.seq)
            .where(eval_runs.c.status.in_([RunStatus.QUEUED.value, RunStatus.IN_PROGRESS.value]), free)
            .order_by(eval_runs.c.seq)
            .limit(1)
        )
        with self._db.read() as conn:
            if conn.scalar(oldest) is None:
                return None
        with self._db.transaction() as conn:
            seq = conn.scalar(oldest.with_for_update(skip_locked=True))
            if seq is None:
                return None
            row = (
                conn.execute(
                    eval_runs.update()
                    .where(eval_runs.c.seq == seq)
                    .values(worker_id=worker_id, heartbeat_at=now)
                    .returning(*eval_runs.c)
                )
                .mappings()
                .one()
            )
        return _row_to_run(row)

    def heartbeat(self, run_id: str, worker_id: str, now: float) -> RunStatus | None:
        """Beat for a held run; returns its status now (None when it is gone or another worker holds it)."""
        with self._db.transaction() as conn:
            row = conn.execute(
                eval_runs.update()
                .where(eval_runs.c.id == run_id, eval_runs.c.worker_id == worker_id)
                .values(heartbeat_at=now)
                .returning(eval_runs.c.status)
            ).first()
        return RunStatus(row[0]) if row is not None else None

    def delete_run(self, project_id: str, eval_id: str, run_id: str) -> None:
        with self._db.transaction() as conn:
            found = conn.scalar(
                select(eval_runs.c.id).where(
                    eval_runs.c.id == run_id, eval_runs.c.eval_id == eval_id, eval_runs.c.project_id == project_id
                )
            )
            if found is None:
                raise NotFound(f"No run with id '{run_id}' was found in eval '{eval_id}'.", param="run_id")
            conn.execute(delete(eval_output_items).where(eval_output_items.c.run_id == run_id))
            conn.execute(delete(eval_runs).where(eval_runs.c.id == run_id))

    # ----------------------------------------------------------------------------------- output items
    def insert_items(self, items: Iterable[OutputItem]) -> None:
        rows = [_item_to_row(item) for item in items]
        if rows:
            with self._db.transaction() as conn:
                conn.execute(eval_output_items.insert(), rows)

    def done_indices(self, run_id: str) -> set[int]:
        """Row indices that already have an output item (a resumed run skips them)."""
        query = select(eval_output_items.c.datasource_item_id).where(eval_output_items.c.run_id == run_id)
        with self._db.read() as conn:
            return {int(i) for i in conn.scalars(query)}

    def all_items(self, run_id: str) -> builtins.list[OutputItem]:
        query = (
            select(eval_output_items)
            .where(eval_output_items.c.run_id == run_id)
            .order_by(eval_output_items.c.datasource_item_id)
        )
        with self._db.read() as conn:
            return [_row_to_item(r) for r in conn.execute(query).mappings()]

    def count_items(self, run_id: str) -> int:
        query = select(func.count()).select_from(eval_output_items).where(eval_output_items.c.run_id == run_id)
        with self._db.read() as conn:
            return int(conn.scalar(query) or 0)

    def list_items(self, run_id: str, page: PageRequest, status: str | None = None) -> Page[OutputItem]:
        scope = eval_output_items.c.run_id == run_id
        query = select(eval_output_items).where(scope)
        if status is not None:
            query = query.where(eval_output_items.c.status == status)
        rows = self._page(eval_output_items, query, page, scope, "output item")
        return Page([_row_to_item(r) for r in rows[: page.limit]], len(rows) > page.limit)

    def get_item(self, run_id: str, item_id: str) -> OutputItem:
        query = select(eval_output_items).where(eval_output_items.c.run_id == run_id, eval_output_items.c.id == item_id)
        with self._db.read() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            raise NotFound(f"No output item with id '{item_id}' was found in run '{run_id}'.", param="output_item_id")
        return _row_to_item(row)

    # -------------------------------------------------------------------------------------- paging
    def _page(self, table: Table, query: Any, page: PageRequest, scope: ColumnElement[bool], what: str) -> list[Any]:
        ascending = page.order is Order.ASC
        query = query.order_by(table.c.seq.asc() if ascending else table.c.seq.desc())
        with self._db.read() as conn:
            if page.after is not None:
                cursor = conn.scalar(select(table.c.seq).where(table.c.id == page.after, scope))
                if cursor is None:
                    raise InvalidRequest(f"No {what} with id '{page.after}' was found to list after.", param="after")
                query = query.where(table.c.seq > cursor if ascending else table.c.seq < cursor)
            return list(conn.execute(query.limit(page.limit + 1)).mappings().all())


def _eval_to_row(ev: Eval) -> dict[str, Any]:
    return {
        "id": ev.id,
        "project_id": ev.project_id,
        "name": ev.name,
        "created_at": ev.created_at,
        "data_source_config": ev.data_source_config,
        "testing_criteria": ev.testing_criteria,
        "metadata": ev.metadata,
    }


def _row_to_eval(row: Any) -> Eval:
    return Eval(
        id=row["id"],
        project_id=row["project_id"],
        name=row["name"],
        created_at=row["created_at"],
        data_source_config=row["data_source_config"],
        testing_criteria=row["testing_criteria"],
        metadata=row["metadata"],
    )


def _run_to_row(run: EvalRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "eval_id": run.eval_id,
        "project_id": run.project_id,
        "name": run.name,
        "model": run.model,
        "status": run.status.value,
        "created_at": run.created_at,
        "data_source": run.data_source,
        "metadata": run.metadata,
        "error": run.error,
        "result_counts": run.result_counts,
        "per_model_usage": run.per_model_usage,
        "per_testing_criteria_results": run.per_testing_criteria_results,
        "job_id": run.target.job_id if run.target else None,
        "checkpoint": run.target.checkpoint if run.target else None,
        "step": run.target.step if run.target else 0,
        "items_total": run.items_total,
        "worker_id": run.worker_id,
        "heartbeat_at": run.heartbeat_at,
        "finished_at": run.finished_at,
    }


def _row_to_run(row: Any) -> EvalRun:
    target = None
    if row["job_id"] is not None:
        target = RunTarget(job_id=row["job_id"], checkpoint=row["checkpoint"], step=row["step"])
    return EvalRun(
        id=row["id"],
        eval_id=row["eval_id"],
        project_id=row["project_id"],
        name=row["name"],
        model=row["model"],
        status=RunStatus(row["status"]),
        created_at=row["created_at"],
        data_source=row["data_source"],
        metadata=row["metadata"],
        error=row["error"],
        result_counts=row["result_counts"],
        per_model_usage=row["per_model_usage"],
        per_testing_criteria_results=row["per_testing_criteria_results"],
        target=target,
        items_total=row["items_total"],
        worker_id=row["worker_id"],
        heartbeat_at=row["heartbeat_at"],
        finished_at=row["finished_at"],
    )


def _item_to_row(item: OutputItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "run_id": item.run_id,
        "eval_id": item.eval_id,
        "created_at": item.created_at,
        "status": item.status,
        "datasource_item_id": item.datasource_item_id,
        "datasource_item": item.datasource_item,
        "results": item.results,
        "sample": item.sample,
        "errored": int(item.errored),
    }


def _row_to_item(row: Any) -> OutputItem:
    return OutputItem(
        id=row["id"],
        run_id=row["run_id"],
        eval_id=row["eval_id"],
        created_at=row["created_at"],
        status=row["status"],
        datasource_item_id=row["datasource_item_id"],
        datasource_item=row["datasource_item"],
        results=row["results"],
        sample=row["sample"],
        errored=bool(row["errored"]),
    )
