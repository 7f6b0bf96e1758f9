"""Fine-tuning jobs end to end on a real server + worker + trainer subprocess, with the tiny model.

The user's own script, through the official client: upload → create → poll → events → checkpoints →
results.csv → continuous fine-tuning; then cancel, pause/resume, and kill -9 of the trainer and of the
whole server. Run alone: ``.venv/bin/pytest tests/integration/test_fine_tuning.py``
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from tests.ceilings import ceiling
from tests.integration.harness import Server, tunery

pytestmark = pytest.mark.integration

JOB_TIMEOUT_S = ceiling(90)  # the longest job here (480 tiny steps) takes ~60 s on a quiet machine
WORDS = ["red", "blue", "green", "amber", "violet", "black", "white", "olive", "coral", "ivory", "teal", "gold"]


def colour_jsonl(n: int, *, offset: int = 0) -> bytes:
    rows = []
    for i in range(offset, offset + n):
        word = WORDS[i % len(WORDS)]
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "Name the colour code."},
                    {"role": "user", "content": f"Colour {word} number {i}?"},
                    {"role": "assistant", "content": f"The code for {word} is {word.upper()}-{len(word)}."},
                ]
            }
        )
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def client_for(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0)  # a 5xx must show


def azure_for(server: Server) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=server.url, api_key=server.key, api_version="2025-04-01-preview", max_retries=0
    )


def upload(client: openai.OpenAI, data: bytes, name: str) -> str:
    created = client.files.create(file=(name, data), purpose="fine-tune")
    done = client.files.wait_for_processing(created.id, poll_interval=0.2, max_wait_seconds=ceiling(20))
    assert done.status == "processed", done.status_details
    return created.id


def wait_for(
    client: openai.OpenAI, job_id: str, done: Callable[[object], bool], timeout: float = JOB_TIMEOUT_S
) -> openai.types.fine_tuning.FineTuningJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if done(job):
            return job
        time.sleep(0.3)
    events = [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=30).data]
    raise AssertionError(f"job {job_id} is {job.status} after {timeout}s; events: {events}")


def finished(job: object) -> bool:
    return getattr(job, "status", None) in {"succeeded", "failed", "cancelled"}


def at_step(n: int) -> Callable[[object], bool]:
    def check(job: object) -> bool:
        progress = (getattr(job, "model_extra", None) or {}).get("progress") or {}
        return int(progress.get("step") or 0) >= n or finished(job)

    return check


def results(client: openai.OpenAI, job: openai.types.fine_tuning.FineTuningJob) -> list[dict[str, str]]:
    assert job.result_files, "a succeeded job lists its results.csv"
    text = client.files.content(job.result_files[0]).text
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def data(server: Server) -> dict[str, str]:
    client = client_for(server)
    return {
        "train": upload(client, colour_jsonl(24), "train.jsonl"),
        "valid": upload(client, colour_jsonl(12, offset=100), "valid.jsonl"),
        "long": upload(client, colour_jsonl(240), "long.jsonl"),
    }


def test_golden_path_with_continuous_fine_tuning(server: Server, data: dict[str, str]) -> None:
    client = client_for(server)
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=data["train"],
        validation_file=data["valid"],
        seed=105,
        suffix="colours",
        # 10x the base rate: the random tiny model then learns in 18 steps by far more than batch-to-batch noise.
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 10}},
        },
    )
    assert job.status == "validating_files"
    done = wait_for(client, job.id, finished)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"tiny-llama.ft-{job.id.split('-', 1)[1]}-colours"
    assert done.trained_tokens
    assert done.trained_tokens > 0
    assert done.hyperparameters.n_epochs == 3
    assert done.hyperparameters.learning_rate_multiplier == 10
    assert done.seed == 105

    events = client.fine_tuning.jobs.list_events(job.id, limit=10)
    assert len(events.data) == 10
    assert events.has_more
    every = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=200).data][::-1]
    for expected in ("Job started.", "Training started.", "Job succeeded.", "Postprocessing started."):
        assert expected in every
    assert any(m.startswith("Step 18/18: training loss=") for m in every)

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [18, 12, 6]
    assert checkpoints[0].fine_tuned_model_checkpoint == done.fine_tuned_model
    assert checkpoints[1].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-12"
    assert checkpoints[0].metrics.full_valid_loss is not None

    rows = results(client, done)
    assert list(rows[0]) == [
        "step", "train_loss", "train_mean_token_accuracy", "valid_loss",
        "valid_mean_token_accuracy", "full_valid_loss", "full_valid_mean_token_accuracy",
    ]  # fmt: skip
    assert [int(r["step"]) for r in rows] == list(range(1, 19))
    full = [float(r["full_valid_loss"]) for r in rows if r["full_valid_loss"]]
    assert len(full) == 3
    assert full[-1] < full[0], "validation loss falls on a learnable task"

    models = {m.id for m in client.models.list()}
    assert done.fine_tuned_model in models

    # Continuous fine-tuning from the fine-tuned model and from a checkpoint, through the Azure client.
    azure = azure_for(server)
    for parent in (done.fine_tuned_model, checkpoints[1].fine_tuned_model_checkpoint):
        child = azure.fine_tuning.jobs.create(
            model=parent, training_file=data["train"], extra_body={"trainingType": "Standard"},
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
        )  # fmt: skip
        assert child.status == "pending"
        child_done = wait_for(azure, child.id, finished)
        assert child_done.status == "succeeded", child_done.error
        assert child_done.fine_tuned_model.startswith("tiny-llama.ft-")
        first_loss = float(results(azure, child_done)[0]["train_loss"])
        assert first_loss < float(rows[0]["train_loss"]), "the child starts from its parent's adapter"


def test_a_job_whose_validation_loss_plateaus_stops_early_on_its_best_checkpoint(
    server: Server, data: dict[str, str]
) -> None:
    """n_epochs auto with a validation file: early stopping is on. A learning rate of ~0 keeps the validation
    loss flat, so the job stops after its second epoch and the first epoch's checkpoint is the model."""
    client = client_for(server)
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=data["train"],
        validation_file=data["valid"],
        method={"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": 1e-6}}},
    )
    assert (job.model_extra or {})["early_stopping"] == {"patience": 1, "min_delta": 0.001}
    done = wait_for(client, job.id, finished)
    assert done.status == "succeeded", done.error

    hyper = done.method.supervised.hyperparameters  # type: ignore[union-attr]
    n_epochs, batch_size = int(hyper.n_epochs), int(hyper.batch_size)  # type: ignore[arg-type]
    per_epoch = -(-24 // batch_size)
    assert n_epochs > 2, "auto epochs for 24 examples: 4"
    rows = results(client, done)
    assert [int(r["step"]) for r in rows] == list(range(1, 2 * per_epoch + 1)), "two epochs, then the stop"
    assert done.model_extra["progress"]["total_steps"] == 2 * per_epoch  # type: ignore[index]
    checkpoints = {c.step_number: c for c in client.fine_tuning.jobs.checkpoints.list(job.id).data}
    assert checkpoints[per_epoch].fine_tuned_model_checkpoint == done.fine_tuned_model, "epoch 1 is the model"
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert any(
        m.startswith(f"Stopped early after epoch 2 of {n_epochs}")
        and m.endswith(f"The model is the step-{per_epoch} checkpoint.")
        for m in messages
    ), messages
    assert any(m.startswith("Trainer ready in") for m in messages), messages
    first_epoch_tokens = done.trained_tokens // 2  # type: ignore[operator]
    assert done.trained_tokens == 2 * first_epoch_tokens, "billed for the two epochs trained, not the four planned"


def test_cancel_a_running_job(server: Server, data: dict[str, str]) -> None:
    client = client_for(server)
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=data["long"],
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 5, "batch_size": 1}}},
    )
    wait_for(client, job.id, at_step(3))
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    deadline = time.monotonic() + ceiling(10)  # the trainer stops at its next step and exits
    while _trainer_pid(job.id) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _trainer_pid(job.id) is None, "the trainer stopped"
    after = client.fine_tuning.jobs.retrieve(job.id)
    assert after.status == "cancelled"
    assert after.fine_tuned_model is None
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert any("stopped at step" in m for m in messages), messages
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)


