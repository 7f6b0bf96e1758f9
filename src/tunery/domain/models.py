"""Fine-tuned models: what a succeeded job registers, and what deployments and new jobs name."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FineTunedModel:
    id: str  # <base>.ft-<job hex>[-<suffix>]
    project_id: str
    job_id: str
    base_model: str  # the root base model the adapter applies to
    parent_model: str | None  # continuous fine-tuning lineage
    adapter_key: str  # blob-store prefix of the final adapter
    created_at: int
    method: str = "supervised"


@dataclass(frozen=True, slots=True)
class AdapterRef:
    """What a model name resolves to: a base model, plus the adapter to put on it (None for the base)."""

    name: str
    base_model: str
    adapter_key: str | None
    project_id: str | None = None
    job_id: str | None = None
