"""The Files API in-process: status codes, error envelope, dialects, pagination, quotas, recovery.

Run alone: ``.venv/bin/pytest tests/unit/api/test_files_api.py`` (PostgreSQL half needs
TUNERY_TEST_DATABASE_URL; see scripts/postgres.sh).
"""

from __future__ import annotations

import json
import time

import openai.types
import pytest

from tests.unit.api.conftest import MAX_UPLOAD_BYTES, Api
from tests.unit.api.openapi_contract import assert_matches
from tunery.domain.files import FilePurpose, FileRecord, FileStatus
from tunery.domain.ids import new_id
from tunery.services.files import blob_key


def chat_jsonl(n: int) -> bytes:
    rows = [
        {"messages": [{"role": "user", "content": f"hello {i}"}, {"role": "assistant", "content": f"hi {i}"}]}
        for i in range(n)
    ]
    return "\n".join(json.dumps(r) for r in rows).encode() + b"\n"


def upload(api: Api, data: bytes, *, prefix: str = "/v1", name: str = "t.jsonl", key: str | None = None) -> dict:
    response = api.client.post(
        f"{prefix}/files",
        headers=api.headers(key),
        files={"file": (name, data, "application/json")},
        data={"purpose": "fine-tune"},
    )
    assert response.status_code in (200, 201), response.text
    return response.json()


def test_processed_file_matches_openai_schema_and_sdk_type(api: Api) -> None:
    body = upload(api, chat_jsonl(10))
    shown = api.client.get(f"/v1/files/{body['id']}", headers=api.headers()).json()
    assert shown["status"] == "processed"
    assert_matches("OpenAIFile", shown)
    openai.types.FileObject.model_validate(shown, strict=True)
    stats = shown["validation"]["statistics"]
    assert stats["examples"] == 10
    assert stats["tokenizer"] == "tiny-llama"
    assert stats["trainable_tokens"] > 0


def test_list_and_delete_match_openai_schemas(api: Api) -> None:
    first = upload(api, chat_jsonl(10))
    listing = api.client.get("/v1/files", headers=api.headers()).json()
    assert_matches("ListFilesResponse", listing)
    assert listing["first_id"] == first["id"]
    empty = api.client.get("/v1/files", params={"purpose": "fine-tune-results"}, headers=api.headers()).json()
    assert_matches("ListFilesResponse", empty)
    assert empty["data"] == []
    deleted = api.client.delete(f"/v1/files/{first['id']}", headers=api.headers()).json()
    assert_matches("DeleteFileResponse", deleted)
    assert deleted == {"id": first["id"], "object": "file", "deleted": True}


def test_azure_layouts_show_azure_statuses(api: Api) -> None:
    created = upload(api, b'{"messages": []}\n' * 3, prefix="/openai/v1")
    assert created["status"] == "pending"  # Azure reports a fresh upload as pending
    bad = api.client.get(f"/openai/v1/files/{created['id']}", headers=api.headers()).json()
    assert bad["status"] == "error"
    assert bad["status_details"].startswith("4 problem(s) found") or "Line 1" in bad["status_details"]
    dated = api.client.get(f"/openai/files/{bad['id']}?api-version=2024-10-21", headers=api.headers()).json()
    assert dated["status"] == "error"
    assert dated["validation"]["problems"][0]["line"] == 1


def test_openai_layout_reports_pending_files_as_uploaded(api: Api) -> None:
    project_id = api.services.keys.authenticate(api.key).project_id
    record = FileRecord(
        id=new_id("file"),
        project_id=project_id,
        filename="later.jsonl",
        purpose=FilePurpose.FINE_TUNE,
        bytes=3,
        created_at=1,
        status=FileStatus.PENDING,
    )
    api.store.insert(record)
    assert api.client.get(f"/v1/files/{record.id}", headers=api.headers()).json()["status"] == "uploaded"
    assert api.client.get(f"/openai/v1/files/{record.id}", headers=api.headers()).json()["status"] == "pending"