def test_pause_and_resume_continue_the_same_curve(server: Server, data: dict[str, str]) -> None:
    azure = azure_for(server)
    job = azure.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=data["long"],
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 1}}},
    )
    wait_for(azure, job.id, at_step(5))
    assert azure.fine_tuning.jobs.pause(job.id).status == "pausing"
    paused = wait_for(azure, job.id, lambda j: getattr(j, "status", None) in {"paused", "succeeded", "failed"})
    assert paused.status == "paused"
    assert paused.finished_at is not None
    paused_step = paused.model_extra["progress"]["step"]
    checkpoints = azure.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints[0].step_number == paused_step, "pausing saves a deployable checkpoint"

    assert azure.fine_tuning.jobs.resume(job.id).status == "resuming"
    done = wait_for(azure, job.id, finished)
    assert done.status == "succeeded", done.error
    steps = [int(r["step"]) for r in results(azure, done)]
    assert steps == list(range(1, 241)), "step numbers continue after the pause and never restart"
    messages = [e.message for e in azure.fine_tuning.jobs.list_events(job.id, limit=500).data]
    assert any(m.startswith("Job paused at step") for m in messages)
    assert any(m.startswith("Job resumed from step") for m in messages)


def _trainer_pid(job_id: str) -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "tunery.training" in cmdline and job_id in cmdline:
                return int(entry.name)
    return None


