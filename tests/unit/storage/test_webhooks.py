"""The outbox: a job's terminal move writes its event in the same transaction; senders claim, retry, give up.

Deliveries go to a real local HTTP receiver and are checked with the official ``openai`` package's
``client.webhooks.unwrap``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from tests.unit.storage.test_evals import make_eval, make_run
from tests.unit.storage.test_jobs import make_job
from tunery.domain.evals import RunStatus
from tunery.domain.jobs import JobStatus
from tunery.domain.pagination import PageRequest
from tunery.domain.projects import Project
from tunery.domain.webhooks import DeliveryState, Target
from tunery.services.outbound import UrlPolicy
from tunery.services.outbox import OutboxRules, OutboxSender, TrackerFailed
from tunery.services.webhooks import WebhookService
from tunery.storage import Database
from tunery.storage.evals import EvalStore
from tunery.storage.events import EventStore
from tunery.storage.jobs import JobStore
from tunery.storage.webhooks import WebhookStore

# The receivers listen on 127.0.0.1, which the default policy refuses (SSRF); these tests allow it explicitly.
LOCAL = UrlPolicy(allow_private=True)


class Receiver:
    """Answers each POST with the next status of ``answers`` (the last one repeats) and keeps what came."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.received: list[tuple[bytes, dict[str, str]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.received.append((body, {k.lower(): v for k, v in self.headers.items()}))
                status = receiver.answers[min(len(receiver.received) - 1, len(receiver.answers) - 1)]
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"boom")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver([500, 500, 200])
    yield found
    found.server.shutdown()


def _setup(db: Database, project: Project, url: str, rules: OutboxRules) -> tuple[WebhookService, OutboxSender, str]:
    store = WebhookStore(db)

    def tracker(delivery: object) -> str:
        raise TrackerFailed("tracker is down")

    sender = OutboxSender(store, EventStore(db), tracker, rules, LOCAL)
    service = WebhookService(store, sender.send, LOCAL)
    endpoint = service.create(project.id, name="ci", url=url, event_types=["fine_tuning.job.succeeded"])
    return service, sender, endpoint.secret


def test_job_end_is_delivered_signed_with_one_id_after_retries(
    db: Database, project: Project, receiver: Receiver
) -> None:
    service, sender, secret = _setup(db, project, receiver.url, OutboxRules(retry_base_s=0.0))
    jobs = JobStore(db)
    job = make_job(project, status=JobStatus.RUNNING)
    jobs.insert(job)
    now = int(time.time())
    assert jobs.transition(job.id, JobStatus.SUCCEEDED, expect={JobStatus.RUNNING}, finished_at=now) is not None
    for _ in range(3):
        assert sender.run_once("s1") == 1
    assert sender.run_once("s1") == 0  # delivered: nothing left to send

    assert len(receiver.received) == 3
    ids = {headers["webhook-id"] for _, headers in receiver.received}
    assert len(ids) == 1
    client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9", max_retries=0)
    body, headers = receiver.received[-1]
    event = client.webhooks.unwrap(body, headers, secret=secret)
    assert event.type == "fine_tuning.job.succeeded"
    assert (event.data.id, event.id, event.created_at) == (job.id, ids.pop(), now)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body, headers, secret="whsec_" + "QUJD" * 8)

    log = service.deliveries(project.id, service.list(project.id, PageRequest(limit=10)).data[0].id, PageRequest(10))
    (row,) = log.data
    assert (row.state, row.attempts, row.last_status_code) == (DeliveryState.DELIVERED, 3, 200)


def test_move_that_is_not_a_first_terminal_writes_nothing(db: Database, project: Project, receiver: Receiver) -> None:
    _, sender, _ = _setup(db, project, receiver.url, OutboxRules())
    jobs = JobStore(db)
    job = make_job(project, status=JobStatus.RUNNING)
    jobs.insert(job)
    jobs.transition(job.id, JobStatus.PAUSING, expect={JobStatus.RUNNING})
    # a failed job's event: the endpoint subscribed to succeeded only
    jobs.transition(job.id, JobStatus.FAILED, expect={JobStatus.PAUSING})
    assert sender.run_once("s1") == 0
    assert receiver.received == []


