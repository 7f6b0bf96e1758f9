"""Wire shapes of webhook endpoints (as the official ``openai`` package's ``client.webhooks``) and deliveries."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from tunery.domain.webhooks import Delivery, WebhookEndpoint


class WebhookEndpointObject(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    created_at: int
    updated_at: int
    name: str
    url: str
    event_types: list[str]
    signing_secret_hint: str

    @classmethod
    def from_domain(cls, endpoint: WebhookEndpoint) -> WebhookEndpointObject:
        return cls(
            id=endpoint.id,
            created_at=endpoint.created_at,
            updated_at=endpoint.updated_at,
            name=endpoint.name,
            url=endpoint.url,
            event_types=list(endpoint.event_types),
            signing_secret_hint=endpoint.secret_hint,
        )


class WebhookEndpointWithSecret(WebhookEndpointObject):
    """Only the create and rotate answers carry the secret."""

    signing_secret: str

    @classmethod
    def with_secret(cls, endpoint: WebhookEndpoint) -> WebhookEndpointWithSecret:
        return cls(**WebhookEndpointObject.from_domain(endpoint).model_dump(), signing_secret=endpoint.secret)


class DeletedWebhookEndpoint(BaseModel):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool = True


class WebhookEndpointTestResult(BaseModel):
    object: Literal["webhook_endpoint.test"] = "webhook_endpoint.test"
    webhook_endpoint_id: str
    event_type: str
    status_code: int
    success: Literal[True] = True


class WebhookDelivery(BaseModel):
    """A Tunery extension: one row of an endpoint's delivery log."""

    id: str
    object: Literal["webhook_endpoint.delivery"] = "webhook_endpoint.delivery"
    event_id: str
    event_type: str
    job_id: str | None
    created_at: int
    state: str
    attempts: int
    next_attempt_at: float | None
    last_attempt_at: float | None
    last_status_code: int | None
    last_response: str | None
    last_error: str | None
    finished_at: float | None

    @classmethod
    def from_domain(cls, d: Delivery) -> WebhookDelivery:
        return cls(
            id=d.id,
            event_id=d.event_id,
            event_type=d.event_type,
            job_id=d.job_id,
            created_at=d.created_at,
            state=d.state.value,
            attempts=d.attempts,
            next_attempt_at=d.next_attempt_at if d.state.value == "pending" else None,
            last_attempt_at=d.last_attempt_at,
            last_status_code=d.last_status_code,
            last_response=d.last_response,
            last_error=d.last_error,
            finished_at=d.finished_at,
        )
