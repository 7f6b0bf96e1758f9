"""The fine-tuning jobs API in-process: request checks, dialects, the state machine, events, models.

No trainer runs here (no worker); job states are moved with the store where a test needs a worker's
step. Run alone: ``.venv/bin/pytest tests/unit/api/test_fine_tuning_api.py``
"""

from __future__ import annotations

import json
from typing import Any

import openai.types.fine_tuning
import pytest

from tests.unit.api.conftest import Api
from tests.unit.api.openapi_contract import assert_matches
from tunery.domain.jobs import JobStatus
from tunery.storage import JobStore


def chat_jsonl(n: int = 10) -> bytes:
    rows = [
        {"messages": [{"role": "user", "content": f"hello {i}"}, {"role": "assistant", "content": f"hi {i}"}]}
        for i in range(n)
    ]
    return "\n".join(json.dumps(r) for r in rows).encode() + b"\n"


def preference_jsonl(n: int = 10) -> bytes:
    rows = [
        {
            "input": {"messages": [{"role": "user", "content": f"q {i}"}]},
            "preferred_output": [{"role": "assistant", "content": f"good {i}"}],
            "non_preferred_output": [{"role": "assistant", "content": f"bad {i}"}],
        }
        for i in range(n)
    ]
    return "\n".join(json.dumps(r) for r in rows).encode() + b"\n"


def upload(api: Api, data: bytes, *, key: str | None = None) -> str:
    response = api.client.post(
        "/v1/files", headers=api.headers(key), files={"file": ("d.jsonl", data)}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def create(api: Api, body: dict[str, Any], *, prefix: str = "/v1", key: str | None = None) -> Any:
    return api.client.post(f"{prefix}/fine_tuning/jobs", headers=api.headers(key), json=body)


@pytest.fixture
def train_id(api: Api) -> str:
    return upload(api, chat_jsonl())


def test_create_returns_pending_job_matching_openai_schema(api: Api, train_id: str) -> None:
    response = create(api, {"model": "tiny-llama", "training_file": train_id, "seed": 105, "suffix": "colours"})
    assert response.status_code == 200, response.text
    job = response.json()
    assert_matches("FineTuningJob", job)
    openai.types.fine_tuning.FineTuningJob.model_validate(job, strict=True)
    assert job["status"] == "validating_files"
    assert job["seed"] == 105
    assert job["hyperparameters"] == {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    assert job["method"]["type"] == "supervised"
    assert job["user_provided_suffix"] == "colours"
    assert job["result_files"] == []
    assert job["error"] is None


def test_dated_layout_speaks_azure(api: Api, train_id: str) -> None:
    body = {"model": "tiny-llama", "training_file": train_id, "trainingType": "globalstandard"}
    response = create(api, body, prefix="/openai")
    assert response.status_code == 400  # api-version is required there
    response = api.client.post(
        "/openai/fine_tuning/jobs?api-version=2025-04-01-preview", headers={"api-key": api.key}, json=body
    )
    assert response.status_code == 201
    job = response.json()
    assert response.headers["location"].endswith(f"/openai/fine_tuning/jobs/{job['id']}")
    assert job["status"] == "pending"
    assert job["hyperparameters"]["n_epochs"] == -1
    assert job["trainingType"] == "GlobalStandard"
    assert job["organization_id"] is None


def test_seed_is_generated_when_absent(api: Api, train_id: str) -> None:
    job = create(api, {"model": "tiny-llama", "training_file": train_id}).json()
    assert isinstance(job["seed"], int)
    assert 0 <= job["seed"] <= 2_147_483_647


BAD_REQUESTS = [
    ({"model": "gpt-99"}, "model"),
    ({"training_file": "file-00000000000000000000000000000000"}, "training_file"),
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"n_epochs": 51}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"batch_size": 257}}, "hyperparameters.batch_size"),
    ({"hyperparameters": {"learning_rate_multiplier": 0}}, "hyperparameters.learning_rate_multiplier"),
    ({"hyperparameters": {"n_epochs": True}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"warmup": 3}}, "hyperparameters.warmup"),
    (
        {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": "many"}}}},
        "method.supervised.hyperparameters.n_epochs",
    ),
    ({"method": {"type": "reinforcement"}}, "method.reinforcement.grader"),
    ({"method": {"type": "magic"}}, "method.type"),
    ({"method": {"type": "dpo"}}, "training_file"),  # chat data cannot train DPO
    ({"suffix": "has.dots"}, "suffix"),
    ({"suffix": "x" * 41}, "suffix"),
    ({"seed": -1}, "seed"),
    ({"seed": 2_147_483_648}, "seed"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"integrations": [{"type": "slack"}]}, "integrations[0]"),
    ({"trainingType": "Premium"}, "trainingType"),
    ({"early_stopping": {"patience": 3}}, "early_stopping.patience"),
    ({"early_stopping": {"min_delta": "small"}}, "early_stopping.min_delta"),
    ({"early_stopping": {"when": "soon"}}, "early_stopping.when"),
    ({"early_stopping": "yes"}, "early_stopping"),
    ({"early_stopping": True}, "early_stopping"),  # it watches the validation loss: there is no validation file
    ({"distributed": {"processes": 0}}, "distributed.processes"),
    ({"distributed": {"processes": "two"}}, "distributed.processes"),
    ({"distributed": {"nodes": 2}}, "distributed.nodes"),
    ({"distributed": 2}, "distributed"),
    ({"lora": {"rank": 0}}, "lora.rank"),
    ({"lora": {"rank": 8.5}}, "lora.rank"),
    ({"lora": {"alpha": 2000}}, "lora.alpha"),
    ({"lora": {"target_modules": []}}, "lora.target_modules"),
    ({"lora": {"target_modules": ["q_proj", "no spaces"]}}, "lora.target_modules"),
    ({"lora": {"dropout": 0.1}}, "lora.dropout"),
    ({"lora": 8}, "lora"),
    ({"max_seq_len": 10}, "max_seq_len"),
    ({"max_seq_len": 9000}, "max_seq_len"),
    ({"warmup_ratio": 0.9}, "warmup_ratio"),
    ({"warmup_ratio": "some"}, "warmup_ratio"),
]


