"""The outbox sender: delivers due outbox rows — signed webhooks and tracker runs — with retries.

A background thread (``worker/outbox.py``, in ``tunery serve`` and ``tunery worker``) calls ``run_once``.
Webhooks: each attempt POSTs the stored body with fresh Standard Webhooks headers (the ``webhook-id`` is the
event id on every attempt); a 2xx answer delivers it, anything else (or no answer within ``timeout_s``) is
retried after ``retry_base_s``, doubling up to ``retry_max_s``, until ``give_up_after_s`` after the event
(default 72 hours, as OpenAI). The connection is vetted by ``services/outbound.py`` when it is made (a URL
whose host now resolves to a private or metadata address is an error, not a POST); redirects are not
followed. Trackers and the Hub push of a succeeded job (``hf_output_repo_name``): one attempt; one that fails
becomes a warning event on the job, never a failed job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from tunery.domain.events import EventLevel, JobEvent
from tunery.domain.ids import new_id
from tunery.domain.webhooks import Delivery, DeliveryState, Target, WebhookEndpoint, retry_delay, signed_headers
from tunery.services.outbound import UrlPolicy, guarded_client
from tunery.storage.events import EventStore
from tunery.storage.webhooks import WebhookStore

log = logging.getLogger(__name__)

USER_AGENT = "Tunery-Webhooks/1.0"


class TrackerFailed(Exception):
    """A tracker could not log a job; the message becomes the job's warning event."""


@dataclass(frozen=True, slots=True)
class OutboxRules:
    retry_base_s: float = 5.0
    retry_max_s: float = 3600.0
    give_up_after_s: float = 72 * 3600.0
    timeout_s: float = 10.0
    tracker_timeout_s: float = 600.0

    @property
    def lease_s(self) -> float:
        """How long a claimed webhook row stays with its sender: longer than one POST may take."""
        return self.timeout_s + 30.0

    @property
    def tracker_lease_s(self) -> float:
        """How long a claimed tracker row stays with its sender: longer than one tracker run may take."""
        return self.tracker_timeout_s + 30.0


# (delivery) -> a line for the job's events; raises TrackerFailed
TrackerRunner = Callable[[Delivery], str]


class OutboxSender:
    def __init__(
        self,
        store: WebhookStore,
        events: EventStore,
        trackers: TrackerRunner,
        rules: OutboxRules,
        urls: UrlPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``urls`` says where webhooks may go (default: public addresses only), checked at connect time."""
        self._store = store
        self._events = events
        self._trackers = trackers
        self.rules = rules
        self._clock = clock
        self._http = guarded_client(urls or UrlPolicy(), timeout=rules.timeout_s, headers={"user-agent": USER_AGENT})

    def close(self) -> None:
        self._http.close()

    def send(self, delivery: Delivery, endpoint: WebhookEndpoint) -> tuple[int | None, str | None, str | None]:
        """One signed POST of the delivery's body: (status code, response text, error)."""
        now = self._clock()
        headers = signed_headers(endpoint.signing_secrets(now), delivery.event_id, int(now), delivery.payload)
        try:
            response = self._http.post(endpoint.url, content=delivery.payload.encode("utf-8"), headers=headers)
        except httpx.HTTPError as exc:
            return None, None, f"{type(exc).__name__}: {exc}"
        return response.status_code, response.text, None

    def run_once(self, sender_id: str, limit: int = 16) -> int:
        """Attempt up to ``limit`` due rows this sender can claim; returns how many it attempted.

        Rows are claimed one at a time, so each lease starts when its own attempt does: a row never waits
        behind slow receivers with its lease running out, and one held by a killed sender is free again
        after a single lease. A pass attempts each row at most once."""
        attempted: list[str] = []
        while len(attempted) < limit:
            claimed = self._store.claim_due(
                sender_id, self._clock(), self.rules.lease_s, limit=1,
                tracker_lease_s=self.rules.tracker_lease_s, exclude=attempted,
            )  # fmt: skip
            if not claimed:
                break
            attempted.append(claimed[0].id)
            self._attempt(claimed[0], sender_id)
        return len(attempted)

    def _attempt(self, delivery: Delivery, sender_id: str) -> None:
        try:
            if delivery.target is Target.WEBHOOK:
                self._deliver_webhook(delivery, sender_id)
            else:
                self._run_tracker(delivery, sender_id)
        except Exception:  # one bad row must not stop the others
            log.exception("outbox: delivery %s failed unexpectedly", delivery.id)

    def _deliver_webhook(self, delivery: Delivery, sender_id: str) -> None:
        endpoint = self._store.get_any(delivery.endpoint_id) if delivery.endpoint_id else None
        now = self._clock()
        if endpoint is None:
            self._store.record_attempt(
                delivery.id, sender_id, now=now, state=DeliveryState.FAILED, next_attempt_at=now,
                status_code=None, response=None, error="the endpoint was deleted",
            )  # fmt: skip
            return
        status, response, error = self.send(delivery, endpoint)
        now = self._clock()
        if status is not None and 200 <= status < 300:
            state, next_at = DeliveryState.DELIVERED, now
        else:
            next_at = now + retry_delay(delivery.attempts + 1, self.rules.retry_base_s, self.rules.retry_max_s)
            gave_up = next_at > delivery.created_at + self.rules.give_up_after_s
            state = DeliveryState.FAILED if gave_up else DeliveryState.PENDING
            log.info("webhook %s to %s: %s; %s", delivery.event_id, endpoint.url, status or error,
                     "giving up" if gave_up else f"retrying in {next_at - now:.1f}s")  # fmt: skip
        self._store.record_attempt(
            delivery.id, sender_id, now=now, state=state, next_attempt_at=next_at,
            status_code=status, response=response, error=error,
        )  # fmt: skip

    def _run_tracker(self, delivery: Delivery, sender_id: str) -> None:
        try:
            message = self._trackers(delivery)
            state, level, error = DeliveryState.DELIVERED, EventLevel.INFO, None
        except Exception as exc:  # TrackerFailed, or the job is gone: never retried, never fatal
            reason = str(exc) if isinstance(exc, TrackerFailed) else f"{type(exc).__name__}: {exc}"
            message = (
                f"The push to the Hugging Face Hub failed: {reason}"
                if delivery.target is Target.HUB
                else f"The {delivery.target.value} integration could not log this job: {reason}"
            )
            state, level, error = DeliveryState.FAILED, EventLevel.WARN, reason
        now = self._clock()
        recorded = self._store.record_attempt(
            delivery.id, sender_id, now=now, state=state, next_attempt_at=now,
            status_code=None, response=message if error is None else None, error=error,
        )  # fmt: skip
        if recorded and delivery.job_id:
            event = JobEvent(id=new_id("ftevent"), job_id=delivery.job_id, created_at=int(now), level=level,
                             message=message)  # fmt: skip
            try:
                self._events.append(event)
            except Exception:  # the job was deleted meanwhile
                log.warning("outbox: could not add the tracker event to job %s", delivery.job_id, exc_info=True)
