"""Deployments: a name that serves one model (a fine-tuned model, a checkpoint, or a base model)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any


class ProvisioningState(StrEnum):
    ACCEPTED = "Accepted"  # recorded; the adapter is being loaded
    SUCCEEDED = "Succeeded"  # serving
    FAILED = "Failed"


@dataclass(frozen=True, slots=True)
class Deployment:
    name: str
    project_id: str
    model: str  # as given: fine-tuned model id, checkpoint name or id, or base model
    base_model: str
    adapter_key: str | None
    sku_name: str
    sku_capacity: int
    state: ProvisioningState
    created_at: int
    updated_at: int
    last_used_at: int
    model_format: str = "OpenAI"
    model_version: str = "1"
    error: str | None = None

    def with_changes(self, **changes: Any) -> Deployment:
        return replace(self, **changes)