@pytest.mark.parametrize(("change", "param"), BAD_REQUESTS, ids=[p for _, p in BAD_REQUESTS])
def test_bad_requests_name_the_param(api: Api, train_id: str, change: dict[str, Any], param: str) -> None:
    body = {"model": "tiny-llama", "training_file": train_id, **change}
    response = create(api, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert len(error["message"]) > 20


def test_early_stopping_is_on_for_auto_epochs_with_validation_data_and_otherwise_only_when_asked(
    api: Api, train_id: str
) -> None:
    valid_id = upload(api, chat_jsonl(10))
    body = {"model": "tiny-llama", "training_file": train_id, "validation_file": valid_id}

    assert create(api, body).json()["early_stopping"] == {"patience": 1, "min_delta": 0.001}
    explicit = {**body, "hyperparameters": {"n_epochs": 4}}
    assert "early_stopping" not in create(api, explicit).json(), "an explicit n_epochs runs them all"
    asked = create(api, {**explicit, "early_stopping": {"patience": 2, "min_delta": 0}}).json()
    assert asked["early_stopping"] == {"patience": 2, "min_delta": 0.0}
    assert "early_stopping" not in create(api, {**body, "early_stopping": False}).json()
    assert "early_stopping" not in create(api, {"model": "tiny-llama", "training_file": train_id}).json()


def test_distributed_processes_are_echoed_on_the_job(api: Api, train_id: str) -> None:
    body = {"model": "tiny-llama", "training_file": train_id}
    created = create(api, {**body, "distributed": {"processes": 2}}).json()
    assert created["distributed"] == {"processes": 2}
    fetched = api.client.get(f"/v1/fine_tuning/jobs/{created['id']}", headers=api.headers()).json()
    assert fetched["distributed"] == {"processes": 2}
    assert "distributed" not in create(api, body).json(), "absent: the worker's setting"


def test_training_extensions_are_echoed_and_their_ranges_and_defaults_published(api: Api, train_id: str) -> None:
    body = {"model": "tiny-llama", "training_file": train_id}
    given = {"lora": {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}, "max_seq_len": 256,
             "warmup_ratio": 0.1}  # fmt: skip
    created = create(api, {**body, **given}).json()
    assert {k: created[k] for k in given} == given
    fetched = api.client.get(f"/v1/fine_tuning/jobs/{created['id']}", headers=api.headers()).json()
    assert {k: fetched[k] for k in given} == given
    assert_matches("FineTuningJob", fetched)
    plain = create(api, body).json()
    assert not set(given) & set(plain), "absent: the worker's settings"

    rules = api.client.get("/v1/fine_tuning/rules", headers=api.headers()).json()
    advanced = rules["advanced"]
    assert advanced["lora_rank"] == {"min": 1, "max": 256, "integer": True, "min_exclusive": False, "default": 16}
    assert advanced["warmup_ratio"]["max"] == 0.5
    assert advanced["warmup_ratio"]["default"] == 0.0
    assert advanced["max_seq_len"]["default"] == 2048
    assert advanced["lora_target_modules"]["default"] is None  # the architecture's attention and MLP projections
    assert rules["checkpoints_kept"] == 3


def test_continuing_a_fine_tune_keeps_its_lora_shape_and_refuses_another(api: Api, train_id: str) -> None:
    from tests.unit.api.test_chat_and_deployments_api import fine_tuned_model

    parent = fine_tuned_model(api)
    refused = create(api, {"model": parent, "training_file": train_id, "lora": {"rank": 4}})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "lora"
    assert parent in error["message"]
    assert "tiny-llama" in error["message"]  # where to start instead for another shape
    continued = create(api, {"model": parent, "training_file": train_id, "max_seq_len": 256})
    assert continued.status_code == 200, continued.text
    assert continued.json()["max_seq_len"] == 256


def test_missing_model_and_bad_json(api: Api, train_id: str) -> None:
    missing = create(api, {"training_file": train_id})
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "model"
    garbled = api.client.post(
        "/v1/fine_tuning/jobs", headers={**api.headers(), "content-type": "application/json"}, content=b"{nope"
    )
    assert garbled.status_code == 400


def test_file_with_errors_and_same_validation_file_are_refused(api: Api, train_id: str) -> None:
    bad = upload(api, b'{"messages": []}\n' * 12)
    response = create(api, {"model": "tiny-llama", "training_file": bad})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_training_file"
    assert "Line 1" in response.json()["error"]["message"]
    same = create(api, {"model": "tiny-llama", "training_file": train_id, "validation_file": train_id})
    assert same.json()["error"]["param"] == "validation_file"


def test_dpo_accepts_beta_in_both_places_and_echoes_tolerated_fields(api: Api) -> None:
    prefs = upload(api, preference_jsonl())
    nested = create(
        api,
        {
            "model": "tiny-llama",
            "training_file": prefs,
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}},
        },
    ).json()
    assert nested["method"]["dpo"]["hyperparameters"]["beta"] == 0.2
    loose = create(
        api,
        {
            "model": "tiny-llama",
            "training_file": prefs,
            "prompt_loss_weight": 0.1,
            "method": {"type": "dpo", "dpo": {"beta": 0.3, "l2_multiplier": 0.1}},
        },
    ).json()
    assert loose["method"]["dpo"]["hyperparameters"]["beta"] == 0.3
    assert loose["method"]["dpo"]["l2_multiplier"] == 0.1
    assert loose["prompt_loss_weight"] == 0.1


