"""Uploads, checkpoint permissions and webhook endpoints in-process: OpenAI's schemas and SDK types, errors.

Run alone: ``.venv/bin/pytest tests/unit/api/test_stack_api.py``.
"""

from __future__ import annotations

import hashlib

import openai.types
import openai.types.webhooks as webhook_types
from openai.types.uploads import UploadPart

from tests.unit.api.conftest import Api
from tests.unit.api.openapi_contract import assert_matches
from tests.unit.api.test_files_api import chat_jsonl


def test_an_upload_in_parts_becomes_a_processed_file(api: Api) -> None:
    data = chat_jsonl(12)
    created = api.client.post(
        "/v1/uploads", headers=api.headers(),
        json={"bytes": len(data), "filename": "t.jsonl", "mime_type": "application/jsonl", "purpose": "fine-tune"},
    ).json()  # fmt: skip
    assert_matches("Upload", created)
    openai.types.Upload.model_validate(created, strict=True)
    half = len(data) // 2
    parts = []
    for piece in (data[:half], data[half:]):
        part = api.client.post(f"/v1/uploads/{created['id']}/parts", headers=api.headers(), files={"data": piece})
        assert part.status_code == 200, part.text
        assert_matches("UploadPart", part.json())
        UploadPart.model_validate(part.json(), strict=True)
        parts.append(part.json()["id"])

    wrong = api.client.post(f"/v1/uploads/{created['id']}/complete", headers=api.headers(),
                            json={"part_ids": list(reversed(parts)), "md5": hashlib.md5(data).hexdigest()})  # fmt: skip
    assert wrong.status_code == 400, "parts in the wrong order give other bytes: the md5 says so"
    assert wrong.json()["error"]["param"] == "md5"
    done = api.client.post(f"/v1/uploads/{created['id']}/complete", headers=api.headers(),
                           json={"part_ids": parts, "md5": hashlib.md5(data).hexdigest()}).json()  # fmt: skip
    assert done["status"] == "completed"
    assert_matches("Upload", done)
    shown = api.client.get(f"/v1/files/{done['file']['id']}", headers=api.headers()).json()
    assert shown["status"] == "processed"
    assert shown["bytes"] == len(data)

    too_big = api.client.post("/v1/uploads", headers=api.headers(), json={"bytes": 10**12, "filename": "t.jsonl",
                              "mime_type": "application/jsonl", "purpose": "fine-tune"})  # fmt: skip
    assert too_big.status_code == 413
    bad_purpose = api.client.post("/v1/uploads", headers=api.headers(), json={"bytes": 10, "filename": "t.jsonl",
                                  "mime_type": "application/jsonl", "purpose": "batch"})  # fmt: skip
    assert bad_purpose.status_code == 400
    assert bad_purpose.json()["error"]["param"] == "purpose"


def test_webhook_endpoint_objects_match_the_sdk(api: Api) -> None:
    body = {"name": "ci", "url": "http://127.0.0.1:9/hook", "event_types": ["fine_tuning.job.succeeded"]}
    created = api.client.post("/v1/webhook_endpoints", headers=api.headers(), json=body).json()
    webhook_types.WebhookEndpointWithSecret.model_validate(created, strict=True)
    assert created["signing_secret"].startswith("whsec_")
    listed = api.client.get("/v1/webhook_endpoints", headers=api.headers()).json()
    assert "signing_secret" not in listed["data"][0]
    webhook_types.WebhookEndpoint.model_validate(listed["data"][0], strict=True)
    unknown = api.client.post("/v1/webhook_endpoints", headers=api.headers(), json={**body, "event_types": ["x.y"]})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["param"] == "event_types"
    not_http = api.client.post("/v1/webhook_endpoints", headers=api.headers(), json={**body, "url": "ftp://x"})
    assert not_http.json()["error"]["param"] == "url"
    # server-side request forgery: only 127.0.0.1 is allowed in these tests (TUNERY_WEBHOOKS__ALLOWED_HOSTS)
    for private in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.5/hook", "http://[::1]:9/hook"):
        refused = api.client.post("/v1/webhook_endpoints", headers=api.headers(), json={**body, "url": private})
        assert refused.status_code == 400, private
        assert_matches("ErrorResponse", refused.json())
        assert refused.json()["error"]["param"] == "url"
    moved = api.client.post(f"/v1/webhook_endpoints/{created['id']}", headers=api.headers(),
                            json={"url": "http://169.254.169.254/"})  # fmt: skip
    assert (moved.status_code, moved.json()["error"]["param"]) == (400, "url")
    assert "link-local" in moved.json()["error"]["message"]
    untyped = api.client.post("/v1/webhook_endpoints", headers=api.headers(), json={**body, "event_types": "x"})
    assert (untyped.status_code, untyped.json()["error"]["param"]) == (400, "event_types")
    assert api.client.post("/v1/webhook_endpoints", headers=api.headers(), json={**body, "name": 5}).status_code == 400
    tested = api.client.post(f"/v1/webhook_endpoints/{created['id']}/test", headers=api.headers(), json={}).json()
    webhook_types.WebhookEndpointTestResult.model_validate(tested, strict=True)
    assert tested["status_code"] == 0  # nobody listens on port 9
    log = api.client.get(f"/v1/webhook_endpoints/{created['id']}/deliveries", headers=api.headers()).json()
    assert [(d["state"], d["attempts"]) for d in log["data"]] == [("failed", 1)]
    assert (
        api.client.get(f"/v1/webhook_endpoints/{created['id']}", headers=api.headers(api.other_key)).status_code == 404
    )
    deleted = api.client.delete(f"/v1/webhook_endpoints/{created['id']}", headers=api.headers()).json()
    webhook_types.DeletedWebhookEndpoint.model_validate(deleted, strict=True)