def test_kill_9_of_the_trainer_resumes_and_loses_nothing(server: Server, data: dict[str, str]) -> None:
    client = client_for(server)
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=data["long"],
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 1}}},
    )
    # Past the first epoch end (240 steps): a checkpoint exists, and ~230 steps are left, so a fast machine
    # cannot finish before the kill lands.
    wait_for(client, job.id, at_step(250))
    pid = _trainer_pid(job.id)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    done = wait_for(client, job.id, finished)
    assert done.status == "succeeded", done.error
    assert [int(r["step"]) for r in results(client, done)] == list(range(1, 481))
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=500).data]
    assert any("stopped unexpectedly (killed by signal 9)" in m for m in messages), messages


def test_kill_9_of_the_whole_server_then_restart(
    tmp_path: Path, tiny_model_dir: Path, start_server: Callable[..., tuple[subprocess.Popen[str], str]]
) -> None:
    """A server with its own data directory: kill -9 it mid-job, start another on the same data; it finishes."""
    env = {
        **os.environ,
        "TUNERY_DATA_DIR": str(tmp_path / "data"),
        "TUNERY_MODELS__BASE_MODELS": f'["tiny-llama={tiny_model_dir}"]',
        "TUNERY_WORKER__STALE_AFTER_S": "3",
    }
    env.pop("TUNERY_STORAGE__DATABASE_URL", None)
    key = tunery(env, "keys", "create", "--project", "crash")
    first, url = start_server(env, tmp_path / "first.log")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=2)
    train = upload(client, colour_jsonl(240), "long.jsonl")
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=train,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 1}}},
    )
    wait_for(client, job.id, at_step(250))  # as above: a checkpoint exists and ~230 steps are left
    pid = _trainer_pid(job.id)
    assert pid is not None
    assert _parent_pid(pid) == first.pid
    first.kill()
    first.wait(timeout=ceiling(5))
    deadline = time.monotonic() + ceiling(2)
    while _trainer_pid(job.id) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _trainer_pid(job.id) is None, "the trainer dies with its worker"

    _second, url = start_server(env, tmp_path / "second.log")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=3)
    done = wait_for(client, job.id, finished)
    assert done.status == "succeeded", done.error
    assert [int(r["step"]) for r in results(client, done)] == list(range(1, 481))
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data[0].step_number == 480, "the model is the last step's"
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=500).data]
    assert any("worker restarted" in m for m in messages), messages


def _parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])
