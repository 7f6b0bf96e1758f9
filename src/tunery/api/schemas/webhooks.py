"""Wire shapes of webhook endpoints (as the official ``openai`` package's ``client.webhooks``) and deliveries,
and the request bodies of their operations."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from tunery.api.schemas.common import Loose
from tunery.domain.webhooks import Delivery, WebhookEndpoint

MAX_NAME_CHARS = 256
MAX_URL_CHARS = 2048
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS, pattern=r"\S")]
Url = Annotated[str, Field(min_length=1, max_length=MAX_URL_CHARS, description="An absolute http(s) URL")]
EventTypes = Annotated[list[Annotated[str, Field(max_length=64)]], Field(min_length=1, max_length=64)]


class WebhookEndpointCreate(Loose):
    """``client.webhooks.create(name=..., url=..., event_types=[...])``."""

    name: Name
    url: Url
    event_types: EventTypes


class WebhookEndpointUpdate(Loose):
    """``client.webhooks.update(id, ...)``: the fields given replace the endpoint's."""

    name: Name | None = None
    url: Url | None = None
    event_types: EventTypes | None = None


class WebhookRotateSecret(Loose):
    keep_old_secret_active_for_24_hours: bool = False


class WebhookTestEvent(Loose):
    event_type: Annotated[str, Field(max_length=64)] | None = None


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
