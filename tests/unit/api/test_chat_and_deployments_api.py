"""Deployments and chat completions in-process, with the FakeEngine standing in for the model.

Response shapes are checked against OpenAI's schemas and the openai SDK's types; SSE framing is checked
line by line. Run alone: ``.venv/bin/pytest tests/unit/api/test_chat_and_deployments_api.py``
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai.types.chat
import pytest

from tests.unit.api.conftest import Api
from tests.unit.api.openapi_contract import assert_matches
from tunery.domain.ids import new_id
from tunery.domain.jobs import Hyperparameters, Job, JobStatus, Method
from tunery.domain.models import FineTunedModel
from tunery.storage import DeploymentStore, JobStore, ModelStore

ARM = "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.CognitiveServices/accounts/acct/deployments"
MESSAGES = [{"role": "user", "content": "Say hello"}]


def fine_tuned_model(api: Api, name: str = "tiny-llama.ft-abc") -> str:
    """Register a succeeded job's model with adapter files, as the worker would."""
    job = Job(
        id=new_id("ftjob"), project_id=api.project_id, created_at=1, model="tiny-llama", base_model="tiny-llama",
        training_file="file-x", validation_file=None, method=Method.SUPERVISED, hyperparameters=Hyperparameters(),
        seed=1, status=JobStatus.SUCCEEDED, fine_tuned_model=name,
    )  # fmt: skip
    JobStore(api.db).insert(job)
    key = f"adapters/{job.id}/step-1"
    for filename in ("adapter_config.json", "adapter_model.safetensors"):
        api.blobs.write(f"{key}/{filename}", [b"{}"])
    ModelStore(api.db).insert(
        FineTunedModel(id=name, project_id=api.project_id, job_id=job.id, base_model="tiny-llama",
                       parent_model=None, adapter_key=key, created_at=1)
    )  # fmt: skip
    return name


def deploy(api: Api, name: str, model: str) -> Any:
    body = {
        "sku": {"name": "standard", "capacity": 1},
        "properties": {"model": {"format": "OpenAI", "name": model, "version": "1"}},
    }
    return api.client.put(f"{ARM}/{name}?api-version=2024-10-01", headers=api.headers(), json=body)


def chat(api: Api, path: str = "/v1/chat/completions", **body: Any) -> Any:
    return api.client.post(path, headers=api.headers(), json={"messages": MESSAGES, **body})


def sse_events(response: Any) -> list[Any]:
    lines = [line for line in response.text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines), lines
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[len("data: ") :]) for line in lines[:-1]]


def test_base_model_chat_matches_schema_and_sdk(api: Api) -> None:
    response = chat(api, model="tiny-llama", temperature=0)
    assert response.status_code == 200, response.text
    body = response.json()
    assert_matches("CreateChatCompletionResponse", body)
    completion = openai.types.chat.ChatCompletion.model_validate(body)
    assert completion.choices[0].message.content == "Hello from tiny-llama"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 3


