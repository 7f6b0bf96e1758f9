"""The Model object: OpenAI's ``{id, object, created, owned_by}`` plus Azure's fields, on every layout."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from tunery.services.models import ModelEntry


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    created_at: int
    status: str = "succeeded"
    model: str | None = None
    """For a fine-tuned model: the base model its adapter applies to."""
    fine_tune: str | None = None
    """For a fine-tuned model: the job that made it."""
    parent_model: str | None = None
    capabilities: dict[str, bool]
    lifecycle_status: str = "generally-available"
    deprecation: dict[str, Any] = {}
    context_length: int | None = None

    @classmethod
    def from_domain(cls, entry: ModelEntry) -> Model:
        return cls(
            id=entry.id,
            created=entry.created_at,
            created_at=entry.created_at,
            owned_by=entry.owned_by,
            model=entry.base_model,
            fine_tune=entry.job_id,
            parent_model=entry.parent_model,
            capabilities={
                "fine_tune": entry.fine_tunable,
                "inference": True,
                "completion": False,
                "chat_completion": True,
                "embeddings": False,
            },
            context_length=entry.context_length,
        )