def test_errors_use_one_envelope(api: Api) -> None:
    missing = api.client.get("/v1/files/file-00000000000000000000000000000000", headers=api.headers())
    assert missing.status_code == 404
    assert_matches("ErrorResponse", missing.json())
    assert missing.json()["error"]["param"] == "file_id"

    no_purpose = api.client.post("/v1/files", headers=api.headers(), files={"file": ("a.jsonl", b"{}")})
    assert no_purpose.status_code == 400
    assert no_purpose.json()["error"]["param"] == "purpose"

    unknown_route = api.client.get("/v1/nothing-here", headers=api.headers())
    assert unknown_route.status_code == 404
    assert_matches("ErrorResponse", unknown_route.json())

    unauthorized = api.client.get("/v1/files")
    assert unauthorized.status_code == 401
    assert unauthorized.json()["error"]["code"] == "401"


def test_bad_api_versions(api: Api) -> None:
    missing = api.client.get("/openai/files", headers=api.headers())
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "MissingApiVersionParameter"
    garbled = api.client.get("/openai/files?api-version=yesterday", headers=api.headers())
    assert garbled.status_code == 400
    assert api.client.get("/openai/v1/files?api-version=preview", headers=api.headers()).status_code == 200
    assert api.client.get("/openai/v1/files?api-version=2020-01-01", headers=api.headers()).status_code == 400


def test_upload_over_the_limit_is_413_and_leaves_nothing(api: Api) -> None:
    response = api.client.post(
        "/v1/files",
        headers=api.headers(),
        files={"file": ("big.jsonl", b"x" * (MAX_UPLOAD_BYTES + 1))},
        data={"purpose": "fine-tune"},
    )
    assert response.status_code == 413
    assert str(MAX_UPLOAD_BYTES) in response.json()["error"]["message"]
    assert api.client.get("/v1/files", headers=api.headers()).json()["data"] == []