def test_state_machine_refusals_are_409(api: Api, train_id: str) -> None:
    job = create(api, {"model": "tiny-llama", "training_file": train_id}).json()
    base = f"/openai/v1/fine_tuning/jobs/{job['id']}"
    pause = api.client.post(f"{base}/pause", headers=api.headers())
    assert pause.status_code == 409
    assert "pending" in pause.json()["error"]["message"]
    assert api.client.post(f"{base}/resume", headers=api.headers()).status_code == 409

    store = JobStore(api.db)
    store.transition(job["id"], JobStatus.QUEUED, expect={JobStatus.PENDING})
    store.transition(job["id"], JobStatus.RUNNING, expect={JobStatus.QUEUED})
    early = api.client.post(f"{base}/pause", headers=api.headers())
    assert early.status_code == 409
    assert "at least one step" in early.json()["error"]["message"]
    store.transition(job["id"], JobStatus.RUNNING, expect={JobStatus.RUNNING}, step=3, total_steps=9, started_at=5)
    running = api.client.get(base, headers=api.headers()).json()
    assert running["progress"] == {"step": 3, "total_steps": 9, "trained_tokens": None}
    assert running["trained_tokens"] is None, "null while the job runs"
    paused = api.client.post(f"{base}/pause", headers=api.headers())
    assert paused.status_code == 200
    assert paused.json()["status"] == "pausing"
    assert api.client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=api.headers()).json()["status"] == "running"

    cancelled = api.client.post(f"{base}/cancel", headers=api.headers())
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    again = api.client.post(f"{base}/cancel", headers=api.headers())
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "unexpectedEntityState"


