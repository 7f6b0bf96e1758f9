"""Webhook endpoints of a project: create, list, update, rotate the secret, delete, send a test event.

The endpoint objects are those of the official ``openai`` package (``client.webhooks.create`` ... at
``/webhook_endpoints``); the signing secret is shown on create and rotate only. Deliveries themselves are
the outbox sender's job (``services/outbox.py``). An endpoint's URL must be one the server may call
(``services/outbound.py``: by default no loopback, private, link-local or metadata address).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from tunery.domain.errors import InvalidRequest
from tunery.domain.ids import new_id
from tunery.domain.pagination import Page, PageRequest
from tunery.domain.webhooks import (
    EVENT_TYPES,
    Delivery,
    DeliveryState,
    Target,
    WebhookEndpoint,
    event_body,
    new_event_id,
    new_secret,
)
from tunery.services.outbound import Resolver, UrlPolicy, check_url, resolve
from tunery.storage.webhooks import WebhookStore

MAX_NAME_CHARS = 256
MAX_ENDPOINTS_PER_PROJECT = 20
ROTATION_GRACE_S = 24 * 3600


@dataclass(frozen=True, slots=True)
class TestResult:
    endpoint_id: str
    event_type: str
    status_code: int


class WebhookService:
    def __init__(
        self,
        store: WebhookStore,
        send: Callable[[Delivery, WebhookEndpoint], tuple[int | None, str | None, str | None]],
        urls: UrlPolicy | None = None,
        clock: Callable[[], float] = time.time,
        resolver: Resolver = resolve,
    ) -> None:
        """``send`` makes one attempt: (status code, response text, error) — the outbox sender's. ``urls``
        says where endpoints may point (default: public addresses only)."""
        self._store = store
        self._send = send
        self._urls = urls or UrlPolicy()
        self._clock = clock
        self._resolver = resolver

    def create(self, project_id: str, *, name: str, url: str, event_types: Sequence[str]) -> WebhookEndpoint:
        name = _name(name)
        url = check_url(url, self._urls, resolver=self._resolver)
        types = _event_types(event_types)
        if self._store.list(project_id, PageRequest(limit=MAX_ENDPOINTS_PER_PROJECT)).has_more:
            raise InvalidRequest(
                f"A project may have at most {MAX_ENDPOINTS_PER_PROJECT} webhook endpoints.", code="quotaExceeded"
            )
        now = int(self._clock())
        endpoint = WebhookEndpoint(
            id=new_id("whep"),
            project_id=project_id,
            name=name,
            url=url,
            event_types=types,
            secret=new_secret(),
            created_at=now,
            updated_at=now,
        )
        self._store.insert(endpoint)
        return endpoint

    def retrieve(self, project_id: str, endpoint_id: str) -> WebhookEndpoint:
        return self._store.get(project_id, endpoint_id)

    def list(self, project_id: str, page: PageRequest) -> Page[WebhookEndpoint]:
        return self._store.list(project_id, page)

    def update(
        self,
        project_id: str,
        endpoint_id: str,
        *,
        name: str | None = None,
        url: str | None = None,
        event_types: Sequence[str] | None = None,
    ) -> WebhookEndpoint:
        """Replace the fields given (None: keep)."""
        endpoint = self._store.get(project_id, endpoint_id)
        changed = replace(
            endpoint,
            name=_name(name) if name is not None else endpoint.name,
            url=check_url(url, self._urls, resolver=self._resolver) if url is not None else endpoint.url,
            event_types=_event_types(event_types) if event_types is not None else endpoint.event_types,
        )
        if changed != endpoint:
            changed = replace(changed, updated_at=int(self._clock()))
            self._store.update(changed)
        return changed

    def rotate_secret(self, project_id: str, endpoint_id: str, keep_old: bool) -> WebhookEndpoint:
        """A new secret; with ``keep_old`` deliveries carry a signature under the old one for 24 hours too."""
        endpoint = self._store.get(project_id, endpoint_id)
        now = int(self._clock())
        rotated = replace(
            endpoint,
            secret=new_secret(),
            previous_secret=endpoint.secret if keep_old else None,
            previous_secret_until=now + ROTATION_GRACE_S if keep_old else None,
            updated_at=now,
        )
        self._store.update(rotated)
        return rotated

    def delete(self, project_id: str, endpoint_id: str) -> None:
        self._store.delete(project_id, endpoint_id)

    def test(self, project_id: str, endpoint_id: str, event_type: str | None) -> TestResult:
        """Send a sample event now (one attempt, no retry); it is logged with the endpoint's deliveries."""
        endpoint = self._store.get(project_id, endpoint_id)
        event_type = event_type or "fine_tuning.job.succeeded"
        if event_type not in EVENT_TYPES:
            raise InvalidRequest(
                f"event_type '{event_type}' is not one Tunery sends; use one of {', '.join(sorted(EVENT_TYPES))}.",
                param="event_type",
            )
        now = self._clock()
        event_id = new_event_id()
        delivery = Delivery(
            id=new_id("whdl"),
            event_id=event_id,
            event_type=event_type,
            project_id=project_id,
            job_id=None,
            target=Target.WEBHOOK,
            endpoint_id=endpoint.id,
            payload=event_body(event_id, event_type, int(now), {"id": _sample_id(event_type)}),
            created_at=int(now),
            state=DeliveryState.PENDING,
            attempts=0,
            next_attempt_at=now,
        )
        status, response, error = self._send(delivery, endpoint)
        ok = status is not None and 200 <= status < 300
        self._store.add_delivery(
            replace(
                delivery,
                state=DeliveryState.DELIVERED if ok else DeliveryState.FAILED,
                attempts=1,
                last_attempt_at=now,
                last_status_code=status,
                last_response=response,
                last_error=error,
                finished_at=self._clock(),
            )
        )
        return TestResult(endpoint_id=endpoint.id, event_type=event_type, status_code=status or 0)

    def deliveries(self, project_id: str, endpoint_id: str, page: PageRequest) -> Page[Delivery]:
        """The endpoint's delivery log, newest first."""
        self._store.get(project_id, endpoint_id)
        return self._store.deliveries(project_id, page, endpoint_id=endpoint_id)


def _sample_id(event_type: str) -> str:
    """The ``data.id`` of a test event: shaped like the id of what the real event is about."""
    return "evalrun_test" if event_type.startswith("eval.run.") else "ftjob-test"


def _name(value: str) -> str:
    if not value.strip() or len(value) > MAX_NAME_CHARS:
        raise InvalidRequest(f"name must be a non-empty string of at most {MAX_NAME_CHARS} characters.", param="name")
    return value


def _event_types(value: Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, str) or not value:
        raise InvalidRequest("event_types must be a non-empty list of event type names.", param="event_types")
    unknown = sorted(set(value) - EVENT_TYPES)
    if unknown:
        raise InvalidRequest(
            f"Tunery does not send {', '.join(unknown)}; it sends {', '.join(sorted(EVENT_TYPES))}.",
            param="event_types",
        )
    return tuple(dict.fromkeys(value))
