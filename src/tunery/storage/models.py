"""Fine-tuned models: rows in ``fine_tuned_models`` <-> ``FineTunedModel``.

A succeeded job registers one model. Deleting a model only stamps ``deleted_at``: it disappears from
``get``, ``list`` and ``get_by_job``, and its row goes for good with its job (``JobStore.delete``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from tunery.domain.errors import NotFound
from tunery.domain.models import FineTunedModel
from tunery.storage.db import Database
from tunery.storage.tables import fine_tuned_models


class ModelStore:
    """Fine-tuned models, scoped by project; deleted ones are never returned."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def insert(self, model: FineTunedModel) -> None:
        """Store a new model; its project and job must exist (foreign keys), its name be new (unique)."""
        with self._db.transaction() as conn:
            conn.execute(
                fine_tuned_models.insert().values(
                    id=model.id,
                    project_id=model.project_id,
                    job_id=model.job_id,
                    base_model=model.base_model,
                    parent_model=model.parent_model,
                    adapter_key=model.adapter_key,
                    created_at=model.created_at,
                    method=model.method,
                )
            )

    def get(self, project_id: str, model_id: str) -> FineTunedModel | None:
        """The project's model with this name, or None (also when it was deleted)."""
        query = select(fine_tuned_models).where(
            fine_tuned_models.c.id == model_id,
            fine_tuned_models.c.project_id == project_id,
            fine_tuned_models.c.deleted_at.is_(None),
        )
        with self._db.read() as conn:
            row = conn.execute(query).mappings().first()
        return _row_to_model(row) if row is not None else None

    def get_by_job(self, job_id: str) -> FineTunedModel | None:
        """The model the job registered, or None (none yet, or it was deleted)."""
        query = select(fine_tuned_models).where(
            fine_tuned_models.c.job_id == job_id, fine_tuned_models.c.deleted_at.is_(None)
        )
        with self._db.read() as conn:
            row = conn.execute(query).mappings().first()
        return _row_to_model(row) if row is not None else None

    def list(self, project_id: str) -> list[FineTunedModel]:
        """The project's models, newest first, deleted ones left out."""
        query = (
            select(fine_tuned_models)
            .where(fine_tuned_models.c.project_id == project_id, fine_tuned_models.c.deleted_at.is_(None))
            .order_by(fine_tuned_models.c.seq.desc())
        )
        with self._db.read() as conn:
            return [_row_to_model(row) for row in conn.execute(query).mappings()]

    def mark_deleted(self, project_id: str, model_id: str, now: int) -> None:
        """Mark the model deleted at ``now`` (Unix seconds).

        Raises:
            NotFound: no such model in this project, or it was deleted already.
        """
        with self._db.transaction() as conn:
            result = conn.execute(
                fine_tuned_models.update()
                .where(
                    fine_tuned_models.c.id == model_id,
                    fine_tuned_models.c.project_id == project_id,
                    fine_tuned_models.c.deleted_at.is_(None),
                )
                .values(deleted_at=now)
            )
        if result.rowcount != 1:
            raise NotFound(f"No fine-tuned model named '{model_id}' was found.", param="model")


def _row_to_model(row: Any) -> FineTunedModel:
    return FineTunedModel(
        id=row["id"],
        project_id=row["project_id"],
        job_id=row["job_id"],
        base_model=row["base_model"],
        parent_model=row["parent_model"],
        adapter_key=row["adapter_key"],
        created_at=row["created_at"],
        method=row["method"],
    )
