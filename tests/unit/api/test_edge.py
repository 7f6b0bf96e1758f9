"""The request edge: unstorable strings are a 400 naming the param before anything is stored, and bodies are
bounded per route (413 in the API's error shape, chunked bodies counted as they arrive).

Run alone: ``.venv/bin/pytest tests/unit/api/test_edge.py``
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from tests.unit.api.conftest import MAX_UPLOAD_BYTES, Api
from tests.unit.api.test_fine_tuning_api import chat_jsonl, upload
from tunery.api.edge import BODY_LIMITS

ARM = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/a/deployments"
LONE = "\\ud83d"  # a JSON escape of a lone high surrogate: valid JSON, not encodable text


def post_raw(api: Api, path: str, raw: str, method: str = "POST") -> Any:
    headers = {**api.headers(), "content-type": "application/json"}
    return api.client.request(method, path, headers=headers, content=raw.encode())


def assert_error(response: Any, status: int, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error
    return dict(error)


def test_a_lone_surrogate_in_job_metadata_is_refused_and_nothing_is_stored(api: Api) -> None:
    train = upload(api, chat_jsonl())
    raw = f'{{"model": "tiny-llama", "training_file": "{train}", "metadata": {{"x": "{LONE}"}}}}'
    error = assert_error(post_raw(api, "/v1/fine_tuning/jobs", raw), 400, "metadata.x")
    assert "surrogate" in error["message"]
    listed = api.client.get("/v1/fine_tuning/jobs", headers=api.headers())
    assert listed.status_code == 200
    assert listed.json()["data"] == []


@pytest.mark.parametrize(
    ("path", "raw", "param"),
    [
        ("/v1/chat/completions", f'{{"model": "tiny-llama", "messages": [{{"role": "user", "content": "{LONE}"}}]}}',
         "messages[0].content"),
        ("/v1/chat/completions", f'{{"model": "tiny{LONE}", "messages": [{{"role": "user", "content": "hi"}}]}}',
         "model"),
        (f"{ARM}/d1?api-version=2024-10-01", f'{{"properties": {{"model": {{"name": "x{LONE}"}}}}}}',
         "properties.model.name"),
        ("/v1/deployments", f'{{"model": "tiny{LONE}"}}', "model"),
        ("/v1/chat/completions", f'{{"model": "tiny-llama", "messages": [], "{LONE}": 1}}', "\\ud83d"),
    ],
)  # fmt: skip
def test_lone_surrogates_anywhere_in_a_json_body_are_a_400(api: Api, path: str, raw: str, param: str) -> None:
    method = "PUT" if path.startswith(ARM) else "POST"
    assert_error(post_raw(api, path, raw, method), 400, param)
    assert api.services.deployments.list(api.project_id) == []


def test_invalid_json_names_no_param(api: Api) -> None:
    error = assert_error(post_raw(api, "/v1/chat/completions", '{"model": '), 400, None)
    assert "not valid JSON" in error["message"]


def test_a_chat_body_over_its_limit_is_a_413_declared_or_chunked(api: Api) -> None:
    limit = BODY_LIMITS["chat"]
    big = json.dumps({"model": "tiny-llama", "messages": [{"role": "user", "content": "x" * (limit + 10)}]})
    error = assert_error(post_raw(api, "/v1/chat/completions", big), 413, None)
    assert error["code"] == "requestTooLarge"
    assert str(limit) in error["message"]

    def pieces() -> Iterator[bytes]:  # no Content-Length: the body is counted as it arrives
        data = big.encode()
        for start in range(0, len(data), 64 * 1024):
            yield data[start : start + 64 * 1024]

    chunked = api.client.post(
        "/v1/chat/completions", headers={**api.headers(), "content-type": "application/json"}, content=pieces()
    )
    assert_error(chunked, 413, None)
    assert api.engine.requests == []


def test_a_chunked_upload_over_the_limit_is_refused_as_it_arrives(api: Api) -> None:
    boundary = "XyZ"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.jsonl"\r\n\r\n'
    ).encode()
    sent = 0

    def pieces() -> Iterator[bytes]:
        nonlocal sent
        yield head
        for _ in range(160):  # 160 x 16 KiB = 2.5 MiB: over the 64 KiB file limit plus the 1 MiB form slack
            sent += 16 * 1024
            yield b"x" * (16 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = api.client.post(
        "/v1/files",
        headers={**api.headers(), "content-type": f"multipart/form-data; boundary={boundary}"},
        content=pieces(),
    )
    error = assert_error(response, 413, "file")
    assert f"accepts at most {MAX_UPLOAD_BYTES + 1024 * 1024} bytes" in error["message"]
    assert api.client.get("/v1/files", headers=api.headers()).json()["data"] == []


def test_a_deployment_body_over_its_small_limit_is_a_413(api: Api) -> None:
    raw = json.dumps({"properties": {"model": {"name": "tiny-llama"}}, "pad": "x" * BODY_LIMITS["deployments"]})
    assert_error(post_raw(api, f"{ARM}/d1?api-version=2024-10-01", raw, "PUT"), 413, None)


def chat(api: Api, **change: Any) -> Any:
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], **change}
    return api.client.post("/v1/chat/completions", headers=api.headers(), json=body)


@pytest.mark.parametrize(
    ("change", "param"),
    [({"model": 5}, "model"), ({"model": ["a"]}, "model"), ({"seed": 10**30}, "seed"), ({"n": 0}, "n")],
)
def test_bad_chat_values_are_400s_naming_the_param(api: Api, change: dict[str, Any], param: str) -> None:
    assert_error(chat(api, **change), 400, param)


def test_a_prompt_over_the_context_says_so_without_negative_numbers(api: Api) -> None:
    error = assert_error(chat(api, messages=[{"role": "user", "content": "lorem ipsum " * 1500}]), 400, "messages")
    assert error["code"] == "context_length_exceeded"
    assert "-" not in error["message"].replace("context_length", ""), error["message"]


@pytest.mark.parametrize("capacity", ["10**30", "1e30", '"abc"', "[1]", "0"])
def test_bad_capacities_are_400s(api: Api, capacity: str) -> None:
    value = str(10**30) if capacity == "10**30" else capacity
    arm = f'{{"sku": {{"name": "standard", "capacity": {value}}}, "properties": {{"model": {{"name": "tiny-llama"}}}}}}'
    assert_error(post_raw(api, f"{ARM}/d1?api-version=2024-10-01", arm, "PUT"), 400, "sku.capacity")
    assert_error(post_raw(api, "/v1/deployments/d1", arm, "PUT"), 400, "sku.capacity")
    legacy = f'{{"model": "tiny-llama", "scale_settings": {{"capacity": {value}}}}}'
    assert_error(post_raw(api, "/v1/deployments", legacy), 400, "scale_settings.capacity")


def test_quota_429s_do_not_advise_a_retry(api: Api) -> None:
    for _ in range(8):
        upload(api, chat_jsonl())
    response = api.client.post(
        "/v1/files", headers=api.headers(), files={"file": ("d.jsonl", chat_jsonl())}, data={"purpose": "fine-tune"}
    )
    assert_error(response, 429, "file")
    assert "retry-after" not in response.headers


def test_a_long_request_id_is_not_echoed(api: Api) -> None:
    short = api.client.get("/v1/models", headers={**api.headers(), "x-request-id": "abc-123"})
    assert short.headers["x-request-id"] == "abc-123"
    long = api.client.get("/v1/models", headers={**api.headers(), "x-request-id": "a" * 5000})
    assert len(long.headers["x-request-id"]) <= 128


@pytest.mark.parametrize("name", ["日本語.jsonl", "😀train.jsonl", 'say "hi".jsonl'])
def test_any_file_name_can_be_downloaded(api: Api, name: str) -> None:
    data = chat_jsonl()
    response = api.client.post(
        "/v1/files", headers=api.headers(), files={"file": (name, data)}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 200, response.text
    download = api.client.get(f"/v1/files/{response.json()['id']}/content", headers=api.headers())
    assert download.status_code == 200
    assert download.content == data
    disposition = download.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="')
    stored = response.json()["filename"]  # httpx sends a quote in a multipart name as %22
    assert "filename*=UTF-8''" + quote(stored, safe="") in disposition
    assert disposition.count('"') == 2, "quotes in the name are not copied into the quoted fallback"


def test_odd_static_paths_are_404s(api: Api) -> None:
    from fastapi.testclient import TestClient

    from tunery.portal.routes import router as portal_router

    api.client.app.include_router(portal_router)  # type: ignore[attr-defined]
    client = TestClient(api.client.app)  # type: ignore[arg-type]
    for path in ("/static/%00", "/static/" + "a" * 5000, "/static/" + "a/" * 3000):
        assert client.get(path).status_code == 404, path


def test_a_row_stored_with_a_lone_surrogate_can_still_be_read_back(api: Api) -> None:
    """Rows written before the edge refused such strings (or by another path) never break a list."""
    train = upload(api, chat_jsonl())
    created = api.client.post(
        "/v1/fine_tuning/jobs", headers=api.headers(), json={"model": "tiny-llama", "training_file": train}
    )
    job_id = created.json()["id"]
    with api.db.transaction() as conn:  # as an older version stored it: JSON escapes the surrogate
        marker = "?" if api.db.is_sqlite else "%s"
        conn.exec_driver_sql(f'UPDATE jobs SET metadata = \'{{"x": "a\\ud83d"}}\' WHERE id = {marker}', (job_id,))
    for path in ("/v1/fine_tuning/jobs", f"/v1/fine_tuning/jobs/{job_id}"):
        response = api.client.get(path, headers=api.headers())
        assert response.status_code == 200, response.text
    assert response.json()["metadata"] == {"x": "a\ufffd"}
    assert api.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=api.headers()).status_code == 200


def test_openapi_has_unique_operation_ids_and_declares_arm_path_parameters(api: Api) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Duplicate Operation ID")  # FastAPI only warns about one
        spec = api.client.get("/openapi.json").json()
    ids = [op["operationId"] for path in spec["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))
    arm = next(p for p in spec["paths"] if p.startswith("/subscriptions/") and p.endswith("{name}"))
    for method in ("put", "get", "delete"):
        declared = {p["name"] for p in spec["paths"][arm][method]["parameters"] if p["in"] == "path"}
        assert declared == {"subscription", "resource_group", "account", "name"}
