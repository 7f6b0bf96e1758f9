"""Evals end to end on a real server with the tiny model, through the official ``openai`` client.

One fine-tuning job learns a small task ("No idea." to any question) with per-checkpoint evals: the base
model and every checkpoint are scored as the job trains, the job names its best checkpoint, and
``<model>:best`` deploys it and answers. Then the same eval is run on the base model and on the fine-tune
with ``client.evals.runs.create``: the fine-tune passes clearly more items, and the output items carry each
criterion's result. Bad input is a 400 naming the ``param``. Run alone:
``.venv/bin/pytest tests/integration/test_evals.py``
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.integration.harness import Server
from tests.integration.test_fine_tuning import finished, upload, wait_for
from tests.integration.test_serving import deploy

pytestmark = pytest.mark.integration

RUN_TIMEOUT_S = 300
ANSWER = "No idea."
EXPECTED = "No idea"  # the tiny model learns the words in a few steps, not yet where to stop: "contains" (like)
ITEM_SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
               "required": ["question", "answer"]}  # fmt: skip
CRITERION = {"type": "string_check", "name": "exact answer", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "operation": "like"}  # fmt: skip
TEMPLATE = {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]}
# Questions the job never saw: the fine-tune must generalise its one answer to them.
ROWS = [{"item": {"question": f"Question {100 + i}?", "answer": EXPECTED}} for i in range(8)]


def data_source(model: str | None = None) -> dict[str, Any]:
    source: dict[str, Any] = {"type": "completions", "input_messages": TEMPLATE,
                              "source": {"type": "file_content", "content": ROWS},
                              "sampling_params": {"temperature": 0, "max_completion_tokens": 16}}  # fmt: skip
    if model is not None:
        source["model"] = model
    return source


def shrug_jsonl(n: int) -> bytes:
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": ANSWER}]}
            for i in range(n)]  # fmt: skip
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def wait_run(client: openai.OpenAI, eval_id: str, run_id: str) -> Any:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in {"completed", "failed", "canceled"}:
            return run
        time.sleep(0.3)
    raise AssertionError(f"eval run {run_id} is {run.status} after {RUN_TIMEOUT_S}s")


def evals_settled(job: Any) -> bool:
    extra = getattr(job, "model_extra", None) or {}
    results = extra.get("eval_results") or []
    # the base model plus 3 checkpoints, each scored
    return finished(job) and len(results) >= 4 and all(r["status"] in {"completed", "failed"} for r in results)


@pytest.fixture(scope="module")
def trained(server: Server) -> dict[str, Any]:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0)
    ev = client.evals.create(
        name="shrug",
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA},
        testing_criteria=[CRITERION],  # type: ignore[list-item]
    )
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=upload(client, shrug_jsonl(24), "shrug-evals.jsonl"),
        suffix="evals",
        method={"type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 10}}},
        extra_body={"evals": [{"eval_id": ev.id, "data_source": data_source()}]},
    )  # fmt: skip
    assert (job.model_extra or {})["evals"][0]["eval_id"] == ev.id  # echoed on the job
    done = wait_for(client, job.id, evals_settled, timeout=RUN_TIMEOUT_S * 2)
    assert done.status == "succeeded", done.error
    return {"client": client, "eval": ev, "job": done}


def test_each_checkpoint_is_scored_and_the_best_deploys(server: Server, trained: dict[str, Any]) -> None:
    client: openai.OpenAI = trained["client"]
    job = trained["job"]
    extra = job.model_extra or {}
    results = extra["eval_results"]
    assert all(r["status"] == "completed" for r in results), results
    steps = sorted(r["step"] for r in results)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert steps == [0, *sorted(c.step_number for c in checkpoints)]
    for checkpoint in checkpoints:  # each checkpoint's metrics carry its score
        assert 0.0 <= checkpoint.metrics.model_extra["eval_pass_rate"] <= 1.0  # type: ignore[union-attr]
    best = extra["best_checkpoint"]
    assert best["pass_rate"] == max(r["pass_rate"] for r in results if r["checkpoint"])
    assert best["pass_rate"] > best["base_pass_rate"]
    events = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data if e.message.startswith("Eval ")]
    assert len(events) >= 4
    assert any(f"checkpoint step {best['step_number']}" in e.message for e in events)

    deployed = deploy(client, "best-shrug", f"{job.fine_tuned_model}:best")
    assert deployed["properties"]["provisioningState"] in {"Accepted", "Succeeded"}
    reply = client.chat.completions.create(
        model="best-shrug", messages=[{"role": "user", "content": "Question 555?"}], temperature=0, max_tokens=8
    )
    assert EXPECTED in (reply.choices[0].message.content or "")


def test_fine_tune_passes_more_items_than_the_base(server: Server, trained: dict[str, Any]) -> None:
    client: openai.OpenAI = trained["client"]
    ev = trained["eval"]
    base = client.evals.runs.create(ev.id, name="base", data_source=data_source("tiny-llama"))  # type: ignore[arg-type]
    tuned = client.evals.runs.create(ev.id, name="tuned", data_source=data_source(trained["job"].fine_tuned_model))  # type: ignore[arg-type]
    assert base.status == "queued"
    base_done, tuned_done = wait_run(client, ev.id, base.id), wait_run(client, ev.id, tuned.id)
    assert base_done.status == tuned_done.status == "completed"
    assert base_done.result_counts.total == tuned_done.result_counts.total == len(ROWS)
    assert tuned_done.result_counts.passed >= base_done.result_counts.passed + len(ROWS) // 2
    assert tuned_done.per_model_usage[0].model_name == trained["job"].fine_tuned_model
    items = list(client.evals.runs.output_items.list(tuned.id, eval_id=ev.id))
    assert [i.datasource_item_id for i in items] == list(range(len(ROWS)))
    criterion_id = ev.testing_criteria[0].id  # type: ignore[union-attr]
    for item in items:
        result = item.results[0]
        assert result.name == criterion_id
        assert result.passed == (EXPECTED in item.sample.output[0].content)
        assert item.status == ("pass" if result.passed else "fail")
    assert len(client.evals.runs.list(ev.id).data) >= 2


def test_bad_eval_input_is_a_400_naming_the_param(server: Server) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0)
    ev = client.evals.create(data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA},
                             testing_criteria=[CRITERION])  # type: ignore[list-item]  # fmt: skip
    cases = [
        ({**data_source("tiny-llama"), "input_messages": {"type": "template", "template": [
            {"role": "user", "content": "{{item.missing}}"}]}}, "data_source.input_messages.template[0].content"),
        ({**data_source("tiny-llama"), "source": {"type": "file_content", "content": [{"item": {"question": 1}}]}},
         "data_source.source.content[0].item"),
        (data_source("no-such-model"), "data_source.model"),
    ]  # fmt: skip
    for source, param in cases:
        with pytest.raises(openai.BadRequestError) as bad:
            client.evals.runs.create(ev.id, data_source=source)  # type: ignore[arg-type]
        assert bad.value.param == param
    with pytest.raises(openai.BadRequestError) as bad_grader:
        client.evals.create(data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA},
                            testing_criteria=[{**CRITERION, "operation": "startswith"}])  # type: ignore[list-item]  # fmt: skip
    assert bad_grader.value.param == "testing_criteria[0].operation"
    bad_evals = {"evals": [{"eval_id": "eval_nope", "data_source": data_source()}]}
    with pytest.raises(openai.BadRequestError) as bad_job:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file="file-x", extra_body=bad_evals)
    assert bad_job.value.param == "evals[0].eval_id"


def test_an_evals_file_feeds_a_run_and_is_refused_by_a_job(server: Server) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0)
    rows = [{"item": {"question": "q1", "answer": "yes"}, "sample": {"output_text": "yes"}},
            {"item": {"question": "q2", "answer": "no"}, "sample": {"output_text": "yes"}}]  # fmt: skip
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    uploaded = client.files.create(file=("items.jsonl", data), purpose="evals")
    try:
        _evals_file_checks(client, uploaded.id, rows)
    finally:  # the server is shared: OpenAI's File schema has no "evals" purpose, which strict clients refuse
        client.files.delete(uploaded.id)


def _evals_file_checks(client: openai.OpenAI, file_id: str, rows: list[dict[str, object]]) -> None:
    uploaded = client.files.retrieve(file_id)
    checked = client.files.wait_for_processing(uploaded.id, poll_interval=0.2, max_wait_seconds=RUN_TIMEOUT_S)
    assert (checked.purpose, checked.status) == ("evals", "processed")
    ev = client.evals.create(data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA},
                             testing_criteria=[CRITERION])  # type: ignore[list-item]  # fmt: skip
    source = {"type": "jsonl", "source": {"type": "file_id", "id": uploaded.id}}
    run = client.evals.runs.create(ev.id, data_source=source)  # type: ignore[arg-type]
    done = wait_run(client, ev.id, run.id)
    assert done.status == "completed"
    assert (done.result_counts.passed, done.result_counts.failed) == (1, 1)

    array = client.files.create(file=("items.json", json.dumps(rows, indent=2).encode()), purpose="evals")
    refused = client.files.wait_for_processing(array.id, poll_interval=0.2, max_wait_seconds=RUN_TIMEOUT_S)
    client.files.delete(array.id)
    assert refused.status == "error"
    assert "JSON array" in (refused.status_details or "")

    with pytest.raises(openai.BadRequestError) as bad_job:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file=uploaded.id)
    assert bad_job.value.param == "training_file"
    assert "purpose 'evals'" in str(bad_job.value)


def test_cli_creates_runs_and_shows_an_eval(server: Server, tmp_path: Path) -> None:
    env = {**server.env, "TUNERY_BASE_URL": f"{server.url}/v1", "TUNERY_API_KEY": server.key, "COLUMNS": "200"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tunery", *args], env=env, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S)  # fmt: skip

    created = cli("evals", "create", "--name", "cli", "--item-schema", json.dumps(ITEM_SCHEMA),
                  "--grader", json.dumps(CRITERION), "--json")  # fmt: skip
    assert created.returncode == 0, created.stderr
    eval_id = json.loads(created.stdout)["id"]
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS[:3]))
    ran = cli("evals", "run", eval_id, "--model", "tiny-llama", "--data", str(data), "--max-tokens", "4",
              "--template", json.dumps(TEMPLATE["template"]))  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "completed" in ran.stdout
    assert "of 3" in ran.stdout
    shown = cli("evals", "show", eval_id)
    assert shown.returncode == 0, shown.stderr
    assert "tiny-llama" in shown.stdout
    run_id = next(word for word in shown.stdout.split() if word.startswith("evalrun_"))
    items = cli("evals", "show", eval_id, "--run", run_id)
    assert items.returncode == 0, items.stderr
    assert "exact answer=0" in items.stdout
    bad = cli("evals", "run", eval_id, "--model", "nope", "--data", str(data))
    assert bad.returncode == 1
    assert "does not exist" in bad.stderr
