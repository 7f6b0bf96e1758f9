"""``/migrations``: move fine-tuning jobs from another OpenAI-compatible service here (a Tunery extension).

``POST /migrations`` runs one migration (or, with ``dry_run``, only lists what would move) and answers its
report; ``GET /migrations`` lists what moved. The portal's Migrate page calls both.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field, field_validator

from tunery.api.deps import PrincipalDep, ServicesDep
from tunery.api.edge import bounded
from tunery.services.migration import MigrationRequest

router = APIRouter(tags=["migrations"], route_class=bounded("default"))


class MigrationBody(BaseModel):
    source_url: str = Field(min_length=1, description="The source's OpenAI-layout URL, e.g. https://api.openai.com/v1")
    api_key: str = Field(min_length=1, description="The source's API key (used for this request only, not stored)")
    base_model: str | None = Field(default=None, description="Base model here for the recreated jobs")
    compare: bool = Field(default=True, description="Set old and new answers side by side where both answer")
    dry_run: bool = Field(default=False, description="Only report what would move (and what not, and why)")

    @field_validator("source_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        """An http(s) URL of printable ASCII: anything else cannot name a server (checked before any request)."""
        if not value.isascii() or not value.isprintable() or not value.startswith(("http://", "https://")):
            raise ValueError("source_url must be an http:// or https:// URL")
        return value


@router.post("/migrations")
def create_migration(body: MigrationBody, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    request = MigrationRequest(
        source_url=body.source_url,
        api_key=body.api_key,
        base_model=body.base_model,
        compare=body.compare,
        dry_run=body.dry_run,
    )
    return services.migrations.migrate(principal.project_id, request)


@router.get("/migrations")
def list_migrations(services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    data = [
        {"source_url": m.source_url, "source_job_id": m.source_job_id, "source_model": m.source_model,
         "job_id": m.job_id, "status": m.status, "reason": m.reason, "created_at": m.created_at}
        for m in services.migrations.list(principal.project_id)
    ]  # fmt: skip
    return {"object": "list", "data": data, "has_more": False}
