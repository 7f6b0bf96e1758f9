"""Deployment wire objects: the ARM resource (control plane) and the data-plane deployment object."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from tunery.domain.deployments import Deployment, ProvisioningState

ARM_TYPE = "Microsoft.CognitiveServices/accounts/deployments"
LEGACY_STATUS = {
    ProvisioningState.ACCEPTED: "running",
    ProvisioningState.SUCCEEDED: "succeeded",
    ProvisioningState.FAILED: "failed",
}


def _model(d: Deployment) -> dict[str, Any]:
    return {"format": d.model_format, "name": d.model, "version": d.model_version}


class ArmDeployment(BaseModel):
    """``Microsoft.CognitiveServices/accounts/deployments`` as ``az`` and the management SDK read it."""

    id: str
    name: str
    type: str = ARM_TYPE
    sku: dict[str, Any]
    properties: dict[str, Any]
    systemData: dict[str, Any]

    @classmethod
    def from_domain(cls, d: Deployment, resource_id: str) -> ArmDeployment:
        properties: dict[str, Any] = {"model": _model(d), "provisioningState": d.state.value}
        if d.error:
            properties["error"] = {"code": "DeploymentFailed", "message": d.error}
        return cls(
            id=resource_id,
            name=d.name,
            sku={"name": d.sku_name, "capacity": d.sku_capacity},
            properties=properties,
            systemData={"createdAt": d.created_at, "lastModifiedAt": d.updated_at},
        )


class DeploymentObject(BaseModel):
    """The data-plane deployment (legacy ``/openai/deployments`` fields plus the ARM ones)."""

    id: str
    object: str = "deployment"
    model: str
    owner: str = "organization-owner"
    status: str
    scale_settings: dict[str, Any]
    created_at: int
    updated_at: int
    last_used_at: int
    sku: dict[str, Any]
    properties: dict[str, Any]
    base_model: str
    error: str | None = None

    @classmethod
    def from_domain(cls, d: Deployment) -> DeploymentObject:
        return cls(
            id=d.name,
            model=d.model,
            status=LEGACY_STATUS[d.state],
            scale_settings={"scale_type": "standard", "capacity": d.sku_capacity},
            created_at=d.created_at,
            updated_at=d.updated_at,
            last_used_at=d.last_used_at,
            sku={"name": d.sku_name, "capacity": d.sku_capacity},
            properties={"model": _model(d), "provisioningState": d.state.value},
            base_model=d.base_model,
            error=d.error,
        )
