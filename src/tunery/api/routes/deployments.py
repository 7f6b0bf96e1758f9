"""Deployments: the ARM control-plane path the Azure docs use, and a data-plane ``/deployments`` API.

ARM: ``PUT|POST|GET|DELETE /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.CognitiveServices/
accounts/{a}/deployments/{name}`` with ``sku`` + ``properties.model{format,name,version}`` (spec §3.4.1).
Data plane: ``GET|POST /deployments``, ``PUT|GET|DELETE /deployments/{name}`` on every layout (§3.4.2).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse

from tunery.api.deps import PrincipalDep, ServicesDep
from tunery.api.edge import bounded
from tunery.api.schemas.deployments import ArmDeployment, DeploymentObject, DeploymentRequest, LegacyDeploymentRequest
from tunery.domain.errors import InvalidRequest

ARM_PREFIX = (
    "/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.CognitiveServices"
    "/accounts/{account}/deployments"
)

arm_router = APIRouter(tags=["deployments (ARM)"], route_class=bounded("deployments"))
data_router = APIRouter(tags=["deployments"], route_class=bounded("deployments"))


def _model_name(body: DeploymentRequest) -> tuple[str, str, int]:
    name = body.properties.model.name
    if not name:
        raise InvalidRequest(
            "properties.model.name is required: the fine-tuned model, checkpoint or base model to deploy.",
            param="properties.model.name",
        )
    return name, body.sku.name or "Standard", body.sku.capacity


@dataclass(frozen=True)
class ArmScope:
    """The ARM path segments Azure clients send; Tunery has one account, so they only name the resource."""

    subscription: str
    resource_group: str
    account: str


def _arm_scope(
    subscription: Annotated[str, Path(description="Azure subscription id (any value; Tunery has one account)")],
    resource_group: Annotated[str, Path(description="Resource group name (any value)")],
    account: Annotated[str, Path(description="Azure OpenAI account name (any value)")],
) -> ArmScope:
    return ArmScope(subscription, resource_group, account)


ArmScopeDep = Annotated[ArmScope, Depends(_arm_scope)]


def _resource_id(request: Request) -> str:
    return request.url.path


# ------------------------------------------------------------------------------------------------- ARM
@arm_router.put(ARM_PREFIX + "/{name}", response_model=ArmDeployment)
@arm_router.post(ARM_PREFIX + "/{name}", response_model=ArmDeployment, name="arm_put_by_post")
def arm_put(
    name: str,
    request: Request,
    services: ServicesDep,
    principal: PrincipalDep,
    scope: ArmScopeDep,
    body: DeploymentRequest,
) -> Response:
    model, sku, capacity = _model_name(body)
    deployment, created = services.deployments.create_or_update(
        principal.project_id, name, model=model, sku_name=sku, sku_capacity=capacity
    )
    payload = ArmDeployment.from_domain(deployment, _resource_id(request)).model_dump(mode="json")
    return JSONResponse(payload, status_code=201 if created else 200)


@arm_router.get(ARM_PREFIX + "/{name}", response_model=ArmDeployment)
def arm_get(
    name: str, request: Request, services: ServicesDep, principal: PrincipalDep, scope: ArmScopeDep
) -> ArmDeployment:
    return ArmDeployment.from_domain(services.deployments.retrieve(principal.project_id, name), _resource_id(request))


@arm_router.get(ARM_PREFIX)
def arm_list(request: Request, services: ServicesDep, principal: PrincipalDep, scope: ArmScopeDep) -> dict[str, Any]:
    base = request.url.path.rstrip("/")
    return {
        "value": [
            ArmDeployment.from_domain(d, f"{base}/{d.name}").model_dump(mode="json")
            for d in services.deployments.list(principal.project_id)
        ]
    }


@arm_router.delete(ARM_PREFIX + "/{name}", status_code=204)
def arm_delete(name: str, services: ServicesDep, principal: PrincipalDep, scope: ArmScopeDep) -> Response:
    services.deployments.delete(principal.project_id, name)
    return Response(status_code=204)


# ------------------------------------------------------------------------------------------------- data plane
@data_router.get("/deployments")
def list_deployments(services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    data = [
        DeploymentObject.from_domain(d).model_dump(mode="json") for d in services.deployments.list(principal.project_id)
    ]
    return {"object": "list", "data": data, "has_more": False}


@data_router.post("/deployments", response_model=DeploymentObject, status_code=201)
def create_legacy_deployment(
    services: ServicesDep, principal: PrincipalDep, body: LegacyDeploymentRequest
) -> DeploymentObject:
    """The pre-2023 data-plane create: ``{"model": ..., "scale_settings": {...}}``; the name is generated
    unless ``name`` is given."""
    name = body.name or f"deployment-{uuid.uuid4().hex}"
    deployment, _ = services.deployments.create_or_update(
        principal.project_id, name, model=body.model, sku_capacity=body.scale_settings.capacity
    )
    return DeploymentObject.from_domain(deployment)


@data_router.put("/deployments/{name}", response_model=DeploymentObject)
def put_deployment(name: str, services: ServicesDep, principal: PrincipalDep, body: DeploymentRequest) -> Response:
    model, sku, capacity = _model_name(body)
    deployment, created = services.deployments.create_or_update(
        principal.project_id, name, model=model, sku_name=sku, sku_capacity=capacity
    )
    return JSONResponse(DeploymentObject.from_domain(deployment).model_dump(mode="json"), 201 if created else 200)


@data_router.get("/deployments/{name}", response_model=DeploymentObject)
def get_deployment(name: str, services: ServicesDep, principal: PrincipalDep) -> DeploymentObject:
    return DeploymentObject.from_domain(services.deployments.retrieve(principal.project_id, name))


@data_router.delete("/deployments/{name}", status_code=204)
def delete_deployment(name: str, services: ServicesDep, principal: PrincipalDep) -> Response:
    services.deployments.delete(principal.project_id, name)
    return Response(status_code=204)
