"""The Files API through the official ``openai`` client, on all three URL layouts, against a real server.

Run alone: ``.venv/bin/pytest tests/integration/test_files.py``
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.ceilings import ceiling
from tests.integration.harness import Server

pytestmark = pytest.mark.integration

ClientFactory = Callable[[Server], openai.OpenAI]


def chat_jsonl(n: int, *, topic: str = "colours") -> bytes:
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "You answer briefly."},
                    {"role": "user", "content": f"Question {i} about {topic}?"},
                    {"role": "assistant", "content": f"Answer {i} about {topic}."},
                ]
            }
        )
        for i in range(n)
    ]
    return ("\n".join(lines) + "\n").encode()


def bad_jsonl() -> bytes:
    good = chat_jsonl(12).decode().splitlines()
    good[4] = json.dumps({"messages": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "hi"}]})
    good[8] = '{"messages": [ this is not json'
    return ("\n".join(good) + "\n").encode()


def openai_layout(server: Server) -> openai.OpenAI:
    # Strict validation turns any drift from the SDK's types into APIResponseValidationError.
    return openai.OpenAI(
        base_url=f"{server.url}/v1", api_key=server.key, max_retries=0, _strict_response_validation=True
    )


def azure_v1_layout(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/openai/v1/", api_key=server.key, max_retries=0)


def azure_dated_layout(server: Server) -> openai.OpenAI:
    return openai.AzureOpenAI(azure_endpoint=server.url, api_version="2024-10-21", api_key=server.key, max_retries=0)


LAYOUTS = pytest.mark.parametrize(
    "make_client",
    [openai_layout, azure_v1_layout, azure_dated_layout],
    ids=["openai", "azure-v1", "azure-dated"],
)


@LAYOUTS
def test_upload_wait_retrieve_content_delete(server: Server, make_client: ClientFactory) -> None:
    client = make_client(server)
    payload = chat_jsonl(12)
    created = client.files.create(file=("train.jsonl", payload), purpose="fine-tune")
    assert created.id.startswith("file-")
    assert created.filename == "train.jsonl"
    assert created.bytes == len(payload)
    assert created.purpose == "fine-tune"

    done = client.files.wait_for_processing(created.id, poll_interval=0.2, max_wait_seconds=ceiling(10))
    assert done.status == "processed", done.status_details
    stats = (done.model_extra or {})["validation"]["statistics"]
    assert stats["examples"] == 12
    assert stats["trainable_tokens"] > 0
    assert stats["tokens_min"] <= stats["tokens_mean"] <= stats["tokens_max"]

    assert client.files.retrieve(created.id).id == created.id
    assert client.files.content(created.id).content == payload

    deleted = client.files.delete(created.id)
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)


@LAYOUTS
def test_list_auto_paginates_over_pages(server: Server, make_client: ClientFactory) -> None:
    client = make_client(server)
    mine = {client.files.create(file=(f"p{i}.jsonl", chat_jsonl(10)), purpose="fine-tune").id for i in range(5)}
    first_page = client.files.list(limit=2)
    assert len(first_page.data) == 2
    assert first_page.has_more is True
    seen = [f.id for f in client.files.list(limit=2)]  # the SDK follows `after` across pages
    assert mine <= set(seen)
    assert len(seen) == len(set(seen)), "a file appeared on two pages"
    created = [f.created_at for f in client.files.list(limit=2)]
    assert created == sorted(created, reverse=True), "newest first by default"
    for file_id in mine:
        client.files.delete(file_id)


@LAYOUTS
def test_bad_file_reports_line_numbers(server: Server, make_client: ClientFactory) -> None:
    client = make_client(server)
    created = client.files.create(file=("bad.jsonl", bad_jsonl()), purpose="fine-tune")
    done = client.files.wait_for_processing(created.id, poll_interval=0.2, max_wait_seconds=ceiling(10))
    assert done.status == "error"
    assert done.status_details is not None
    assert "Line 5" in done.status_details
    assert "robot" in done.status_details
    assert "Line 9" in done.status_details
    problems = (client.files.retrieve(created.id).model_extra or {})["validation"]["problems"]
    assert [p["line"] for p in problems] == [5, 9]


def test_missing_key_is_401_in_error_shape(server: Server) -> None:
    for path in ("/v1/files", "/openai/v1/files", "/openai/files?api-version=2024-10-21"):
        response = httpx.get(server.url + path)
        assert response.status_code == 401
        error = response.json()["error"]
        assert set(error) >= {"message", "type", "param", "code"}
    wrong = httpx.get(server.url + "/v1/files", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).files.list()


def test_key_accepted_as_api_key_header(server: Server) -> None:
    response = httpx.get(server.url + "/openai/v1/files", headers={"api-key": server.key})
    assert response.status_code == 200
    assert response.headers["apim-request-id"] == response.headers["x-request-id"]


def test_other_projects_file_is_404(server: Server) -> None:
    mine = openai_layout(server).files.create(file=("mine.jsonl", chat_jsonl(10)), purpose="fine-tune")
    intruder = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.other_key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        intruder.files.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        intruder.files.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        intruder.files.content(mine.id)
    assert mine.id not in {f.id for f in intruder.files.list()}


def test_dated_layout_requires_api_version(server: Server) -> None:
    response = httpx.get(server.url + "/openai/files", headers={"api-key": server.key})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "api-version"
    assert "api-version" in error["message"]


def test_dated_create_is_201_with_location(server: Server) -> None:
    response = httpx.post(
        server.url + "/openai/files?api-version=2024-10-21",
        headers={"api-key": server.key},
        files={"file": ("loc.jsonl", chat_jsonl(10), "application/json")},
        data={"purpose": "fine-tune"},
    )
    assert response.status_code == 201
    body = response.json()
    assert response.headers["location"].endswith(f"/openai/files/{body['id']}")
    assert body["status"] in {"pending", "running", "processed"}


def test_bom_file_is_accepted(server: Server) -> None:
    client = openai_layout(server)
    created = client.files.create(file=("bom.jsonl", b"\xef\xbb\xbf" + chat_jsonl(10)), purpose="fine-tune")
    done = client.files.wait_for_processing(created.id, poll_interval=0.2, max_wait_seconds=ceiling(10))
    assert done.status == "processed", done.status_details


def test_unknown_purpose_is_400_naming_param(server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        openai_layout(server).files.create(file=("x.jsonl", chat_jsonl(10)), purpose="batch")  # type: ignore[arg-type]
    assert caught.value.param == "purpose"
