"""Deployments' records: rows in ``deployments`` <-> ``Deployment``, unique by (project, name)."""

from __future__ import annotations

import builtins
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from tunery.domain.deployments import Deployment, ProvisioningState
from tunery.domain.errors import Conflict, NotFound
from tunery.storage.db import Database
from tunery.storage.tables import deployments


class DeploymentStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def insert(self, deployment: Deployment) -> None:
        """Raises:
        Conflict: the project already has a deployment with this name.
        """
        try:
            with self._db.transaction() as conn:
                conn.execute(deployments.insert().values(**_to_row(deployment)))
        except IntegrityError:
            raise Conflict(f"A deployment named '{deployment.name}' already exists.", param="name") from None

    def replace(self, deployment: Deployment) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                update(deployments)
                .where(deployments.c.project_id == deployment.project_id, deployments.c.name == deployment.name)
                .values(**_to_row(deployment))
            )

    def get(self, project_id: str, name: str) -> Deployment | None:
        query = select(deployments).where(deployments.c.project_id == project_id, deployments.c.name == name)
        with self._db.read() as conn:
            row = conn.execute(query).mappings().first()
        return _from_row(row) if row else None

    def list(self, project_id: str) -> builtins.list[Deployment]:
        query = select(deployments).where(deployments.c.project_id == project_id).order_by(deployments.c.seq)
        with self._db.read() as conn:
            return [_from_row(row) for row in conn.execute(query).mappings()]

    def count(self, project_id: str) -> int:
        query = select(func.count()).select_from(deployments).where(deployments.c.project_id == project_id)
        with self._db.read() as conn:
            return int(conn.scalar(query) or 0)

    def delete(self, project_id: str, name: str) -> None:
        with self._db.transaction() as conn:
            gone = conn.execute(
                delete(deployments).where(deployments.c.project_id == project_id, deployments.c.name == name)
            )
        if gone.rowcount == 0:
            raise NotFound(f"The deployment '{name}' does not exist.", param="deployment", code="DeploymentNotFound")

    def touch(self, project_id: str, name: str, now: int) -> None:
        """Record a call (the inactivity reaper measures from the last one)."""
        with self._db.transaction() as conn:
            conn.execute(
                update(deployments)
                .where(deployments.c.project_id == project_id, deployments.c.name == name)
                .values(last_used_at=now)
            )

    def set_state(self, project_id: str, name: str, state: ProvisioningState, error: str | None, now: int) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                update(deployments)
                .where(deployments.c.project_id == project_id, deployments.c.name == name)
                .values(state=state.value, error=error, updated_at=now)
            )

    def uses_model(self, project_id: str, model: str) -> bool:
        query = (
            select(func.count())
            .select_from(deployments)
            .where(deployments.c.project_id == project_id, deployments.c.model == model)
        )
        with self._db.read() as conn:
            return bool(conn.scalar(query))

    def serving_adapter(self, adapter_key: str) -> builtins.list[str]:
        """The names of deployments (of any project) that serve this adapter."""
        query = select(deployments.c.name).where(deployments.c.adapter_key == adapter_key)
        with self._db.read() as conn:
            return [str(name) for name in conn.scalars(query)]

    def delete_inactive(self, cutoff: int) -> builtins.list[Deployment]:
        """Delete the deployments (of any project) not called since ``cutoff``, in one statement; return them.

        ``DELETE ... RETURNING``: when several servers reap at once, each row goes to exactly one of them (and a
        deployment called in the meantime is not deleted), so the reaper's work is done once, not twice.
        """
        query = delete(deployments).where(deployments.c.last_used_at < cutoff).returning(*deployments.c)
        with self._db.transaction() as conn:
            return [_from_row(row) for row in conn.execute(query).mappings()]

    def inactive_since(self, cutoff: int) -> builtins.list[Deployment]:
        """Deployments (of any project) not called since ``cutoff``."""
        query = select(deployments).where(deployments.c.last_used_at < cutoff)
        with self._db.read() as conn:
            return [_from_row(row) for row in conn.execute(query).mappings()]


def _to_row(d: Deployment) -> dict[str, Any]:
    return {
        "project_id": d.project_id,
        "name": d.name,
        "model": d.model,
        "base_model": d.base_model,
        "adapter_key": d.adapter_key,
        "sku_name": d.sku_name,
        "sku_capacity": d.sku_capacity,
        "state": d.state.value,
        "created_at": d.created_at,
        "updated_at": d.updated_at,
        "last_used_at": d.last_used_at,
        "model_format": d.model_format,
        "model_version": d.model_version,
        "error": d.error,
    }


def _from_row(row: Any) -> Deployment:
    return Deployment(
        name=row["name"],
        project_id=row["project_id"],
        model=row["model"],
        base_model=row["base_model"],
        adapter_key=row["adapter_key"],
        sku_name=row["sku_name"],
        sku_capacity=row["sku_capacity"],
        state=ProvisioningState(row["state"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_used_at=row["last_used_at"],
        model_format=row["model_format"],
        model_version=row["model_version"],
        error=row["error"],
    )