def test_gives_up_after_the_window_and_claims_are_exclusive(db: Database, project: Project) -> None:
    dead = Receiver([503])
    try:
        _, sender, _ = _setup(db, project, dead.url, OutboxRules(retry_base_s=0.0, give_up_after_s=0.0))
        jobs = JobStore(db)
        job = make_job(project, status=JobStatus.RUNNING)
        jobs.insert(job)
        jobs.transition(job.id, JobStatus.SUCCEEDED, expect={JobStatus.RUNNING})
        store = WebhookStore(db)
        first = store.claim_due("a", time.time(), lease_s=60)
        assert len(first) == 1
        assert store.claim_due("b", time.time(), lease_s=60) == []  # held by "a"'s lease
        assert store.claim_due("b", time.time() + 61, lease_s=60) != []  # "a" died: the lease ran out
        assert not store.record_attempt(
            first[0].id, "a", now=time.time(), state=DeliveryState.DELIVERED, next_attempt_at=0,
            status_code=200, response="", error=None,
        )  # fmt: skip
        assert sender.run_once("c") == 0  # "b" holds it now
        rows = store.deliveries(project.id, PageRequest(limit=5))
        assert rows.data[0].state is DeliveryState.PENDING
        assert sender.run_once("c") == 0
        store.record_attempt(
            first[0].id, "b", now=time.time(), state=DeliveryState.PENDING, next_attempt_at=0,
            status_code=None, response=None, error="x",
        )  # fmt: skip
        assert sender.run_once("c") == 1  # 503 once more, and the window (0 s) is over: given up
        (row,) = store.deliveries(project.id, PageRequest(limit=5)).data
        assert (row.state, row.attempts, row.last_status_code) == (DeliveryState.FAILED, 2, 503)
        assert dead.received[0][1]["webhook-id"] == row.event_id
    finally:
        dead.server.shutdown()


def test_a_killed_senders_webhook_is_free_after_one_post_timeout_but_its_tracker_run_is_not(
    db: Database, project: Project, receiver: Receiver
) -> None:
    """A server killed mid-attempt: the webhook row is retried once one POST could have ended (timeout + 30 s),
    not after the tracker lease; the tracker row stays with its sender as long as a tracker run may take."""
    rules = OutboxRules(timeout_s=5.0, tracker_timeout_s=600.0)
    _setup(db, project, receiver.url, rules)
    jobs = JobStore(db)
    job = make_job(project, status=JobStatus.RUNNING, integrations=[{"type": "mlflow", "mlflow": {"project": "x"}}])
    jobs.insert(job)
    jobs.transition(job.id, JobStatus.SUCCEEDED, expect={JobStatus.RUNNING})
    store = WebhookStore(db)
    now = time.time()
    held = store.claim_due("killed", now, rules.lease_s, tracker_lease_s=rules.tracker_lease_s)
    assert {d.target for d in held} == {Target.WEBHOOK, Target.MLFLOW}
    assert store.claim_due("next", now + rules.lease_s - 1, rules.lease_s, tracker_lease_s=rules.tracker_lease_s) == []
    retaken = store.claim_due("next", now + rules.lease_s + 1, rules.lease_s, tracker_lease_s=rules.tracker_lease_s)
    assert [d.target for d in retaken] == [Target.WEBHOOK]
    assert store.claim_due("next", now + rules.tracker_lease_s - 1, rules.lease_s, exclude=[retaken[0].id]) == []
    later = now + rules.tracker_lease_s + 1
    assert [d.target for d in store.claim_due("last", later, rules.lease_s, exclude=[retaken[0].id])] == [Target.MLFLOW]


def test_a_failing_tracker_is_a_warning_event(db: Database, project: Project, receiver: Receiver) -> None:
    receiver.answers = [200]
    _, sender, _ = _setup(db, project, receiver.url, OutboxRules())
    jobs = JobStore(db)
    job = make_job(project, status=JobStatus.RUNNING, integrations=[{"type": "mlflow", "mlflow": {"project": "x"}}])
    jobs.insert(job)
    jobs.transition(job.id, JobStatus.SUCCEEDED, expect={JobStatus.RUNNING})
    while sender.run_once("s1"):
        pass
    events = EventStore(db).list(job.id, PageRequest(limit=10)).data
    assert [e.level.value for e in events] == ["warn"]
    assert "mlflow" in events[0].message
    assert "tracker is down" in events[0].message
    rows = WebhookStore(db).deliveries(project.id, PageRequest(limit=10), job_id=job.id).data
    assert {(r.target, r.state) for r in rows} == {
        (Target.MLFLOW, DeliveryState.FAILED),
        (Target.WEBHOOK, DeliveryState.DELIVERED),
    }


