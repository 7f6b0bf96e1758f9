"""Grader endpoints in-process on every layout; bodies validate against OpenAI's schemas.

Run alone: ``.venv/bin/pytest tests/unit/api/test_graders_api.py``
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.api.conftest import Api
from tests.unit.api.openapi_contract import assert_matches

LAYOUTS = ["/v1", "/openai/v1", "/openai"]
CHECK = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}


def _url(layout: str, action: str) -> str:
    suffix = "?api-version=2025-04-01-preview" if layout == "/openai" else ""
    return f"{layout}/fine_tuning/alpha/graders/{action}{suffix}"


def _post(api: Api, action: str, body: dict[str, Any], layout: str = "/v1") -> Any:
    return api.client.post(_url(layout, action), headers=api.headers(), json=body)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_validate_and_run_on_every_layout(api: Api, layout: str) -> None:
    validated = _post(api, "validate", {"grader": {**CHECK, "operation": "neq"}}, layout)
    assert validated.status_code == 200, validated.text
    assert validated.json() == {"grader": {**CHECK, "operation": "ne"}}
    assert_matches("ValidateGraderResponse", validated.json())

    ran = _post(api, "run", {"grader": CHECK, "model_sample": "Paris", "item": {"answer": "Paris"}}, layout)
    assert ran.status_code == 200, ran.text
    body = ran.json()
    assert_matches("RunGraderResponse", body)
    assert body["reward"] == 1.0
    assert body["metadata"]["name"] == "exact"
    assert body["metadata"]["type"] == "string_check"
    assert not any(v for v in body["metadata"]["errors"].values())
    assert body["metadata"]["token_usage"] is None
    assert body["model_grader_token_usage_per_model"] == {}


def test_run_text_similarity_and_multi(api: Api) -> None:
    grader = {
        "type": "text_similarity",
        "name": "sim",
        "input": "{{sample.output_text}}",
        "reference": "the cat sat",
        "evaluation_metric": "rouge_1",
    }
    body = _post(api, "run", {"grader": grader, "model_sample": "the cat ran"}).json()
    assert_matches("RunGraderResponse", body)
    assert body["reward"] == pytest.approx(2 / 3)
    multi = {
        "type": "multi",
        "name": "combo",
        "graders": {"sim": grader, "exact": {**CHECK, "reference": "the cat ran"}},
        "calculate_output": "0.5 * sim + 0.5 * exact",
    }
    body = _post(api, "run", {"grader": multi, "model_sample": "the cat ran"}).json()
    assert body["reward"] == pytest.approx(5 / 6)
    assert body["metadata"]["scores"] == {"sim": pytest.approx(2 / 3), "exact": 1.0}
    assert body["sub_rewards"] == body["metadata"]["scores"]


def test_run_python_grader_errors_are_in_metadata(api: Api) -> None:
    grader = {"type": "python", "name": "py", "source": "def grade(sample, item):\n    raise KeyError('nope')\n"}
    ran = _post(api, "run", {"grader": grader, "model_sample": "x"})
    assert ran.status_code == 200, ran.text
    assert_matches("RunGraderResponse", ran.json())
    errors = ran.json()["metadata"]["errors"]
    assert errors["python_grader_runtime_error"] is True
    assert "KeyError" in errors["python_grader_runtime_error_details"]
    good = {"type": "python", "name": "py", "source": "def grade(sample, item):\n    return len(item['w']) / 4\n"}
    assert _post(api, "run", {"grader": good, "model_sample": "x", "item": {"w": "abc"}}).json()["reward"] == 0.75


def test_score_model_is_judged_by_a_served_model(api: Api) -> None:
    grader = {
        "type": "score_model",
        "name": "judge",
        "model": "tiny-llama",
        "input": [{"role": "user", "content": "Is '{{sample.output_text}}' the capital of {{item.country}}?"}],
        "range": [0, 10],
    }
    api.engine.enqueue('{"steps": [], "result": 7}')
    ran = _post(api, "run", {"grader": grader, "model_sample": "Paris", "item": {"country": "France"}})
    assert ran.status_code == 200, ran.text
    body = ran.json()
    assert_matches("RunGraderResponse", body)
    assert body["reward"] == 7.0
    meta = body["metadata"]
    assert meta["sampled_model_name"] == "tiny-llama"
    usage = body["model_grader_token_usage_per_model"]["tiny-llama"]
    assert usage["total_tokens"] == meta["token_usage"] > 0
    assert usage["prompt_tokens"] + usage["completion_tokens"] == usage["total_tokens"]
    prompt = api.engine.requests[-1]
    assert prompt.params.temperature == 0.0

    api.engine.enqueue("no idea")
    unparsed = _post(api, "run", {"grader": grader, "model_sample": "Paris", "item": {"country": "France"}}).json()
    assert unparsed["reward"] == 0.0
    assert unparsed["metadata"]["errors"]["model_grader_parse_error"] is True


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"grader": {**CHECK, "type": "regex"}}, "grader.type"),
        ({"grader": {**CHECK, "operation": "startswith"}}, "grader.operation"),
        ({"grader": {**CHECK, "input": "{{ answer }}"}}, "grader.input"),
        ({"grader": {"type": "multi", "name": "m", "graders": {"a": CHECK}, "calculate_output": "a +"}},
         "grader.calculate_output"),
        ({"grader": {"type": "multi", "name": "m", "graders": {"a": CHECK}, "calculate_output": "a + b"}},
         "grader.calculate_output"),
        ({"grader": {"type": "label_model", "name": "l", "model": "tiny-llama", "input": [], "labels": ["a"],
                     "passing_labels": ["a"]}}, "grader.type"),
        ({"grader": {"type": "score_model", "name": "s", "model": "gpt-4o",
                     "input": [{"role": "user", "content": "x"}]}}, "grader.model"),
        ({"grader": {"type": "text_similarity", "name": "s", "input": "a", "reference": "b",
                     "evaluation_metric": "cosine"}}, "grader.evaluation_metric"),
        ({}, "grader"),
    ],
)  # fmt: skip
def test_bad_graders_are_400_naming_the_param(api: Api, body: dict[str, Any], param: str) -> None:
    for action in ("validate", "run"):
        response = _post(api, action, {**body, "model_sample": "x"})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param
        assert error["message"]
        assert_matches("ErrorResponse", response.json())


def test_run_needs_a_string_sample(api: Api) -> None:
    missing = _post(api, "run", {"grader": CHECK})
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "model_sample"
    wrong = _post(api, "run", {"grader": CHECK, "model_sample": 3})
    assert wrong.json()["error"]["param"] == "model_sample"
    assert _post(api, "run", {"grader": CHECK, "model_sample": "x", "item": [1]}).json()["error"]["param"] == "item"


def test_missing_item_field_at_run_is_an_error_flag(api: Api) -> None:
    body = _post(api, "run", {"grader": CHECK, "model_sample": "Paris", "item": {"other": 1}}).json()
    assert body["reward"] == 0.0
    assert body["metadata"]["errors"]["invalid_variable_error"] is True


def test_graders_need_a_key(api: Api) -> None:
    assert api.client.post(_url("/v1", "validate"), json={"grader": CHECK}).status_code == 401
