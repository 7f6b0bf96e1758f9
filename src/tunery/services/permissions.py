"""Checkpoint permissions (OpenAI's ``/fine_tuning/checkpoints/{checkpoint}/permissions``): share a
checkpoint of your project with other projects, so they can deploy it and fine-tune from it.

Rules: only an admin key may list, grant or revoke, and only for checkpoints of its own project; a member
key gets 403. A grant names projects by id (or name). Revoking takes effect at once: the other project can
no longer resolve the checkpoint, its deployments of it are deleted, and its jobs that have not started
from it fail at start. Everything not shared stays invisible to other projects (404).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunery.domain.checkpoints import Checkpoint
from tunery.domain.errors import Forbidden, InvalidRequest, NotFound
from tunery.domain.ids import has_prefix
from tunery.domain.pagination import Page, PageRequest
from tunery.services.keys import KeyService, Principal
from tunery.storage.checkpoints import CheckpointStore
from tunery.storage.permissions import CheckpointPermission, PermissionStore

MAX_PROJECTS_PER_GRANT = 100

# (project id, adapter key) -> names of the deployments removed
DropDeployments = Callable[[str, str], list[str]]


class PermissionService:
    def __init__(
        self, store: PermissionStore, checkpoints: CheckpointStore, keys: KeyService, drop_deployments: DropDeployments
    ) -> None:
        self._store = store
        self._checkpoints = checkpoints
        self._keys = keys
        self._drop_deployments = drop_deployments

    def grant(self, principal: Principal, checkpoint_name: str, body: dict[str, Any]) -> list[CheckpointPermission]:
        checkpoint = self._own_checkpoint(principal, checkpoint_name)
        wanted = body.get("project_ids")
        if not isinstance(wanted, list) or not wanted or len(wanted) > MAX_PROJECTS_PER_GRANT:
            raise InvalidRequest(
                f"project_ids must be a list of 1 to {MAX_PROJECTS_PER_GRANT} project ids.", param="project_ids"
            )
        projects = []
        for index, value in enumerate(wanted):
            project = self._keys.find_project(value) if isinstance(value, str) else None
            if project is None:
                raise InvalidRequest(f"project_ids[{index}]: no project '{value}' exists.", param="project_ids")
            if project.id == principal.project_id:
                raise InvalidRequest(
                    f"project_ids[{index}] is this checkpoint's own project; share with other projects.",
                    param="project_ids",
                )
            projects.append(project)
        return [self._store.grant(checkpoint, project.id) for project in projects]

    def list(
        self, principal: Principal, checkpoint_name: str, page: PageRequest, project_id: str | None
    ) -> Page[CheckpointPermission]:
        checkpoint = self._own_checkpoint(principal, checkpoint_name)
        return self._store.list(checkpoint.id, page, project_id)

    def revoke(self, principal: Principal, checkpoint_name: str, permission_id: str) -> CheckpointPermission:
        checkpoint = self._own_checkpoint(principal, checkpoint_name)
        permission = self._store.revoke(checkpoint.id, permission_id)
        self._drop_deployments(permission.project_id, checkpoint.adapter_key)
        return permission

    def _own_checkpoint(self, principal: Principal, name: str) -> Checkpoint:
        if not principal.is_admin:
            raise Forbidden(
                "Checkpoint permissions need an admin key; this is a member key "
                "(the server's operator makes admin keys with `tunery keys create --admin`).",
                code="admin_key_required",
            )
        found = (
            self._checkpoints.get(principal.project_id, name)
            if has_prefix(name, "ftchkpt")
            else self._checkpoints.get_by_name(principal.project_id, name)
        )
        if found is None:
            raise NotFound(f"No checkpoint '{name}' was found in this project.", param="fine_tuned_model_checkpoint")
        return found