def test_paused_job_resumes(api: Api, train_id: str) -> None:
    job = create(api, {"model": "tiny-llama", "training_file": train_id}).json()
    store = JobStore(api.db)
    for target, source in (
        (JobStatus.QUEUED, JobStatus.PENDING),
        (JobStatus.RUNNING, JobStatus.QUEUED),
        (JobStatus.PAUSING, JobStatus.RUNNING),
        (JobStatus.PAUSED, JobStatus.PAUSING),
    ):
        assert store.transition(job["id"], target, expect={source}) is not None
    resumed = api.client.post(f"/openai/v1/fine_tuning/jobs/{job['id']}/resume", headers=api.headers())
    assert resumed.status_code == 200
    assert resumed.json()["status"] == "resuming"
    openai_view = api.client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=api.headers()).json()
    assert openai_view["status"] == "queued"


def test_events_newest_first_and_paginated(api: Api, train_id: str) -> None:
    job = create(api, {"model": "tiny-llama", "training_file": train_id}).json()
    api.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=api.headers())
    events = api.client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=api.headers()).json()
    assert_matches("ListFineTuningJobEventsResponse", events)
    messages = [e["message"] for e in events["data"]]
    assert messages == ["Job cancelled.", f"Created fine-tuning job: {job['id']}"]
    first = api.client.get(f"/v1/fine_tuning/jobs/{job['id']}/events?limit=1", headers=api.headers()).json()
    assert first["has_more"] is True
    rest = api.client.get(
        f"/v1/fine_tuning/jobs/{job['id']}/events?limit=1&after={first['data'][0]['id']}", headers=api.headers()
    ).json()
    assert [e["message"] for e in rest["data"]] == messages[1:]
    via_post = api.client.post(f"/openai/v1/fine_tuning/jobs/{job['id']}/events", headers=api.headers())
    assert via_post.status_code == 200  # the Azure docs show POST; accepted as an alias


def test_list_jobs_with_metadata_filter_and_pages(api: Api, train_id: str) -> None:
    ids = [
        create(api, {"model": "tiny-llama", "training_file": train_id, "metadata": {"team": t}}).json()["id"]
        for t in ("red", "blue", "red")
    ]
    listing = api.client.get("/v1/fine_tuning/jobs?limit=2", headers=api.headers()).json()
    assert_matches("ListPaginatedFineTuningJobsResponse", listing)
    assert [j["id"] for j in listing["data"]] == ids[::-1][:2]
    assert listing["has_more"] is True
    red = api.client.get("/v1/fine_tuning/jobs", params={"metadata[team]": "red"}, headers=api.headers()).json()
    assert [j["id"] for j in red["data"]] == [ids[2], ids[0]]


def test_delete_is_dated_only_and_refused_while_active(api: Api, train_id: str) -> None:
    job = create(api, {"model": "tiny-llama", "training_file": train_id}).json()
    assert api.client.delete(f"/v1/fine_tuning/jobs/{job['id']}", headers=api.headers()).status_code == 404
    dated = f"/openai/fine_tuning/jobs/{job['id']}?api-version=2024-10-21"
    active = api.client.delete(dated, headers=api.headers())
    assert active.status_code == 409
    api.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=api.headers())
    assert api.client.delete(dated, headers=api.headers()).status_code == 204
    assert api.client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=api.headers()).status_code == 404