def test_file_quota_is_429(api: Api) -> None:
    for i in range(8):
        upload(api, chat_jsonl(10), name=f"{i}.jsonl")
    response = api.client.post(
        "/v1/files", headers=api.headers(), files={"file": ("9.jsonl", chat_jsonl(10))}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "quotaExceeded"


def test_pagination_order_and_cursor(api: Api) -> None:
    ids = [upload(api, chat_jsonl(10), name=f"{i}.jsonl")["id"] for i in range(5)]
    asc = api.client.get("/v1/files", params={"order": "asc", "limit": 2}, headers=api.headers()).json()
    assert [f["id"] for f in asc["data"]] == ids[:2]
    assert asc["has_more"] is True
    rest = api.client.get(
        "/v1/files", params={"order": "asc", "limit": 10, "after": asc["last_id"]}, headers=api.headers()
    ).json()
    assert [f["id"] for f in rest["data"]] == ids[2:]
    assert rest["has_more"] is False
    bad = api.client.get("/v1/files", params={"limit": 0}, headers=api.headers())
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "limit"


def test_other_project_cannot_see_file(api: Api) -> None:
    mine = upload(api, chat_jsonl(10))
    for method, path in (("GET", ""), ("GET", "/content"), ("DELETE", "")):
        response = api.client.request(method, f"/v1/files/{mine['id']}{path}", headers=api.headers(api.other_key))
        assert response.status_code == 404, (method, path)


def test_content_round_trips_bytes(api: Api) -> None:
    data = b"\xef\xbb\xbf" + chat_jsonl(10)
    body = upload(api, data)
    response = api.client.get(f"/v1/files/{body['id']}/content", headers=api.headers())
    assert response.content == data
    assert response.headers["content-type"] == "application/octet-stream"


def test_recover_rechecks_files_left_by_a_crash(api: Api) -> None:
    project_id = api.services.keys.authenticate(api.key).project_id
    record = FileRecord(
        id=new_id("file"),
        project_id=project_id,
        filename="crash.jsonl",
        purpose=FilePurpose.FINE_TUNE,
        bytes=0,
        created_at=1,
        status=FileStatus.RUNNING,
    )
    api.blobs.write(blob_key(record), [chat_jsonl(10)])
    api.store.insert(record)
    assert api.services.files.recover() == 1
    assert api.services.files.retrieve(project_id, record.id).status is FileStatus.PROCESSED


def test_a_file_another_server_is_checking_is_left_to_it_until_its_lease_runs_out(api: Api) -> None:
    """Servers on one database: a running check under a live lease is skipped by every other server's
    ``recover``; once the lease has run out (its server died), exactly one server checks the file."""
    project_id = api.services.keys.authenticate(api.key).project_id
    record = FileRecord(
        id=new_id("file"), project_id=project_id, filename="elsewhere.jsonl", purpose=FilePurpose.FINE_TUNE,
        bytes=0, created_at=1, status=FileStatus.PENDING,
    )  # fmt: skip
    api.blobs.write(blob_key(record), [chat_jsonl(10)])
    api.store.insert(record)
    now = time.time()
    assert api.store.claim_check(record.id, now, 120.0)  # another server took it
    assert not api.store.claim_check(record.id, now, 120.0), "a live lease is never taken twice"
    assert api.services.files.recover() == 0
    api.services.files.check(record.id)  # a stray attempt skips it too
    assert api.services.files.retrieve(project_id, record.id).status is FileStatus.RUNNING

    assert api.store.renew_check(record.id, now - 1000.0, 120.0)  # that server's last renewal, long ago
    claims = [api.store.claim_check(record.id, now, 120.0) for _ in range(2)]
    assert claims == [True, False], "of two servers taking it up, one wins"
    assert api.store.renew_check(record.id, now - 1000.0, 120.0)
    assert api.services.files.recover() == 1
    assert api.services.files.retrieve(project_id, record.id).status is FileStatus.PROCESSED


@pytest.mark.parametrize("header", ["api-key", "authorization"])
def test_both_key_headers_work(api: Api, header: str) -> None:
    value = api.key if header == "api-key" else f"Bearer {api.key}"
    assert api.client.get("/openai/v1/files", headers={header: value}).status_code == 200


def test_expires_after_in_both_spellings(api: Api) -> None:
    for anchor, seconds in (
        ("expires_after[anchor]", "expires_after[seconds]"),
        ("expires_after.anchor", "expires_after.seconds"),
    ):
        response = api.client.post(
            "/v1/files",
            headers=api.headers(),
            files={"file": ("e.jsonl", chat_jsonl(10))},
            data={"purpose": "fine-tune", anchor: "created_at", seconds: "7200"},
        )
        body = response.json()
        assert body["expires_at"] == body["created_at"] + 7200
    bad = api.client.post(
        "/v1/files",
        headers=api.headers(),
        files={"file": ("e.jsonl", chat_jsonl(10))},
        data={"purpose": "fine-tune", "expires_after[anchor]": "created_at", "expires_after[seconds]": "5"},
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "expires_after.seconds"


def test_a_small_file_is_processed_at_upload_whatever_its_role(api: Api) -> None:
    """A 4-example file (a validation file, say) passes the upload checks: the 10-example minimum is a
    training file's rule, checked when a job is created (test_fine_tuning_api)."""
    body = upload(api, chat_jsonl(4))
    shown = api.client.get(f"/v1/files/{body['id']}", headers=api.headers()).json()
    assert shown["status"] == "processed", shown
    assert shown["validation"]["statistics"]["examples"] == 4


def test_a_pretty_printed_json_array_gets_one_problem_saying_so(api: Api) -> None:
    rows = json.loads("[" + ",".join(json.dumps(json.loads(line)) for line in chat_jsonl(30).splitlines()) + "]")
    for data in (json.dumps(rows, indent=2).encode(), json.dumps(rows).encode()):  # pretty-printed and one line
        assert data.count(b"\n") > 100 or b"\n" not in data
        body = upload(api, data, name="array.json")
        shown = api.client.get(f"/openai/v1/files/{body['id']}", headers=api.headers()).json()
        assert shown["status"] == "error"
        problems = shown["validation"]["problems"]
        assert [(p["line"], p["code"]) for p in problems] == [(1, "json_array")]
        assert shown["validation"]["problem_count"] == 1
        assert "this is a JSON array; JSONL needs one object per line" in problems[0]["message"]
        assert "Line 1" in shown["status_details"]
