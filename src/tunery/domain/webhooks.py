"""Webhooks as OpenAI sends them: endpoints, event bodies and Standard Webhooks signatures.

A signature is ``v1,<base64 HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>">`` keyed with the
base64-decoded part of a ``whsec_...`` secret, as the Standard Webhooks spec and the official ``openai``
package's ``client.webhooks.unwrap`` expect. No I/O here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tunery.domain.evals import RunStatus
from tunery.domain.jobs import JobStatus

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32

JOB_EVENT_TYPES: dict[JobStatus, str] = {
    JobStatus.SUCCEEDED: "fine_tuning.job.succeeded",
    JobStatus.FAILED: "fine_tuning.job.failed",
    JobStatus.CANCELLED: "fine_tuning.job.cancelled",
}
EVAL_RUN_EVENT_TYPES: dict[RunStatus, str] = {
    RunStatus.COMPLETED: "eval.run.succeeded",
    RunStatus.FAILED: "eval.run.failed",
    RunStatus.CANCELED: "eval.run.canceled",
}
# What an endpoint may subscribe to: the events Tunery sends.
EVENT_TYPES = frozenset(JOB_EVENT_TYPES.values()) | frozenset(EVAL_RUN_EVENT_TYPES.values())


class DeliveryState(StrEnum):
    PENDING = "pending"  # waiting for its next attempt
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # given up: the retry window passed (or a tracker failed)


class Target(StrEnum):
    """Who receives an outbox row: a webhook endpoint, an experiment tracker of the job, or the Hugging Face
    Hub repository a succeeded job's model is pushed to (``hf_output_repo_name``)."""

    WEBHOOK = "webhook"
    WANDB = "wandb"
    MLFLOW = "mlflow"
    HUB = "huggingface"


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    id: str
    project_id: str
    name: str
    url: str
    event_types: tuple[str, ...]
    secret: str
    created_at: int
    updated_at: int
    previous_secret: str | None = None
    previous_secret_until: int | None = None

    @property
    def secret_hint(self) -> str:
        return f"{SECRET_PREFIX}...{self.secret[-4:]}"

    def signing_secrets(self, now: float) -> list[str]:
        """The current secret, and the previous one while it is still honoured after a rotation."""
        found = [self.secret]
        if self.previous_secret and self.previous_secret_until and now < self.previous_secret_until:
            found.append(self.previous_secret)
        return found


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbox row: an event on its way to one receiver, and how its attempts went."""

    id: str
    event_id: str
    event_type: str
    project_id: str
    job_id: str | None
    target: Target
    endpoint_id: str | None
    payload: str
    created_at: int
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_attempt_at: float | None = None
    last_status_code: int | None = None
    last_response: str | None = None
    last_error: str | None = None
    finished_at: float | None = None


def new_event_id() -> str:
    """``evt_<32 hex>``, spelled as OpenAI spells event ids."""
    return "evt_" + uuid.uuid4().hex


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def event_body(event_id: str, event_type: str, created_at: int, data: dict[str, Any]) -> str:
    """The JSON body of an event, as OpenAI's ``WebhookFineTuningJob*`` / ``WebhookEvalRun*`` schemas shape it."""
    body = {"id": event_id, "object": "event", "created_at": created_at, "type": event_type, "data": data}
    return json.dumps(body, separators=(",", ":"))


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """One ``v1,<base64>`` signature of ``body`` under ``secret``."""
    key = base64.b64decode(secret[len(SECRET_PREFIX) :]) if secret.startswith(SECRET_PREFIX) else secret.encode()
    signed = f"{message_id}.{timestamp}.{body}".encode()
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def signed_headers(secrets_: list[str], message_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt (several signatures during a secret rotation)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(secret, message_id, timestamp, body) for secret in secrets_),
        "content-type": "application/json",
    }


def retry_delay(attempts: int, base_s: float, max_s: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: base, 2·base, 4·base ... capped at max."""
    return float(min(max_s, base_s * (2 ** max(0, attempts - 1))))
