"""``/fine_tuning/checkpoints/{checkpoint}/permissions``: share a checkpoint with other projects (admin keys)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body
from pydantic import BaseModel

from tunery.api.deps import PrincipalDep, ServicesDep
from tunery.api.edge import bounded
from tunery.api.schemas.common import ListResponse
from tunery.domain.pagination import Order, PageRequest
from tunery.storage.permissions import CheckpointPermission

router = APIRouter(tags=["fine-tuning"], route_class=bounded("default"))
ORDERS = {"ascending": "asc", "descending": "desc"}


class PermissionObject(BaseModel):
    id: str
    object: Literal["checkpoint.permission"] = "checkpoint.permission"
    created_at: int
    project_id: str

    @classmethod
    def from_domain(cls, permission: CheckpointPermission) -> PermissionObject:
        return cls(id=permission.id, created_at=permission.created_at, project_id=permission.project_id)


class DeletedPermission(BaseModel):
    id: str
    object: Literal["checkpoint.permission"] = "checkpoint.permission"
    deleted: bool = True


PATH = "/fine_tuning/checkpoints/{checkpoint:path}/permissions"


@router.post(PATH, response_model=ListResponse[PermissionObject])
def create_checkpoint_permissions(
    checkpoint: str, services: ServicesDep, principal: PrincipalDep, body: Annotated[dict[str, Any], Body()]
) -> ListResponse[PermissionObject]:
    granted = services.permissions.grant(principal, checkpoint, body)
    return ListResponse[PermissionObject].of([PermissionObject.from_domain(p) for p in granted], False, ids=True)


@router.get(PATH, response_model=ListResponse[PermissionObject])
def list_checkpoint_permissions(
    checkpoint: str,
    services: ServicesDep,
    principal: PrincipalDep,
    project_id: str | None = None,
    after: str | None = None,
    limit: int | None = None,
    order: str | None = None,
) -> ListResponse[PermissionObject]:
    page = PageRequest.build(
        limit=limit, after=after, order=ORDERS.get(order or "", order), default_limit=10, max_limit=100,
        default_order=Order.DESC,
    )  # fmt: skip
    found = services.permissions.list(principal, checkpoint, page, project_id)
    data = [PermissionObject.from_domain(p) for p in found.data]
    return ListResponse[PermissionObject].of(data, found.has_more, ids=True)


@router.delete(PATH + "/{permission_id}", response_model=DeletedPermission)
def delete_checkpoint_permission(
    checkpoint: str, permission_id: str, services: ServicesDep, principal: PrincipalDep
) -> DeletedPermission:
    revoked = services.permissions.revoke(principal, checkpoint, permission_id)
    return DeletedPermission(id=revoked.id)
