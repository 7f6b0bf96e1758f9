"""Reinforcement fine-tuning requests: ``method.reinforcement`` on every layout, checked at create (grader, its
item fields against the files, the validation file, the RFT hyperparameters), echoed in OpenAI's schema."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.unit.api.conftest import Api
from tests.unit.api.openapi_contract import assert_matches
from tests.unit.api.test_fine_tuning_api import chat_jsonl, create, upload

GRADER = {
    "type": "string_check",
    "name": "exact",
    "operation": "eq",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
}


def rft_jsonl(n: int = 10, **extra: Any) -> bytes:
    rows = [
        {"messages": [{"role": "user", "content": f"What is {i} + 1?"}], "answer": str(i + 1), **extra}
        for i in range(n)
    ]
    return "\n".join(json.dumps(r) for r in rows).encode() + b"\n"


@pytest.fixture
def files(api: Api) -> tuple[str, str]:
    return upload(api, rft_jsonl()), upload(api, rft_jsonl(10))


def rft_body(files: tuple[str, str], **section: Any) -> dict[str, Any]:
    return {
        "model": "tiny-llama",
        "training_file": files[0],
        "validation_file": files[1],
        "method": {"type": "reinforcement", "reinforcement": {"grader": GRADER, **section}},
    }


def test_uploaded_rft_file_is_processed_as_reinforcement_data(api: Api) -> None:
    file_id = upload(api, rft_jsonl())
    assert api.store.get(api.project_id, file_id).format == "reinforcement"


def test_create_echoes_auto_hyperparameters_and_the_grader_in_openais_schema(api: Api, files: tuple[str, str]) -> None:
    response = create(api, rft_body(files))
    assert response.status_code == 200, response.text
    job = response.json()
    assert_matches("FineTuningJob", job)
    openai.types.fine_tuning.FineTuningJob.model_validate(job, strict=True)
    section = job["method"]["reinforcement"]
    assert job["method"]["type"] == "reinforcement"
    assert section["grader"] == GRADER
    assert section["hyperparameters"] == {
        "n_epochs": "auto",
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
        "eval_interval": "auto",
        "eval_samples": "auto",
        "compute_multiplier": "auto",
        "reasoning_effort": "default",
    }
    assert job["hyperparameters"] == {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}


@pytest.mark.parametrize("prefix", ["/openai/v1", "/openai/fine_tuning/jobs?api-version=2025-04-01-preview"])
def test_every_layout_takes_reinforcement(api: Api, files: tuple[str, str], prefix: str) -> None:
    body = rft_body(files, hyperparameters={"compute_multiplier": 1.5, "eval_samples": 2, "reasoning_effort": "low"})
    url = f"{prefix}/fine_tuning/jobs" if "?" not in prefix else prefix
    response = api.client.post(url, headers={"api-key": api.key}, json=body)
    assert response.status_code in (200, 201), response.text
    hyper = response.json()["method"]["reinforcement"]["hyperparameters"]
    assert hyper["compute_multiplier"] == 1.5
    assert hyper["eval_samples"] == 2
    assert hyper["reasoning_effort"] == "low"


def test_response_format_is_accepted_in_both_shapes_and_echoed(api: Api, files: tuple[str, str]) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    for response_format in (
        {"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}},
        {"type": "json_schema", "name": "a", "schema": schema, "strict": True},
    ):
        job = create(api, rft_body(files, response_format=response_format)).json()
        assert job["method"]["reinforcement"]["response_format"] == response_format


def bad_cases() -> list[tuple[str, Any, str]]:
    missing_field = {**GRADER, "reference": "{{item.solution}}"}
    judge = {
        "type": "score_model",
        "name": "judge",
        "model": "no-such-model",
        "input": [{"role": "user", "content": "Score {{sample.output_text}}"}],
    }
    in_multi = {"type": "multi", "name": "m", "graders": {"j": judge, "e": GRADER}, "calculate_output": "j + e"}
    return [
        ("a grader naming a field the rows lack", {"grader": missing_field}, "method.reinforcement.grader.reference"),
        ("a model grader judged by no model", {"grader": judge}, "method.reinforcement.grader.model"),
        (
            "a multi's model grader judged by no model",
            {"grader": in_multi},
            "method.reinforcement.grader.graders.j.model",
        ),
        (
            "a model grader reading a field the rows lack",
            {"grader": {**judge, "model": "tiny-llama", "input": [{"role": "user", "content": "{{item.solution}}"}]}},
            "method.reinforcement.grader.input[0].content",
        ),
        ("no grader", {"grader": None}, "method.reinforcement.grader"),
        ("a malformed grader", {"grader": {**GRADER, "operation": "sort"}}, "method.reinforcement.grader.operation"),
        (
            "compute_multiplier too large",
            {"hyperparameters": {"compute_multiplier": 11}},
            "method.reinforcement.hyperparameters.compute_multiplier",
        ),
        (
            "compute_multiplier zero",
            {"hyperparameters": {"compute_multiplier": 0}},
            "method.reinforcement.hyperparameters.compute_multiplier",
        ),
        (
            "an unknown reasoning effort",
            {"hyperparameters": {"reasoning_effort": "extreme"}},
            "method.reinforcement.hyperparameters.reasoning_effort",
        ),
        ("a bad response_format", {"response_format": {"type": "xml"}}, "method.reinforcement.response_format"),
        (
            "a response_format whose schema is not a JSON schema",
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "objekt"}}}},
            "method.reinforcement.response_format.json_schema.schema",
        ),
    ]


def test_model_graders_judged_by_a_served_model_are_accepted(api: Api, files: tuple[str, str]) -> None:
    judge = {"type": "score_model", "name": "judge", "model": "tiny-llama", "range": [0, 10],
             "input": [{"role": "user", "content": "Is {{sample.output_text}} equal to {{item.answer}}?"}]}  # fmt: skip
    multi = {"type": "multi", "name": "both", "graders": {"judge": judge, "exact": GRADER},
             "calculate_output": "judge / 10 + exact"}  # fmt: skip
    for grader in (judge, multi):
        response = create(api, rft_body(files, grader=grader))
        assert response.status_code == 200, response.text
        assert response.json()["method"]["reinforcement"]["grader"] == grader


@pytest.mark.parametrize(("what", "section", "param"), bad_cases(), ids=[c[0] for c in bad_cases()])
def test_bad_reinforcement_requests_name_the_param(
    api: Api, files: tuple[str, str], what: str, section: dict[str, Any], param: str
) -> None:
    body = rft_body(files)
    body["method"]["reinforcement"].update(section)
    response = create(api, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert len(error["message"]) > 20


def test_a_validation_file_is_required(api: Api, files: tuple[str, str]) -> None:
    body = rft_body(files)
    del body["validation_file"]
    response = create(api, body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "validation_file"


def test_chat_data_cannot_train_reinforcement(api: Api, files: tuple[str, str]) -> None:
    body = rft_body(files)
    body["training_file"] = upload(api, chat_jsonl())
    response = create(api, body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "training_file"


def test_an_rft_file_with_an_assistant_last_turn_fails_upload_with_its_line(api: Api) -> None:
    rows = rft_jsonl().decode().splitlines()
    bad = json.loads(rows[3])
    bad["messages"].append({"role": "assistant", "content": "4"})
    rows[3] = json.dumps(bad)
    file_id = upload(api, ("\n".join(rows) + "\n").encode())
    record = api.store.get(api.project_id, file_id)
    assert record.status.value == "error"
    assert record.problems[0].line == 4
    assert record.problems[0].code == "invalid_last_message"


def test_a_validation_file_over_1000_prompts_is_refused(api: Api, files: tuple[str, str]) -> None:
    row = json.dumps({"messages": [{"role": "user", "content": "q"}], "answer": "1"}, separators=(",", ":"))
    big = upload(api, ((row + "\n") * 1001).encode())  # small rows: the test app takes 64 KiB uploads
    response = create(api, rft_body((files[0], big)))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "validation_file"
    assert "1,000" in error["message"]
