"""Reinforcement fine-tuning end to end on a real server + worker + trainer subprocess, with the tiny model.

The official client uploads RFT files (prompts ending in a user turn, a ``target`` reference field), creates
``method: reinforcement`` jobs with a python grader (reward: the share of the answer's characters that are the
target letter, which a random tiny model writes ~5 % of the time and GRPO moves quickly), and checks: the job
succeeds with the validation reward rising and the RFT results.csv columns; pause → resume continues the same
steps; a grader that raises fails the job with ``grader_error``; a grader naming a field the rows lack is a 400.

The server here samples at temperature 0.2 with 12-token answers and a LoRA scaled for the tiny model's flat
logits (worker settings), so 20 steps show learning. Run alone: ``.venv/bin/pytest tests/integration/test_rft_jobs.py``
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.integration.harness import Server, free_port, tunery, wait_until_healthy
from tests.integration.test_cli import run_cli
from tests.integration.test_fine_tuning import at_step, client_for, finished, results, upload, wait_for

pytestmark = pytest.mark.integration

E_SHARE = {
    "type": "python",
    "name": "e_share",
    "source": (
        "def grade(sample, item):\n    t = sample['output_text']\n    return t.count(item['target']) / max(len(t), 1)\n"
    ),
}
RFT_COLUMNS = [  # the spec's recommended header (rft §3.6), then Tunery's columns (a multi grader adds its children)
    "step", "train_reward_mean", "valid_reward_mean", "train_reasoning_tokens_mean", "valid_reasoning_tokens_mean",
    "full_valid_mean_parse_error", "train_reward_std", "train_loss", "train_kl", "train_parse_error_mean",
    "train_grader_error_mean", "valid_grader_error_mean",
]  # fmt: skip
WORDS = ["capital", "France", "Paris", "Rome", "hello", "help", "today"]


@pytest.fixture(scope="module")
def rft_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("rft-server")
    port = free_port()
    env = {
        **os.environ,
        "TUNERY_DATA_DIR": str(data_dir),
        "TUNERY_MODELS__BASE_MODELS": f'["tiny-llama={tiny_model_dir}"]',
        "TUNERY_API__PORT": str(port),
        "PYTHONUNBUFFERED": "1",
        "TUNERY_WORKER__RFT_TEMPERATURE": "0.2",
        "TUNERY_WORKER__RFT_MAX_NEW_TOKENS": "12",
        "TUNERY_WORKER__LORA_R": "4",
        "TUNERY_WORKER__LORA_ALPHA": "40",
        "TUNERY_WORKER__DTYPE": "fp32",
    }
    env.pop("TUNERY_STORAGE__DATABASE_URL", None)
    key = tunery(env, "keys", "create", "--project", "rft")
    log = data_dir / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tunery", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(proc, url, log)
        yield Server(url=url, key=key, other_key=key, data_dir=data_dir, env=env)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def prompts(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    rows = [
        {"messages": [{"role": "user", "content": " ".join(rng.choices(WORDS, k=4))}], "target": "e"} for _ in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def files(rft_server: Server) -> dict[str, str]:
    client = client_for(rft_server)
    return {
        "train": upload(client, prompts(16, 0), "train.jsonl"),
        "valid": upload(client, prompts(10, 1), "valid.jsonl"),
    }


def rft_method(grader: dict[str, Any] = E_SHARE, **hyperparameters: Any) -> dict[str, Any]:
    defaults = {
        "n_epochs": 5,
        "batch_size": 4,
        "learning_rate_multiplier": 10,
        "compute_multiplier": 2,
        "eval_samples": 2,
        "eval_interval": 4,
    }
    return {"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": defaults | hyperparameters}}


def test_an_rft_job_raises_the_validation_reward(rft_server: Server, files: dict[str, str]) -> None:
    client = client_for(rft_server)
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=files["train"],
        validation_file=files["valid"],
        seed=1,
        method=rft_method(),  # type: ignore[arg-type]
    )
    assert job.method is not None
    assert job.method.type == "reinforcement"

    done = wait_for(client, job.id, finished)

    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model
    hyper = done.method.reinforcement.hyperparameters  # type: ignore[union-attr]
    assert (hyper.compute_multiplier, hyper.eval_samples, hyper.eval_interval) == (2, 2, 4)
    assert hyper.reasoning_effort == "default"
    rows = results(client, done)
    assert list(rows[0]) == RFT_COLUMNS
    assert [int(r["step"]) for r in rows] == list(range(1, 21))
    valid = [float(r["valid_reward_mean"]) for r in rows if r["valid_reward_mean"]]
    print("validation reward by evaluation:", valid)
    assert len(valid) == 5  # every eval_interval (4) steps
    assert valid[-1] > valid[0] + 0.05
    events = client.fine_tuning.jobs.list_events(job.id, limit=300).data
    metrics = [e for e in events if e.type == "metrics"]
    assert any("train mean reward=" in e.message for e in metrics)
    assert any("full validation mean reward=" in (e.message or "") for e in events)
    assert any("full validation mean parse error=0.00" in (e.message or "") for e in events)
    scored = {int(e.data["step"]): e.data for e in metrics if e.data and "scores" in e.data}
    assert {0, 4, 8, 12, 16, 20} <= set(scored), "every evaluation is a metrics event"
    last = scored[20]
    assert last["scores"]["graders"] == [
        {"name": "e_share", "type": "python", "train_reward_mean": last["scores"]["train_reward_mean"],
         "valid_reward_mean": last["scores"]["valid_reward_mean"]}
    ]  # fmt: skip
    assert 0 < last["usage"]["samples"]["valid_reasoning_tokens_mean"] <= 12
    assert last["errors"]["graders"][0]["train_python_grader_runtime_error_count"] == 0
    assert set(last["timing"]["step"]) == {"sampling", "training", "eval", "full_iteration"}
    assert all(not k.startswith("valid_") for k in scored[10]["scores"]), "no validation at step 10"
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints
    carried = [c.metrics.model_dump() | (c.metrics.model_extra or {}) for c in checkpoints]
    assert all({"train_reward_mean", "valid_reward_mean"} <= set(m) for m in carried), "checkpoints carry the reward"
    assert len(checkpoints) == 3, "the three best validation rewards are kept"
    by_reward = sorted(
        ((int(r["step"]), float(r["valid_reward_mean"])) for r in rows if r["valid_reward_mean"]),
        key=lambda pair: (pair[1], pair[0]),
    )
    assert sorted(c.step_number for c in checkpoints) == sorted(step for step, _ in by_reward[-3:])
    model = next(c for c in checkpoints if c.fine_tuned_model_checkpoint == done.fine_tuned_model)
    assert model.step_number == by_reward[-1][0], "the model is the best validation reward's checkpoint"

    # Each evaluation is a run of the job's eval, holding the graded validation answers (10 rows x 2 samples).
    eval_id = (done.model_extra or {})["eval_id"]
    assert (job.model_extra or {})["eval_id"] == eval_id, "the eval exists from the create response on"
    assert client.evals.retrieve(eval_id).metadata == {"fine_tuning_job_id": job.id}
    runs = client.evals.runs.list(eval_id, limit=100).data
    before = next(e.data for e in metrics if e.data and e.data.get("step") == 0)
    expected = {0: float(before["valid_reward_mean"])}
    expected |= {int(r["step"]): float(r["valid_reward_mean"]) for r in rows if r["valid_reward_mean"]}
    assert sorted(int(r.metadata["step"]) for r in runs) == sorted(expected)  # type: ignore[index]
    linked = {e.data["step"]: e.data["eval_run_id"] for e in events if e.data and "eval_run_id" in e.data}
    assert linked == {int(r.metadata["step"]): r.id for r in runs}, "each run is linked from the job's events"  # type: ignore[index]
    for run in runs:
        step = int(run.metadata["step"])  # type: ignore[index]
        assert run.status == "completed"
        items = client.evals.runs.output_items.list(run.id, eval_id=eval_id, limit=100).data
        assert len(items) == run.result_counts.total == 20
        scores = [item.results[0].score for item in items]
        assert sum(scores) / len(scores) == pytest.approx(expected[step], abs=1e-6), step
        assert (
            run.result_counts.passed == sum(score >= 0.5 for score in scores) == sum(i.status == "pass" for i in items)
        )
        assert all(item.sample.output[0].content is not None for item in items)


def test_pause_and_resume_continue_the_same_rft_run(rft_server: Server, files: dict[str, str]) -> None:
    client = client_for(rft_server)
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=files["train"],
        validation_file=files["valid"],
        seed=2,
        method=rft_method(n_epochs=4),  # type: ignore[arg-type]
    )
    wait_for(client, job.id, at_step(2))
    assert client.fine_tuning.jobs.pause(job.id).status == "running"  # OpenAI's layout shows pausing as running
    paused = wait_for(client, job.id, lambda j: getattr(j, "status", None) in {"paused", "succeeded", "failed"})
    assert paused.status == "paused"
    paused_step = paused.model_extra["progress"]["step"]  # type: ignore[index]
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data[0].step_number == paused_step

    client.fine_tuning.jobs.resume(job.id)
    done = wait_for(client, job.id, finished)

    assert done.status == "succeeded", done.error
    assert [int(r["step"]) for r in results(client, done)] == list(range(1, 17))
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=200).data]
    assert any(m.startswith(f"Job resumed from step {paused_step}") for m in messages)


def test_a_crashing_grader_fails_the_job_with_grader_error(rft_server: Server, files: dict[str, str]) -> None:
    client = client_for(rft_server)
    crashing = {
        "type": "python",
        "name": "boom",
        "source": "def grade(sample, item):\n    raise ValueError('kaboom')\n",
    }
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=files["train"],
        validation_file=files["valid"],
        method=rft_method(crashing, n_epochs=1),  # type: ignore[arg-type]
    )
    done = wait_for(client, job.id, finished)
    assert done.status == "failed"
    assert done.error is not None
    assert done.error.code == "grader_error"
    assert "kaboom" in done.error.message


def test_a_response_format_constrains_sampling_so_every_graded_answer_parses(
    rft_server: Server, files: dict[str, str]
) -> None:
    # The random tiny model never writes JSON on its own; sampling constrained to the schema makes every answer
    # JSON matching it (short enough for the server's 12-token answers), graded through sample.output_json.
    client = client_for(rft_server)
    schema = {"type": "object", "properties": {"s": {"enum": ["e", "f"]}}, "required": ["s"],
              "additionalProperties": False}  # fmt: skip
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    grader = {"type": "string_check", "name": "s", "input": "{{sample.output_json.s}}",
              "reference": "{{item.target}}", "operation": "eq"}  # fmt: skip
    method = rft_method(grader, n_epochs=1)
    method["reinforcement"]["response_format"] = response_format
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=files["train"],
        validation_file=files["valid"],
        method=method,  # type: ignore[arg-type]
    )
    assert (job.method.reinforcement.model_extra or {})["response_format"] == response_format  # type: ignore[union-attr]
    done = wait_for(client, job.id, finished)
    assert done.status == "succeeded", done.error
    rows = results(client, done)
    assert [float(r["train_parse_error_mean"]) for r in rows] == [0.0] * 4
    assert [float(r["full_valid_mean_parse_error"]) for r in rows if r["full_valid_mean_parse_error"]] == [0.0]
    assert [float(r["train_grader_error_mean"]) for r in rows] == [0.0] * 4
    runs = client.evals.runs.list((done.model_extra or {})["eval_id"]).data
    assert runs
    for run in runs:
        items = client.evals.runs.output_items.list(run.id, eval_id=run.eval_id, limit=100).data
        assert len(items) == run.result_counts.total == 20
        for item in items:
            answer = json.loads(item.sample.output[0].content or "")  # each answer is JSON matching the schema
            assert answer in ({"s": "e"}, {"s": "f"})
            assert item.sample.finish_reason == "stop"
            assert item.results[0].score == (1.0 if answer["s"] == "e" else 0.0)
            assert item.status == ("pass" if answer["s"] == "e" else "fail")


def test_a_score_model_grader_is_judged_by_a_served_model(rft_server: Server, files: dict[str, str]) -> None:
    # The trainer's score_model asks tiny-llama through the worker's judge relay (the chat engine evals use).
    # A random tiny judge never writes a score, so every grading is a model_grader_parse_error and the job
    # fails with grader_error — quoting the judge's own reply, which proves the judge answered.
    client = client_for(rft_server)
    judge = {"type": "score_model", "name": "judge", "model": "tiny-llama",
             "input": [{"role": "user", "content": "Score {{sample.output_text}} for {{item.target}}"}],
             "sampling_params": {"max_completions_tokens": 4}}  # fmt: skip
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=files["train"],
        validation_file=files["valid"],
        method=rft_method(judge, n_epochs=1),  # type: ignore[arg-type]
    )
    done = wait_for(client, job.id, finished)
    assert done.status == "failed"
    assert done.error is not None
    assert done.error.code == "grader_error"
    assert "The grader model's reply has no numeric result" in done.error.message
    assert "cannot be reached" not in done.error.message


def test_a_grader_naming_a_missing_field_is_refused_at_create(rft_server: Server, files: dict[str, str]) -> None:
    client = client_for(rft_server)
    grader = {
        "type": "string_check",
        "name": "exact",
        "operation": "eq",
        "input": "{{sample.output_text}}",
        "reference": "{{item.solution}}",
    }
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(
            model="tiny-llama",
            training_file=files["train"],
            validation_file=files["valid"],
            method=rft_method(grader),  # type: ignore[arg-type]
        )
    assert caught.value.body["param"] == "method.reinforcement.grader.reference"  # type: ignore[index]


def test_the_cli_creates_a_reinforcement_job_from_a_grader_file(
    rft_server: Server, files: dict[str, str], tmp_path: Path
) -> None:
    grader_file = tmp_path / "grader.json"
    grader_file.write_text(json.dumps(E_SHARE))
    created = run_cli(
        rft_server, "jobs", "create", "--model", "tiny-llama", "-t", files["train"], "-v", files["valid"],
        "--method", "reinforcement", "--grader", str(grader_file), "--compute-multiplier", "1.5",
        "--eval-samples", "2", "--n-epochs", "1", "--json",
    )  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    job = json.loads(created.stdout)
    section = job["method"]["reinforcement"]
    assert {k: v for k, v in section["grader"].items() if v is not None} == E_SHARE  # the SDK adds image_tag: null
    assert section["hyperparameters"]["compute_multiplier"] == 1.5
    assert section["hyperparameters"]["eval_samples"] == 2
    assert run_cli(rft_server, "jobs", "cancel", job["id"]).returncode == 0

    missing = run_cli(
        rft_server, "jobs", "create", "--model", "tiny-llama", "-t", files["train"], "-v", files["valid"],
        "--method", "reinforcement",
    )  # fmt: skip
    assert missing.returncode != 0
    assert "--grader" in missing.stderr
