"""Deployment wire objects: the ARM resource (control plane) and the data-plane deployment object."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

from tunery.api.schemas.common import Loose
from tunery.domain.deployments import Deployment, ProvisioningState

MAX_CAPACITY = 100_000  # far above any real deployment; keeps the number inside a database integer
Capacity = Annotated[int, Field(ge=1, le=MAX_CAPACITY)]


class ArmModelRef(Loose):
    format: str | None = "OpenAI"
    name: str = Field("", description="The fine-tuned model, checkpoint or base model to deploy.")
    version: str | None = None


class ArmProperties(Loose):
    model: ArmModelRef = Field(default_factory=lambda: ArmModelRef())


class ArmSku(Loose):
    name: str = "Standard"
    capacity: Capacity = 1


class DeploymentRequest(Loose):
    """The ARM deployment body (``PUT .../deployments/{name}``): ``sku`` + ``properties.model``."""

    sku: ArmSku = Field(default_factory=lambda: ArmSku())
    properties: ArmProperties = Field(default_factory=lambda: ArmProperties())


class ScaleSettings(Loose):
    scale_type: str | None = None
    capacity: Capacity = 1


class LegacyDeploymentRequest(Loose):
    """The pre-2023 data-plane create: ``{"model": ..., "scale_settings": {...}}`` (``name`` optional)."""

    model: Annotated[str, Field(min_length=1)]
    name: str | None = None
    scale_settings: ScaleSettings = Field(default_factory=lambda: ScaleSettings())


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