def test_streaming_chunks_and_usage(api: Api) -> None:
    api.engine.enqueue("one two three")
    response = chat(api, model="tiny-llama", stream=True, stream_options={"include_usage": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    for event in events:
        assert_matches("CreateChatCompletionStreamResponse", event)
        openai.types.chat.ChatCompletionChunk.model_validate(event)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["delta"].get("content", "") for e in events for c in e["choices"])
    assert text == "one two three"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["completion_tokens"] == 3


def test_max_tokens_stop_and_n(api: Api) -> None:
    api.engine.enqueue("a b c d e f")
    limited = chat(api, model="tiny-llama", max_tokens=2).json()
    assert limited["choices"][0]["message"]["content"] == "a b"
    assert limited["choices"][0]["finish_reason"] == "length"
    api.engine.enqueue("alpha beta STOP gamma")
    stopped = chat(api, model="tiny-llama", stop=["STOP"]).json()
    assert stopped["choices"][0]["message"]["content"] == "alpha beta "
    two = chat(api, model="tiny-llama", n=2, seed=4).json()
    assert [c["index"] for c in two["choices"]] == [0, 1]
    assert {r.params.seed for r in api.engine.requests[-2:]} == {4, 5}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": -1}, "top_p"),
        ({"n": 9}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_bad_chat_requests_name_the_param(api: Api, change: dict[str, Any], param: str) -> None:
    response = api.client.post(
        "/v1/chat/completions", headers=api.headers(), json={"model": "tiny-llama", "messages": MESSAGES, **change}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_context_overflow_is_a_clear_400(api: Api) -> None:
    response = chat(api, model="tiny-llama", max_tokens=100_000)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "maximum context length" in error["message"]


def test_unknown_model_or_deployment_is_404(api: Api) -> None:
    by_model = chat(api, model="nope")
    assert by_model.status_code == 404
    assert by_model.json()["error"]["code"] == "DeploymentNotFound"
    by_path = chat(api, path="/openai/deployments/nope/chat/completions?api-version=2024-10-21")
    assert by_path.status_code == 404
    assert by_path.json()["error"]["code"] == "DeploymentNotFound"


def test_deploy_then_chat_through_every_path(api: Api) -> None:
    model = fine_tuned_model(api)
    created = deploy(api, "my-ft", model)
    assert created.status_code == 201
    assert created.json()["properties"]["provisioningState"] == "Accepted"
    assert created.json()["type"] == "Microsoft.CognitiveServices/accounts/deployments"
    shown = api.client.get(f"{ARM}/my-ft?api-version=2024-10-01", headers=api.headers()).json()
    assert shown["properties"]["provisioningState"] == "Succeeded"
    assert shown["properties"]["model"] == {"format": "OpenAI", "name": model, "version": "1"}
    for path, extra in (
        ("/v1/chat/completions", {"model": "my-ft"}),
        ("/openai/v1/chat/completions", {"model": "my-ft"}),
        ("/openai/deployments/my-ft/chat/completions?api-version=2024-10-21", {}),
        ("/v1/chat/completions", {"model": model}),  # a fine-tuned model can be called by its id too
    ):
        response = chat(api, path=path, **extra)
        assert response.status_code == 200, (path, response.text)
        assert response.json()["choices"][0]["message"]["content"] == f"Hello from {model}"
    assert api.engine.requests[-1].adapter_dir is not None
    listing = api.client.get(f"{ARM}?api-version=2024-10-01", headers=api.headers()).json()
    assert [d["name"] for d in listing["value"]] == ["my-ft"]


def test_deleting_a_deployment_keeps_the_model_and_a_deployed_model_cannot_be_deleted(api: Api) -> None:
    model = fine_tuned_model(api)
    deploy(api, "keep", model)
    refused = api.client.delete(f"/v1/models/{model}", headers=api.headers())
    assert refused.status_code == 409
    assert "deployment" in refused.json()["error"]["message"]
    assert api.client.delete(f"{ARM}/keep?api-version=2024-10-01", headers=api.headers()).status_code == 204
    assert api.client.get(f"/v1/models/{model}", headers=api.headers()).status_code == 200
    deleted = api.client.delete(f"/v1/models/{model}", headers=api.headers())
    assert deleted.json() == {"id": model, "object": "model", "deleted": True}
    assert api.client.get(f"/v1/models/{model}", headers=api.headers()).status_code == 404


def test_deployment_limit_and_bad_bodies(api: Api) -> None:
    model = fine_tuned_model(api)
    for i in range(5):
        assert deploy(api, f"d{i}", model).status_code == 201
    over = deploy(api, "d5", model)
    assert over.status_code == 429
    assert over.json()["error"]["code"] == "quotaExceeded"
    assert deploy(api, "d0", "tiny-llama").status_code == 200  # updating an existing one is fine
    unknown = deploy(api, "x", "no-such-model")
    assert unknown.status_code == 400
    assert unknown.json()["error"]["param"] == "properties.model.name"
    missing = api.client.put(f"{ARM}/y", headers=api.headers(), json={"properties": {}})
    assert missing.json()["error"]["param"] == "properties.model.name"


def test_inactive_deployments_are_reaped_but_models_stay(api: Api) -> None:
    model = fine_tuned_model(api)
    deploy(api, "idle", model)
    deploy(api, "busy", model)
    DeploymentStore(api.db).touch(api.project_id, "idle", 0)  # last called in 1970
    reaped = api.services.deployments.reap()
    assert [d.name for d in reaped] == ["idle"]
    assert api.services.deployments.reap() == [], "another server reaping at the same time finds nothing left"
    assert api.client.get(f"{ARM}/idle", headers=api.headers()).status_code == 404
    assert api.client.get(f"{ARM}/busy", headers=api.headers()).status_code == 200
    assert api.client.get(f"/v1/models/{model}", headers=api.headers()).status_code == 200


def test_concurrent_reapers_delete_each_deployment_once(api: Api) -> None:
    """Two servers' reapers on one database: every idle deployment is reaped by exactly one of them."""
    model = fine_tuned_model(api)
    names = [f"idle-{i}" for i in range(4)]
    for name in names:
        deploy(api, name, model)
        DeploymentStore(api.db).touch(api.project_id, name, 0)
    stores = [DeploymentStore(api.db), DeploymentStore(api.db)]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda store: store.delete_inactive(1), stores))
    reaped = sorted(d.name for result in results for d in result)
    assert reaped == names


def test_data_plane_deployments(api: Api) -> None:
    model = fine_tuned_model(api)
    legacy = api.client.post(
        "/openai/deployments?api-version=2022-12-01",
        headers=api.headers(),
        json={"model": model, "scale_settings": {"scale_type": "manual", "capacity": 2}},
    )
    assert legacy.status_code == 201
    body = legacy.json()
    assert body["object"] == "deployment"
    assert body["model"] == model
    assert body["scale_settings"]["capacity"] == 2
    listed = api.client.get("/openai/v1/deployments", headers=api.headers()).json()
    assert [d["id"] for d in listed["data"]] == [body["id"]]
    assert listed["data"][0]["status"] == "succeeded"
    assert api.client.delete(f"/openai/v1/deployments/{body['id']}", headers=api.headers()).status_code == 204


def test_other_project_cannot_use_a_deployment(api: Api) -> None:
    deploy(api, "mine", fine_tuned_model(api))
    response = api.client.post(
        "/v1/chat/completions", headers=api.headers(api.other_key), json={"model": "mine", "messages": MESSAGES}
    )
    assert response.status_code == 404


def test_a_model_whose_checkpoint_is_deployed_cannot_be_deleted(api: Api) -> None:
    from tunery.domain.checkpoints import Checkpoint

    model = fine_tuned_model(api)
    job_id = ModelStore(api.db).get(api.project_id, model).job_id  # type: ignore[union-attr]
    from tunery.storage import CheckpointStore

    CheckpointStore(api.db).insert(
        Checkpoint(id=new_id("ftchkpt"), job_id=job_id, project_id=api.project_id, created_at=1, step_number=1,
                   fine_tuned_model_checkpoint=f"{model}:ckpt-step-1", adapter_key="adapters/x/step-1")
    )  # fmt: skip
    deploy(api, "ckpt", f"{model}:ckpt-step-1")
    refused = api.client.delete(f"/v1/models/{model}", headers=api.headers())
    assert refused.status_code == 409
    assert "ckpt-step-1" in refused.json()["error"]["message"]


def test_health_reports_the_engine_without_authentication(api: Api) -> None:
    assert api.client.get("/health").json()["engine"] == {"state": "not started"}
    assert chat(api, model="tiny-llama", temperature=0).status_code == 200
    health = api.client.get("/health").json()
    assert health["status"] == "ok"
    assert health["engine"] == {"isolation": "thread", "state": "running", "active_requests": 0, "adapters": None}