def test_other_project_sees_404(api: Api, train_id: str) -> None:
    job = create(api, {"model": "tiny-llama", "training_file": train_id}).json()
    paths = (("GET", ""), ("POST", "/cancel"), ("GET", "/events"), ("GET", "/checkpoints"), ("GET", "/metrics"))
    for method, path in paths:
        response = api.client.request(
            method, f"/v1/fine_tuning/jobs/{job['id']}{path}", headers=api.headers(api.other_key)
        )
        assert response.status_code == 404, (method, path)
    foreign_file = create(api, {"model": "tiny-llama", "training_file": train_id}, key=api.other_key)
    assert foreign_file.status_code == 400
    assert foreign_file.json()["error"]["param"] == "training_file"


def test_a_jobs_step_metrics_list_is_empty_before_training_and_bounds_its_limit(api: Api, train_id: str) -> None:
    job = create(api, {"model": "tiny-llama", "training_file": train_id}).json()
    for prefix in ("/v1", "/openai/v1"):
        listed = api.client.get(f"{prefix}/fine_tuning/jobs/{job['id']}/metrics", headers=api.headers())
        assert listed.status_code == 200
        assert (listed.json()["data"], listed.json()["has_more"]) == ([], False)
    refused = api.client.get(f"/v1/fine_tuning/jobs/{job['id']}/metrics?limit=0", headers=api.headers())
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "limit"


def test_models_list_base_models_as_fine_tunable(api: Api) -> None:
    listing = api.client.get("/v1/models", headers=api.headers()).json()
    assert_matches("ListModelsResponse", listing)
    (tiny,) = [m for m in listing["data"] if m["id"] == "tiny-llama"]
    assert tiny["capabilities"]["fine_tune"] is True
    assert api.client.get("/v1/models/tiny-llama", headers=api.headers()).json()["id"] == "tiny-llama"
    missing = api.client.get("/v1/models/nope", headers=api.headers())
    assert missing.status_code == 404
    assert missing.json()["error"]["param"] == "model"
    assert api.client.delete("/v1/models/tiny-llama", headers=api.headers()).status_code == 404


def test_the_minimum_examples_apply_to_the_training_file_at_creation_not_to_validation(api: Api, train_id: str) -> None:
    small = upload(api, chat_jsonl(4))  # processed at upload: its role is not known yet
    as_validation = create(api, {"model": "tiny-llama", "training_file": train_id, "validation_file": small})
    assert as_validation.status_code == 200, as_validation.text
    for prefix in ("/v1", "/openai/v1"):
        as_training = create(api, {"model": "tiny-llama", "training_file": small}, prefix=prefix)
        assert as_training.status_code == 400
        error = as_training.json()["error"]
        assert (error["code"], error["param"]) == ("invalid_n_examples", "training_file")
        assert "has 4 example(s), but must have at least 10 examples" in error["message"]


def test_rules_are_the_ones_the_create_request_enforces(api: Api, train_id: str) -> None:
    rules = api.client.get("/openai/v1/fine_tuning/rules", headers=api.headers()).json()
    assert rules["min_training_examples"] == 10
    epochs = rules["hyperparameters"]["n_epochs"]
    assert (epochs["min"], epochs["max"], epochs["integer"]) == (1, 50, True)
    over = {"n_epochs": epochs["max"] + 1}
    refused = create(api, {"model": "tiny-llama", "training_file": train_id, "hyperparameters": over})
    assert refused.status_code == 400
    assert f"between {epochs['min']} and {epochs['max']}" in refused.json()["error"]["message"]
    at_max = {"n_epochs": epochs["max"]}
    assert create(api, {"model": "tiny-llama", "training_file": train_id, "hyperparameters": at_max}).status_code == 200
    assert api.client.get("/v1/fine_tuning/rules").status_code == 401
