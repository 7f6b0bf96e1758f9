"""The Evals API in-process: evals CRUD, runs executed by the eval runner on the FakeEngine, output items,
cancel, bad input naming its ``param`` — every /v1 body checked against OpenAI's schemas.

Run alone: ``.venv/bin/pytest tests/unit/api/test_evals_api.py``
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.unit.api.conftest import Api
from tests.unit.api.openapi_contract import assert_matches
from tunery.bootstrap import build_eval_executor

ITEM_SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "expected": {"type": "string"}, "label": {"type": "string"}},
    "required": ["question", "expected"],
}
CRITERION = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
             "reference": "{{item.expected}}", "operation": "eq"}  # fmt: skip
TEMPLATE = {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]}
ROWS = [
    {"item": {"question": "Q1", "expected": "Hello from tiny-llama"}},
    {"item": {"question": "Q2", "expected": "Goodbye"}},
    {"item": {"question": "Q3", "expected": "Hello from tiny-llama"}},
]


def create_eval(api: Api, criteria: list[dict[str, Any]] | None = None, prefix: str = "/v1") -> Any:
    body = {"name": "greeting", "metadata": {"team": "a"},
            "data_source_config": {"type": "custom", "item_schema": ITEM_SCHEMA, "include_sample_schema": True},
            "testing_criteria": criteria or [CRITERION]}  # fmt: skip
    return api.client.post(f"{prefix}/evals", json=body, headers=api.headers())


def completions(rows: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    source = {"type": "completions", "model": "tiny-llama", "input_messages": TEMPLATE,
              "source": {"type": "file_content", "content": rows},
              "sampling_params": {"temperature": 0, "max_completions_tokens": 16}}  # fmt: skip
    return {"name": "base", "data_source": {**source, **changes}}


def run_all(api: Api) -> None:
    executor = build_eval_executor(api.settings, api.services)
    while executor.run_next("test-runner", stale_after=60):
        pass


def test_eval_crud_and_schemas(api: Api) -> None:
    created = create_eval(api)
    assert created.status_code == 201, created.text
    body = created.json()
    assert_matches("Eval", body)
    assert body["data_source_config"]["schema"]["properties"]["item"] == ITEM_SCHEMA
    assert body["data_source_config"]["schema"]["required"] == ["item", "sample"]
    assert body["testing_criteria"][0]["id"].startswith("exact-")
    eval_id = body["id"]
    listed = api.client.get("/v1/evals", headers=api.headers()).json()
    assert_matches("EvalList", listed)
    assert [e["id"] for e in listed["data"]] == [eval_id]
    assert listed["first_id"] == listed["last_id"] == eval_id
    updated = api.client.post(f"/v1/evals/{eval_id}", json={"name": "renamed"}, headers=api.headers()).json()
    assert updated["name"] == "renamed"
    assert updated["metadata"] == {"team": "a"}
    assert api.client.get(f"/v1/evals/{eval_id}", headers=api.headers(api.other_key)).status_code == 404
    for prefix, query in (("/openai/v1", ""), ("/openai", "?api-version=2025-04-01-preview")):
        same = api.client.get(f"{prefix}/evals/{eval_id}{query}", headers=api.headers())
        assert same.json()["name"] == "renamed"
    deleted = api.client.delete(f"/v1/evals/{eval_id}", headers=api.headers()).json()
    assert deleted == {"object": "eval.deleted", "deleted": True, "eval_id": eval_id}
    empty = api.client.get("/v1/evals", headers=api.headers()).json()
    assert_matches("EvalList", empty)
    assert empty["first_id"] == ""


@pytest.mark.parametrize(
    ("criterion", "param"),
    [
        ({**CRITERION, "type": "regex_check"}, "testing_criteria[0].type"),
        ({**CRITERION, "operation": "contains"}, "testing_criteria[0].operation"),
        ({**CRITERION, "reference": "{{item.missing}}"}, "testing_criteria[0].reference"),
        ({"type": "multi", "name": "m", "graders": {"a": CRITERION}, "calculate_output": "a"},
         "testing_criteria[0].type"),
        ({"type": "text_similarity", "name": "t", "input": "{{sample.output_text}}", "reference": "x",
          "evaluation_metric": "fuzzy_match"}, "testing_criteria[0].pass_threshold"),
    ],
)  # fmt: skip
def test_bad_criteria_are_400_naming_the_param(api: Api, criterion: dict[str, Any], param: str) -> None:
    answer = create_eval(api, [criterion])
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param


def test_run_on_the_base_model_grades_every_item(api: Api) -> None:
    eval_id = create_eval(api).json()["id"]
    created = api.client.post(f"/v1/evals/{eval_id}/runs", json=completions(ROWS), headers=api.headers())
    assert created.status_code == 201, created.text
    run = created.json()
    assert_matches("EvalRun", run)
    assert run["status"] == "queued"
    assert run["data_source"]["input_messages"]["template"][0] == {
        "type": "message", "role": "user", "content": {"type": "input_text", "text": "{{item.question}}"}}  # fmt: skip
    assert run["data_source"]["sampling_params"]["max_completion_tokens"] == 16
    run_all(api)
    done = api.client.get(f"/v1/evals/{eval_id}/runs/{run['id']}", headers=api.headers()).json()
    assert_matches("EvalRun", done)
    assert done["status"] == "completed", done["error"]
    assert done["result_counts"] == {"total": 3, "errored": 0, "failed": 1, "passed": 2}
    criterion_id = api.client.get(f"/v1/evals/{eval_id}", headers=api.headers()).json()["testing_criteria"][0]["id"]
    assert done["per_testing_criteria_results"] == [{"testing_criteria": criterion_id, "passed": 2, "failed": 1}]
    usage = done["per_model_usage"][0]
    assert usage["model_name"] == "tiny-llama"
    assert usage["invocation_count"] == 3
    assert usage["completion_tokens"] == 9  # "Hello from tiny-llama": 3 words = 3 fake tokens each
    items = api.client.get(f"/v1/evals/{eval_id}/runs/{run['id']}/output_items", headers=api.headers()).json()
    assert_matches("EvalRunOutputItemList", items)
    assert [i["datasource_item_id"] for i in items["data"]] == [0, 1, 2]
    assert [i["status"] for i in items["data"]] == ["pass", "fail", "pass"]
    second = items["data"][1]
    assert second["sample"]["output"] == [{"role": "assistant", "content": "Hello from tiny-llama"}]
    assert second["sample"]["input"] == [{"role": "user", "content": "Q2"}]
    assert second["results"][0]["name"] == criterion_id
    assert second["results"][0]["score"] == 0.0
    assert second["results"][0]["passed"] is False
    one = api.client.get(
        f"/v1/evals/{eval_id}/runs/{run['id']}/output_items/{second['id']}", headers=api.headers()
    ).json()
    assert_matches("EvalRunOutputItem", one)
    failed = api.client.get(
        f"/v1/evals/{eval_id}/runs/{run['id']}/output_items?status=fail", headers=api.headers()
    ).json()
    assert [i["datasource_item_id"] for i in failed["data"]] == [1]
    runs = api.client.get(f"/v1/evals/{eval_id}/runs", headers=api.headers()).json()
    assert_matches("EvalRunList", runs)


def test_jsonl_run_grades_given_samples_and_records_per_item_errors(api: Api) -> None:
    label_check = {**CRITERION, "name": "label", "reference": "{{item.label}}"}
    eval_id = create_eval(api, [CRITERION, label_check]).json()["id"]
    rows = [
        {"item": {"question": "a", "expected": "yes", "label": "yes"}, "sample": {"output_text": "yes"}},
        {"item": {"question": "b", "expected": "yes"}, "sample": {"output_text": "yes"}},  # no label: grader error
        {"item": {"question": "c", "expected": "no", "label": "no"},
         "sample": {"choices": [{"message": {"role": "assistant", "content": "yes"}}]}},
    ]  # fmt: skip
    body = {"data_source": {"type": "jsonl", "source": {"type": "file_content", "content": rows}}}
    run = api.client.post(f"/v1/evals/{eval_id}/runs", json=body, headers=api.headers()).json()
    run_all(api)
    done = api.client.get(f"/v1/evals/{eval_id}/runs/{run['id']}", headers=api.headers()).json()
    assert_matches("EvalRun", done)
    assert done["result_counts"] == {"total": 3, "errored": 1, "failed": 1, "passed": 1}
    assert done["model"] == ""
    items = api.client.get(f"/v1/evals/{eval_id}/runs/{run['id']}/output_items", headers=api.headers()).json()
    assert_matches("EvalRunOutputItemList", items)
    errored = items["data"][1]["results"][1]
    assert errored["error"]["code"] == "invalid_variable_error"
    assert "label" in errored["error"]["message"]
    assert errored["passed"] is False


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.nope}}"}]}},
         "data_source.input_messages.template[0].content"),
        ({"source": {"type": "file_content", "content": [{"item": {"question": "q"}}]}},
         "data_source.source.content[0].item"),
        ({"model": "no-such-model"}, "data_source.model"),
        ({"sampling_params": {"max_completion_tokens": 100000}}, "data_source.sampling_params.max_completion_tokens"),
        ({"source": {"type": "file_id", "id": "file-missing"}}, "data_source.source.id"),
        ({"type": "responses"}, "data_source"),
    ],
)  # fmt: skip
def test_bad_runs_are_400_naming_the_param(api: Api, change: dict[str, Any], param: str) -> None:
    eval_id = create_eval(api).json()["id"]
    answer = api.client.post(f"/v1/evals/{eval_id}/runs", json=completions(ROWS, **change), headers=api.headers())
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"].startswith(param)


def test_cancel_and_delete_a_run(api: Api) -> None:
    eval_id = create_eval(api).json()["id"]
    run = api.client.post(f"/v1/evals/{eval_id}/runs", json=completions(ROWS), headers=api.headers()).json()
    canceled = api.client.post(f"/v1/evals/{eval_id}/runs/{run['id']}/cancel", headers=api.headers()).json()
    assert_matches("EvalRun", canceled)
    assert canceled["status"] == "canceled"
    run_all(api)  # nothing to do: the canceled run is not executed
    again = api.client.post(f"/v1/evals/{eval_id}/runs/{run['id']}", headers=api.headers()).json()
    assert again["status"] == "canceled"
    assert again["result_counts"]["total"] == 0
    gone = api.client.delete(f"/v1/evals/{eval_id}/runs/{run['id']}", headers=api.headers()).json()
    assert gone == {"object": "eval.run.deleted", "deleted": True, "run_id": run["id"]}
    assert api.client.get(f"/v1/evals/{eval_id}/runs/{run['id']}", headers=api.headers()).status_code == 404


def assert_file_matches(body: dict[str, Any]) -> None:
    """OpenAI's File object lists no ``evals`` purpose, though its upload request does (a spec conflict):
    the rest of the body must match the schema."""
    assert body["purpose"] == "evals"
    assert_matches("OpenAIFile", {**body, "purpose": "user_data"})


def upload_evals(api: Api, data: bytes, prefix: str = "/v1", query: str = "") -> dict[str, Any]:
    response = api.client.post(f"{prefix}/files{query}", files={"file": ("items.jsonl", data)},
                               data={"purpose": "evals"}, headers=api.headers())  # fmt: skip
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


def test_run_reads_an_uploaded_file(api: Api) -> None:
    eval_id = create_eval(api).json()["id"]
    data = "".join(json.dumps(row) + "\n" for row in ROWS).encode()
    uploaded = upload_evals(api, data)
    shown = api.client.get(f"/v1/files/{uploaded['id']}", headers=api.headers()).json()
    assert_file_matches(shown)
    assert (shown["purpose"], shown["status"]) == ("evals", "processed")
    listed = api.client.get("/v1/files", params={"purpose": "evals"}, headers=api.headers()).json()
    assert [f["id"] for f in listed["data"]] == [uploaded["id"]]
    body = completions(ROWS, source={"type": "file_id", "id": uploaded["id"]})
    run = api.client.post(f"/v1/evals/{eval_id}/runs", json=body, headers=api.headers())
    assert run.status_code == 201, run.text
    run_all(api)
    done = api.client.get(f"/v1/evals/{eval_id}/runs/{run.json()['id']}", headers=api.headers()).json()
    assert done["result_counts"] == {"total": 3, "errored": 0, "failed": 1, "passed": 2}
    assert done["data_source"]["source"] == {"type": "file_id", "id": uploaded["id"]}


def test_an_evals_file_is_checked_as_json_lines_without_the_training_rules(api: Api) -> None:
    # Three rows (fewer than a training file's minimum), no chat messages: a good evals file, on every layout.
    uploaded = upload_evals(api, b'{"item": {"question": "q"}}\n{"question": "bare"}\n{"item": {}, "sample": {}}\n',
                            prefix="/openai", query="?api-version=2025-04-01-preview")  # fmt: skip
    good = api.client.get(f"/openai/files/{uploaded['id']}?api-version=2025-04-01-preview",
                          headers=api.headers()).json()  # fmt: skip
    assert (good["purpose"], good["status"]) == ("evals", "processed")
    assert good["validation"]["problem_count"] == 0
    assert good["status_details"] == "3 valid rows."

    bad = upload_evals(api, b'{"item": {"q": 1}}\n{"item": 5}\nnot json\n')
    shown = api.client.get(f"/v1/files/{bad['id']}", headers=api.headers()).json()
    assert_file_matches(shown)
    assert shown["status"] == "error"
    assert [(p["line"], p["code"]) for p in shown["validation"]["problems"]] == [(2, "invalid_item"),
                                                                                 (3, "invalid_json")]  # fmt: skip
    assert "Line 2: 'item' must be a JSON object" in shown["status_details"]

    array = upload_evals(api, json.dumps(ROWS, indent=2).encode())
    shown = api.client.get(f"/v1/files/{array['id']}", headers=api.headers()).json()
    assert shown["validation"]["problem_count"] == 1
    assert "JSON array" in shown["status_details"]
    assert "one JSON object per line" in shown["status_details"]

    # A run refuses a file that failed its checks, naming the param and the first problem.
    eval_id = create_eval(api).json()["id"]
    refused = api.client.post(f"/v1/evals/{eval_id}/runs", headers=api.headers(),
                              json=completions(ROWS, source={"type": "file_id", "id": bad["id"]}))  # fmt: skip
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["param"] == "data_source.source.id"
    assert "Line 2" in error["message"]


def test_a_jsonl_run_grades_the_samples_of_an_evals_file(api: Api) -> None:
    eval_id = create_eval(api).json()["id"]
    rows = [{"item": {"question": "a", "expected": "yes"}, "sample": {"output_text": "yes"}},
            {"item": {"question": "b", "expected": "no"}, "sample": {"output_text": "yes"}}]  # fmt: skip
    uploaded = upload_evals(api, "".join(json.dumps(row) + "\n" for row in rows).encode())
    body = {"data_source": {"type": "jsonl", "source": {"type": "file_id", "id": uploaded["id"]}}}
    run = api.client.post(f"/v1/evals/{eval_id}/runs", json=body, headers=api.headers())
    assert run.status_code == 201, run.text
    run_all(api)
    done = api.client.get(f"/v1/evals/{eval_id}/runs/{run.json()['id']}", headers=api.headers()).json()
    assert_matches("EvalRun", done)
    assert done["result_counts"] == {"total": 2, "errored": 0, "failed": 1, "passed": 1}


@pytest.mark.parametrize("param", ["training_file", "validation_file"])
def test_a_fine_tuning_job_refuses_an_evals_file(api: Api, param: str) -> None:
    chat = "".join(
        json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]})
        + "\n"
        for i in range(10)
    )
    training = api.client.post("/v1/files", files={"file": ("t.jsonl", chat.encode())}, data={"purpose": "fine-tune"},
                               headers=api.headers()).json()["id"]  # fmt: skip
    evals_file = upload_evals(api, chat.encode())["id"]  # chat rows, but uploaded for evals
    body = {"model": "tiny-llama", "training_file": training, param: evals_file}
    answer = api.client.post("/v1/fine_tuning/jobs", json=body, headers=api.headers())
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param
    assert "purpose 'evals'" in error["message"]
    assert "'fine-tune'" in error["message"]
