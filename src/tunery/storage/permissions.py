"""Checkpoint permissions: which other projects may use a project's checkpoint (rows in
``checkpoint_permissions``, keyed by the checkpoint's id so a later rename does not lose them)."""

from __future__ import annotations

import builtins
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError

from tunery.domain.checkpoints import Checkpoint
from tunery.domain.errors import NotFound
from tunery.domain.ids import new_id
from tunery.domain.pagination import Order, Page, PageRequest
from tunery.storage.checkpoints import _row_to_checkpoint
from tunery.storage.db import Database
from tunery.storage.tables import checkpoint_permissions, checkpoints


@dataclass(frozen=True, slots=True)
class CheckpointPermission:
    id: str
    checkpoint_id: str
    owner_project_id: str
    project_id: str  # the project it is shared with
    created_at: int


class PermissionStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def grant(self, checkpoint: Checkpoint, project_id: str) -> CheckpointPermission:
        """Share ``checkpoint`` with ``project_id``; granting twice returns the first permission."""
        existing = self._find(checkpoint.id, project_id)
        if existing is not None:
            return existing
        permission = CheckpointPermission(
            id=new_id("cp"), checkpoint_id=checkpoint.id, owner_project_id=checkpoint.project_id,
            project_id=project_id, created_at=int(time.time()),
        )  # fmt: skip
        try:
            with self._db.transaction() as conn:
                conn.execute(
                    checkpoint_permissions.insert().values(
                        id=permission.id,
                        checkpoint=permission.checkpoint_id,
                        owner_project_id=permission.owner_project_id,
                        project_id=project_id,
                        created_at=permission.created_at,
                    )
                )
        except IntegrityError:  # granted meanwhile by another request
            found = self._find(checkpoint.id, project_id)
            assert found is not None
            return found
        return permission

    def list(self, checkpoint_id: str, page: PageRequest, project_id: str | None = None) -> Page[CheckpointPermission]:
        ascending = page.order is Order.ASC
        query = select(checkpoint_permissions).where(checkpoint_permissions.c.checkpoint == checkpoint_id)
        if project_id:
            query = query.where(checkpoint_permissions.c.project_id == project_id)
        seq = checkpoint_permissions.c.seq
        with self._db.read() as conn:
            if page.after:
                cursor = conn.scalar(select(seq).where(checkpoint_permissions.c.id == page.after))
                if cursor is not None:
                    query = query.where(seq > cursor if ascending else seq < cursor)
            rows = conn.execute(query.order_by(seq.asc() if ascending else seq.desc()).limit(page.limit + 1))
            found = [_row(r) for r in rows.mappings()]
        return Page(data=found[: page.limit], has_more=len(found) > page.limit)

    def revoke(self, checkpoint_id: str, permission_id: str) -> CheckpointPermission:
        """Raises NotFound: no such permission on this checkpoint."""
        with self._db.transaction() as conn:
            row = (
                conn.execute(
                    select(checkpoint_permissions).where(
                        checkpoint_permissions.c.id == permission_id,
                        checkpoint_permissions.c.checkpoint == checkpoint_id,
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                raise NotFound(f"No permission with id '{permission_id}' on this checkpoint.", param="permission_id")
            conn.execute(delete(checkpoint_permissions).where(checkpoint_permissions.c.id == permission_id))
        return _row(row)

    def shared_checkpoint(self, project_id: str, name_or_id: str) -> Checkpoint | None:
        """Another project's checkpoint (by model name or id) that is shared with ``project_id``, or None."""
        query = (
            select(checkpoints)
            .join(checkpoint_permissions, checkpoint_permissions.c.checkpoint == checkpoints.c.id)
            .where(
                checkpoint_permissions.c.project_id == project_id,
                or_(checkpoints.c.fine_tuned_model_checkpoint == name_or_id, checkpoints.c.id == name_or_id),
            )
        )
        with self._db.read() as conn:
            row = conn.execute(query).mappings().first()
        return _row_to_checkpoint(row) if row is not None else None

    def _find(self, checkpoint_id: str, project_id: str) -> CheckpointPermission | None:
        query = select(checkpoint_permissions).where(
            checkpoint_permissions.c.checkpoint == checkpoint_id, checkpoint_permissions.c.project_id == project_id
        )
        with self._db.read() as conn:
            row = conn.execute(query).mappings().first()
        return _row(row) if row is not None else None

    def for_grantee(self, project_id: str) -> builtins.list[CheckpointPermission]:
        query = select(checkpoint_permissions).where(checkpoint_permissions.c.project_id == project_id)
        with self._db.read() as conn:
            return [_row(r) for r in conn.execute(query).mappings()]


def _row(row: Any) -> CheckpointPermission:
    return CheckpointPermission(
        id=row["id"], checkpoint_id=row["checkpoint"], owner_project_id=row["owner_project_id"],
        project_id=row["project_id"], created_at=row["created_at"],
    )  # fmt: skip
