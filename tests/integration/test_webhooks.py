"""Webhooks end to end: a real server ends jobs and a local HTTP receiver in the test gets signed events.

Checked with the official client: ``client.webhooks.create`` / ``test``, and ``client.webhooks.unwrap`` on
what arrived. The receiver answers 500 twice then 200 (one event id, three attempts); a server killed with
an event still undelivered delivers it after its restart.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.harness import tunery
from tests.integration.test_fine_tuning import colour_jsonl, upload

pytestmark = pytest.mark.integration

ALL_JOB_EVENTS = ["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]
WAIT_S = 300


class Receiver:
    """A local HTTP receiver: answers POSTs with ``answers`` in turn (the last repeats) and keeps them."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.received: list[tuple[bytes, dict[str, str], int]] = []
        this = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                status = this.answers[min(len(this.received), len(this.answers) - 1)]
                this.received.append((body, {k.lower(): v for k, v in self.headers.items()}, status))
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"thanks" if status == 200 else b"try later")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, done: Callable[[list[tuple[bytes, dict[str, str], int]]], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if done(self.received):
                return
            time.sleep(0.1)
        raise AssertionError(f"receiver: {what} did not happen in {WAIT_S}s; got {len(self.received)} posts")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver([500, 500, 200])
    yield found
    found.server.shutdown()


@pytest.fixture
def hooks_env(tmp_path: Path, tiny_model_dir: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "TUNERY_DATA_DIR": str(tmp_path / "data"),
        "TUNERY_MODELS__BASE_MODELS": f'["tiny-llama={tiny_model_dir}"]',
        "TUNERY_WEBHOOKS__RETRY_BASE_S": "0.5",
        "TUNERY_WEBHOOKS__RETRY_MAX_S": "1",
        "TUNERY_WEBHOOKS__POLL_INTERVAL_S": "0.2",
        "TUNERY_WEBHOOKS__TIMEOUT_S": "5",
        "TUNERY_WEBHOOKS__ALLOW_PRIVATE_URLS": "true",  # the receiver listens on 127.0.0.1
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("TUNERY_STORAGE__DATABASE_URL", None)
    env["TEST_KEY"] = tunery(env, "keys", "create", "--project", "hooks")
    return env


def _client(url: str, env: dict[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=env["TEST_KEY"], max_retries=0)


def test_a_job_end_arrives_signed_after_two_500s(
    hooks_env: dict[str, str], start_server: Callable, receiver: Receiver, tmp_path: Path
) -> None:
    _, url = start_server(hooks_env, tmp_path / "server.log")
    client = _client(url, hooks_env)
    endpoint = client.webhooks.create(name="ci", url=receiver.url, event_types=ALL_JOB_EVENTS)
    assert endpoint.signing_secret.startswith("whsec_")
    assert client.webhooks.retrieve(endpoint.id).signing_secret_hint.endswith(endpoint.signing_secret[-4:])

    training = upload(client, colour_jsonl(12), "train.jsonl")
    job = client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=training,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
    )  # fmt: skip
    receiver.wait(lambda got: any(status == 200 for *_, status in got), "a 200 delivery")

    assert [status for *_, status in receiver.received] == [500, 500, 200]
    assert len({headers["webhook-id"] for _, headers, _ in receiver.received}) == 1
    body, headers, _ = receiver.received[-1]
    event = client.webhooks.unwrap(body, headers, secret=endpoint.signing_secret)
    assert event.type == "fine_tuning.job.succeeded"
    assert event.object == "event"
    assert event.data.id == job.id
    assert event.id == headers["webhook-id"]
    assert client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body, headers, secret=client.webhooks.create(
            name="other", url=receiver.url, event_types=["fine_tuning.job.failed"]
        ).signing_secret)  # fmt: skip

    log = httpx.get(
        f"{url}/v1/webhook_endpoints/{endpoint.id}/deliveries", headers={"api-key": hooks_env["TEST_KEY"]}
    ).json()["data"]
    assert [(d["event_id"], d["state"], d["attempts"], d["last_status_code"]) for d in log] == [
        (event.id, "delivered", 3, 200)
    ]
    assert log[0]["last_response"] == "thanks"

    cli_env = {**hooks_env, "TUNERY_BASE_URL": f"{url}/v1", "TUNERY_API_KEY": hooks_env["TEST_KEY"], "COLUMNS": "250"}
    assert endpoint.id in [e["id"] for e in json.loads(tunery(cli_env, "webhooks", "list", "--json"))]
    assert "delivered" in tunery(cli_env, "webhooks", "deliveries", endpoint.id)

    result = client.webhooks.test(endpoint.id, event_type="fine_tuning.job.failed")
    assert (result.status_code, result.webhook_endpoint_id) == (200, endpoint.id)
    sample = client.webhooks.unwrap(receiver.received[-1][0], receiver.received[-1][1], secret=endpoint.signing_secret)
    assert sample.type == "fine_tuning.job.failed"
    assert "HTTP 200" in tunery(cli_env, "webhooks", "test", endpoint.id)
    created = tunery(cli_env, "webhooks", "create", receiver.url, "--name", "from-cli")
    assert "whsec_" in created

    # another project sees none of it
    other_key = tunery(hooks_env, "keys", "create", "--project", "elsewhere")
    other = openai.OpenAI(base_url=f"{url}/v1", api_key=other_key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.webhooks.retrieve(endpoint.id)
    assert other.webhooks.list().data == []


def test_an_undelivered_event_is_delivered_after_a_restart(
    hooks_env: dict[str, str], start_server: Callable, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.answers = [503]
    proc, url = start_server(hooks_env, tmp_path / "server.log")
    client = _client(url, hooks_env)
    endpoint = client.webhooks.create(name="ci", url=receiver.url, event_types=ALL_JOB_EVENTS)
    training = upload(client, colour_jsonl(12), "train.jsonl")
    job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=training, hyperparameters={"n_epochs": 1})
    client.fine_tuning.jobs.cancel(job.id)
    receiver.wait(lambda got: len(got) >= 1, "a first attempt")

    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    refused = len(receiver.received)
    receiver.answers = [200]
    _, url = start_server(hooks_env, tmp_path / "server2.log")
    receiver.wait(lambda got: any(status == 200 for *_, status in got), "a delivery after the restart")

    assert len(receiver.received) > refused
    assert len({headers["webhook-id"] for _, headers, _ in receiver.received}) == 1
    body, headers, _ = receiver.received[-1]
    event = _client(url, hooks_env).webhooks.unwrap(body, headers, secret=endpoint.signing_secret)
    assert (event.type, event.data.id) == ("fine_tuning.job.cancelled", job.id)