def test_checkpoint_permissions_need_an_admin_key_and_an_own_checkpoint(api: Api) -> None:
    member = api.client.get("/v1/fine_tuning/checkpoints/some-model/permissions", headers=api.headers())
    assert member.status_code == 403
    assert member.json()["error"]["type"] == "permission_error"
    admin = api.services.keys.create("team", admin=True).secret
    missing = api.client.post("/v1/fine_tuning/checkpoints/some-model/permissions", headers=api.headers(admin),
                              json={"project_ids": ["intruder"]})  # fmt: skip
    assert missing.status_code == 404
    empty = api.client.get(
        "/v1/fine_tuning/checkpoints/ftchkpt-" + "0" * 32 + "/permissions", headers=api.headers(admin)
    )
    assert empty.status_code == 404
    assert_matches("ErrorResponse", empty.json())


def test_upload_bodies_are_parsed_at_the_edge(api: Api) -> None:
    """Wrong types and missing fields are 400s naming the param, in OpenAI's error shape, before any work."""
    body = {"bytes": 10, "filename": "t.jsonl", "mime_type": "application/jsonl", "purpose": "fine-tune"}
    cases = [
        ("/v1/uploads", {**body, "bytes": "10"}, "bytes"),
        ("/v1/uploads", {**body, "bytes": 0}, "bytes"),
        ("/v1/uploads", {**body, "bytes": True}, "bytes"),
        ("/v1/uploads", {k: v for k, v in body.items() if k != "filename"}, "filename"),
        ("/v1/uploads", {**body, "mime_type": ["a"]}, "mime_type"),
        ("/v1/files/import", {"filename": "t.jsonl"}, "content_url"),
        ("/v1/files/import", {"content_url": 5, "filename": "t.jsonl"}, "content_url"),
    ]
    upload = api.client.post("/v1/uploads", headers=api.headers(), json=body).json()
    complete = f"/v1/uploads/{upload['id']}/complete"
    cases += [
        (complete, {"part_ids": "part-1"}, "part_ids"),
        (complete, {"part_ids": []}, "part_ids"),
        (complete, {"part_ids": [1]}, "part_ids[0]"),
        (complete, {"part_ids": ["part-1"], "md5": 5}, "md5"),
        (complete, {}, "part_ids"),
    ]
    for path, sent, param in cases:
        answer = api.client.post(path, headers=api.headers(), json=sent)
        assert answer.status_code == 400, (path, sent, answer.text)
        assert_matches("ErrorResponse", answer.json())
        assert answer.json()["error"]["param"] == param, (path, sent)
    cancelled = api.client.post(f"/v1/uploads/{upload['id']}/cancel", headers=api.headers()).json()
    assert cancelled["status"] == "cancelled", "the refused completes left the upload pending"


def test_an_eval_run_that_ends_calls_its_subscribed_endpoint(api: Api) -> None:
    """A run graded by the eval runner and a canceled run each send their event, in OpenAI's webhook schema,
    verified by the official client's ``unwrap``; the test action sends an eval sample too."""
    import json

    from tests.unit.api.test_evals_api import create_eval, run_all
    from tests.unit.storage.test_webhooks import Receiver

    receiver = Receiver([200])
    try:
        types = ["eval.run.succeeded", "eval.run.failed", "eval.run.canceled"]
        hook = api.client.post("/v1/webhook_endpoints", headers=api.headers(),
                               json={"name": "evals", "url": receiver.url, "event_types": types}).json()  # fmt: skip
        eval_id = create_eval(api).json()["id"]
        rows = [{"item": {"question": "a", "expected": "yes"}, "sample": {"output_text": "yes"}}]
        body = {"data_source": {"type": "jsonl", "source": {"type": "file_content", "content": rows}}}
        graded = api.client.post(f"/v1/evals/{eval_id}/runs", json=body, headers=api.headers()).json()
        canceled = api.client.post(f"/v1/evals/{eval_id}/runs", json=body, headers=api.headers()).json()
        api.client.post(f"/v1/evals/{eval_id}/runs/{canceled['id']}/cancel", headers=api.headers())
        run_all(api)
        while api.services.outbox.run_once("test"):
            pass
        client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9", max_retries=0)
        events = {}
        for raw, headers in receiver.received:
            event = client.webhooks.unwrap(raw, headers, secret=hook["signing_secret"])
            schema = "WebhookEvalRunSucceeded" if event.type == "eval.run.succeeded" else "WebhookEvalRunCanceled"
            assert_matches(schema, json.loads(raw))
            events[event.type] = event.data.id
        assert events == {"eval.run.succeeded": graded["id"], "eval.run.canceled": canceled["id"]}

        tested = api.client.post(f"/v1/webhook_endpoints/{hook['id']}/test", headers=api.headers(),
                                 json={"event_type": "eval.run.failed"}).json()  # fmt: skip
        assert tested["status_code"] == 200
        sample = client.webhooks.unwrap(*receiver.received[-1], secret=hook["signing_secret"])
        assert (sample.type, sample.data.id) == ("eval.run.failed", "evalrun_test")
    finally:
        receiver.server.shutdown()
