"""``/webhook_endpoints``: a project's webhook endpoints, as ``client.webhooks`` of the ``openai`` package
calls them, plus the Tunery extension ``/webhook_endpoints/{id}/deliveries`` (the delivery log)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from tunery.api.deps import PrincipalDep, ServicesDep
from tunery.api.edge import bounded
from tunery.api.schemas.common import ListResponse
from tunery.api.schemas.webhooks import (
    DeletedWebhookEndpoint,
    WebhookDelivery,
    WebhookEndpointCreate,
    WebhookEndpointObject,
    WebhookEndpointTestResult,
    WebhookEndpointUpdate,
    WebhookEndpointWithSecret,
    WebhookRotateSecret,
    WebhookTestEvent,
)
from tunery.domain.pagination import Order, PageRequest

router = APIRouter(tags=["webhooks"], route_class=bounded("default"))
PAGE = {"default_limit": 20, "max_limit": 100}


def _page(limit: int | None, after: str | None) -> PageRequest:
    return PageRequest.build(limit=limit, after=after, order=None, default_order=Order.DESC, **PAGE)


@router.post("/webhook_endpoints", response_model=WebhookEndpointWithSecret)
def create_webhook_endpoint(
    services: ServicesDep, principal: PrincipalDep, body: WebhookEndpointCreate
) -> WebhookEndpointWithSecret:
    endpoint = services.webhooks.create(
        principal.project_id, name=body.name, url=body.url, event_types=body.event_types
    )
    return WebhookEndpointWithSecret.with_secret(endpoint)


@router.get("/webhook_endpoints", response_model=ListResponse[WebhookEndpointObject])
def list_webhook_endpoints(
    services: ServicesDep, principal: PrincipalDep, limit: int | None = None, after: str | None = None
) -> ListResponse[WebhookEndpointObject]:
    page = services.webhooks.list(principal.project_id, _page(limit, after))
    data = [WebhookEndpointObject.from_domain(e) for e in page.data]
    return ListResponse[WebhookEndpointObject].of(data, page.has_more, ids=True)


@router.get("/webhook_endpoints/{endpoint_id}", response_model=WebhookEndpointObject)
def retrieve_webhook_endpoint(
    endpoint_id: str, services: ServicesDep, principal: PrincipalDep
) -> WebhookEndpointObject:
    return WebhookEndpointObject.from_domain(services.webhooks.retrieve(principal.project_id, endpoint_id))


@router.post("/webhook_endpoints/{endpoint_id}", response_model=WebhookEndpointObject)
def update_webhook_endpoint(
    endpoint_id: str, services: ServicesDep, principal: PrincipalDep, body: WebhookEndpointUpdate
) -> WebhookEndpointObject:
    endpoint = services.webhooks.update(
        principal.project_id, endpoint_id, name=body.name, url=body.url, event_types=body.event_types
    )
    return WebhookEndpointObject.from_domain(endpoint)


@router.delete("/webhook_endpoints/{endpoint_id}", response_model=DeletedWebhookEndpoint)
def delete_webhook_endpoint(endpoint_id: str, services: ServicesDep, principal: PrincipalDep) -> DeletedWebhookEndpoint:
    services.webhooks.delete(principal.project_id, endpoint_id)
    return DeletedWebhookEndpoint(id=endpoint_id)


@router.post("/webhook_endpoints/{endpoint_id}/rotate_secret", response_model=WebhookEndpointWithSecret)
def rotate_webhook_secret(
    endpoint_id: str,
    services: ServicesDep,
    principal: PrincipalDep,
    body: Annotated[WebhookRotateSecret | None, Body()] = None,
) -> WebhookEndpointWithSecret:
    keep = body.keep_old_secret_active_for_24_hours if body is not None else False
    return WebhookEndpointWithSecret.with_secret(
        services.webhooks.rotate_secret(principal.project_id, endpoint_id, keep)
    )


@router.post("/webhook_endpoints/{endpoint_id}/test", response_model=WebhookEndpointTestResult)
def send_test_event(
    endpoint_id: str,
    services: ServicesDep,
    principal: PrincipalDep,
    body: Annotated[WebhookTestEvent | None, Body()] = None,
) -> WebhookEndpointTestResult:
    result = services.webhooks.test(principal.project_id, endpoint_id, body.event_type if body is not None else None)
    return WebhookEndpointTestResult(
        webhook_endpoint_id=result.endpoint_id, event_type=result.event_type, status_code=result.status_code
    )


@router.get("/webhook_endpoints/{endpoint_id}/deliveries", response_model=ListResponse[WebhookDelivery])
def list_webhook_deliveries(
    endpoint_id: str, services: ServicesDep, principal: PrincipalDep, limit: int | None = None, after: str | None = None
) -> ListResponse[WebhookDelivery]:
    page = services.webhooks.deliveries(principal.project_id, endpoint_id, _page(limit, after))
    data = [WebhookDelivery.from_domain(d) for d in page.data]
    return ListResponse[WebhookDelivery].of(data, page.has_more, ids=True)
