"""Experiment trackers on a real server: W&B offline runs and a real local MLflow tracking server.

The test starts ``mlflow server`` (sqlite backend, a free loopback port) next to Tunery. A job naming both
integrations leaves an offline W&B run whose history (read with the ``wandb`` CLI) and an MLflow run whose
metric history both hold the job's losses; with the MLflow server gone, a job still succeeds and says so in
a warning event.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.harness import free_port, tunery
from tests.integration.test_fine_tuning import colour_jsonl, finished, upload, wait_for

pytestmark = pytest.mark.integration

WAIT_S = 300
BIN = Path(sys.executable).parent


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    store = tmp_path / "mlflow"
    store.mkdir()
    log = (store / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--default-artifact-root", str(store / "art")],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, (store / "server.log").read_text()
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    yield url, proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=30)
    log.close()


def _events_with(client: openai.OpenAI, job_id: str, needles: list[str]) -> list[tuple[str, str]]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        events = [(e.level, e.message) for e in client.fine_tuning.jobs.list_events(job_id, limit=100).data]
        if all(any(needle in message for _, message in events) for needle in needles):
            return events
        time.sleep(0.3)
    raise AssertionError(f"no events with {needles} for {job_id}: {events}")


def test_wandb_and_mlflow_hold_the_losses_and_a_dead_tracker_only_warns(
    mlflow_server: tuple[str, subprocess.Popen[bytes]], tmp_path: Path, tiny_model_dir: Path, start_server: Callable
) -> None:
    mlflow_url, mlflow_proc = mlflow_server
    env = {
        **os.environ,
        "TUNERY_DATA_DIR": str(tmp_path / "data"),
        "TUNERY_MODELS__BASE_MODELS": f'["tiny-llama={tiny_model_dir}"]',
        "TUNERY_INTEGRATIONS__MLFLOW_TRACKING_URI": mlflow_url,
        "TUNERY_INTEGRATIONS__WANDB_DIR": str(tmp_path / "wandb"),
        "TUNERY_WEBHOOKS__POLL_INTERVAL_S": "0.2",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("TUNERY_STORAGE__DATABASE_URL", None)
    env.pop("WANDB_API_KEY", None)
    key = tunery(env, "keys", "create", "--project", "trackers")
    _, url = start_server(env, tmp_path / "server.log")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    training = upload(client, colour_jsonl(12), "train.jsonl")
    integrations = [
        {"type": "wandb", "wandb": {"project": "colours", "name": "first", "tags": ["ci"]}},
        {"type": "mlflow", "mlflow": {"project": "colours", "name": "first", "tags": ["ci"]}},
    ]
    job = client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=training, hyperparameters={"n_epochs": 2},
        integrations=integrations,  # type: ignore[arg-type]
    )  # fmt: skip
    done = wait_for(client, job.id, finished)
    assert done.status == "succeeded", done.error
    rows = list(csv.DictReader(io.StringIO(client.files.content(done.result_files[0]).text)))
    losses = {int(r["step"]): float(r["train_loss"]) for r in rows}
    assert len(losses) >= 2
    events = _events_with(client, job.id, ["to W&B", "to MLflow"])
    assert all(level == "info" for level, m in events if "Logged" in m)

    run_files = list((tmp_path / "wandb").glob("wandb/offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    records = subprocess.run(
        [str(BIN / "wandb"), "leet", "inspect", "--json", str(run_files[0])],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    history = [json.loads(line)["history"]["item"] for line in records.splitlines() if '"type":"history"' in line]
    assert {int(h["_step"]): h["train_loss"] for h in history} == pytest.approx(losses)
    assert job.id in run_files[0].name

    from mlflow.tracking import MlflowClient

    tracking = MlflowClient(tracking_uri=mlflow_url)
    experiment = tracking.get_experiment_by_name("colours")
    assert experiment is not None
    (run,) = tracking.search_runs([experiment.experiment_id], filter_string=f"tags.fine_tuning_job_id = '{job.id}'")
    assert run.data.tags["fine_tuned_model"] == done.fine_tuned_model
    assert run.data.params["n_epochs"] == "2"
    assert run.info.status == "FINISHED"
    logged = {m.step: m.value for m in tracking.get_metric_history(run.info.run_id, "train_loss")}
    assert logged == pytest.approx(losses)

    mlflow_proc.terminate()
    mlflow_proc.wait(timeout=30)
    second = client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=training, hyperparameters={"n_epochs": 1},
        integrations=[integrations[1]],  # type: ignore[arg-type]
    )  # fmt: skip
    assert wait_for(client, second.id, finished).status == "succeeded"
    events = _events_with(client, second.id, ["mlflow integration could not log"])
    assert any(level == "warn" and "mlflow integration could not log" in m for level, m in events)
    assert client.fine_tuning.jobs.retrieve(second.id).status == "succeeded"