def test_concurrent_senders_never_claim_the_same_row(db: Database, project: Project) -> None:
    """Two senders (threads here; processes share the database the same way) claim disjoint rows."""
    service = WebhookService(WebhookStore(db), lambda *_: (200, "", None), LOCAL)
    service.create(project.id, name="a", url="http://127.0.0.1:9/", event_types=["fine_tuning.job.failed"])
    jobs = JobStore(db)
    for _ in range(30):
        job = make_job(project, status=JobStatus.RUNNING)
        jobs.insert(job)
        jobs.transition(job.id, JobStatus.FAILED, expect={JobStatus.RUNNING})
    claimed: dict[str, list[str]] = {"a": [], "b": []}

    def sender(name: str) -> None:
        store = WebhookStore(db)
        while batch := store.claim_due(name, time.time(), lease_s=600, limit=3):
            claimed[name] += [d.id for d in batch]

    threads = [threading.Thread(target=sender, args=(name,)) for name in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    everything = claimed["a"] + claimed["b"]
    assert len(everything) == 30
    assert len(set(everything)) == 30


def test_a_sender_refuses_a_private_address_at_delivery_time(
    db: Database, project: Project, receiver: Receiver
) -> None:
    """An endpoint saved while it was allowed (or whose DNS changed since) is not called once it is refused:
    the attempt fails with the reason, the receiver gets nothing."""
    _setup(db, project, receiver.url, OutboxRules(retry_base_s=0.0))  # saved under the permissive policy
    strict = OutboxSender(WebhookStore(db), EventStore(db), lambda _: "", OutboxRules(retry_base_s=0.0))
    jobs = JobStore(db)
    job = make_job(project, status=JobStatus.RUNNING)
    jobs.insert(job)
    jobs.transition(job.id, JobStatus.SUCCEEDED, expect={JobStatus.RUNNING})
    try:
        assert strict.run_once("s1") == 1
    finally:
        strict.close()
    assert receiver.received == []
    (row,) = WebhookStore(db).deliveries(project.id, PageRequest(limit=5)).data
    assert row.state is DeliveryState.PENDING
    assert row.last_status_code is None
    assert "127.0.0.1" in (row.last_error or "")
    assert "loopback" in (row.last_error or "")


def test_an_eval_run_end_is_an_eval_run_event_to_subscribed_endpoints(
    db: Database, project: Project, receiver: Receiver
) -> None:
    """Succeeded (completed), failed and canceled runs each send their ``eval.run.*`` event, written with the
    status change; ``client.webhooks.unwrap`` parses them as the SDK's eval run events. A move between
    non-terminal statuses, or a second terminal move, sends nothing."""
    receiver.answers = [200]
    store = WebhookStore(db)
    sender = OutboxSender(store, EventStore(db), lambda _: "", OutboxRules(), LOCAL)
    service = WebhookService(store, sender.send, LOCAL)
    types = ["eval.run.succeeded", "eval.run.failed", "eval.run.canceled"]
    endpoint = service.create(project.id, name="evals", url=receiver.url, event_types=types)
    service.create(project.id, name="jobs only", url=receiver.url, event_types=["fine_tuning.job.failed"])
    evals = EvalStore(db)
    ev = make_eval(project)
    evals.insert_eval(ev)
    runs = [make_run(ev, n) for n in range(3)]
    for run in runs:
        evals.insert_run(run)
    active = {RunStatus.QUEUED, RunStatus.IN_PROGRESS}
    assert evals.transition(runs[0].id, RunStatus.IN_PROGRESS, expect={RunStatus.QUEUED}) is not None
    assert sender.run_once("s1") == 0  # not an end
    evals.transition(runs[0].id, RunStatus.COMPLETED, expect=active, finished_at=1_800_000_000)
    evals.transition(runs[1].id, RunStatus.FAILED, expect=active, finished_at=1_800_000_001)
    evals.transition(runs[2].id, RunStatus.CANCELED, expect=active, finished_at=1_800_000_002)
    assert evals.transition(runs[2].id, RunStatus.CANCELED, expect=active) is None  # already ended
    while sender.run_once("s1"):
        pass
    sender.close()

    client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9", max_retries=0)
    got = [client.webhooks.unwrap(body, headers, secret=endpoint.secret) for body, headers in receiver.received]
    assert sorted((e.type, e.data.id, e.created_at) for e in got) == [
        ("eval.run.canceled", runs[2].id, 1_800_000_002),
        ("eval.run.failed", runs[1].id, 1_800_000_001),
        ("eval.run.succeeded", runs[0].id, 1_800_000_000),
    ]
    assert {type(e).__name__ for e in got} == {
        "EvalRunSucceededWebhookEvent", "EvalRunFailedWebhookEvent", "EvalRunCanceledWebhookEvent",
    }  # fmt: skip
    log = service.deliveries(project.id, endpoint.id, PageRequest(limit=10)).data
    assert sorted(d.event_type for d in log) == sorted(types)
    assert {(d.state, d.job_id) for d in log} == {(DeliveryState.DELIVERED, None)}
