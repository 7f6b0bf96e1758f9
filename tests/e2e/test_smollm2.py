"""The README's first command and a real LoRA fine-tune of the bundled SmolLM2-135M-Instruct, on CPU.

Starts Tunery exactly as a newcomer does (``bash scripts/run.sh``), with a fresh data directory, reads the
API key it prints, and runs the Azure tutorial's flow with the official clients on tests/data. Slow
(a few minutes): ``.venv/bin/pytest tests/e2e -m slow``
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.ceilings import ceiling
from tests.integration.harness import free_port, wait_until_healthy

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
KEY_LINE = re.compile(r"API key for project 'default': (tny-\S+)")
JOB_TIMEOUT_S = ceiling(240)  # the SmolLM2 fine-tunes here take 2-4 min on a quiet machine


@dataclass(frozen=True)
class Readme:
    url: str
    key: str


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Readme]:
    data_dir = tmp_path_factory.mktemp("readme-data")
    port = free_port()
    log = data_dir / "run.log"
    env = {**os.environ, "TUNERY_DATA_DIR": str(data_dir), "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    for name in list(env):
        if name.startswith("TUNERY_") and name not in ("TUNERY_DATA_DIR", "TUNERY_WORKER__DTYPE"):
            env.pop(name)
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["bash", "scripts/run.sh", "--port", str(port)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(proc, url, log)  # type: ignore[arg-type]
        match = KEY_LINE.search(log.read_text())
        assert match, f"run.sh printed no API key:\n{log.read_text()}"
        yield Readme(url=url, key=match.group(1))
    finally:
        proc.terminate()
        proc.wait(timeout=ceiling(10))


def test_readme_command_serves_the_bundled_model(readme_server: Readme) -> None:
    client = openai.OpenAI(base_url=f"{readme_server.url}/v1", api_key=readme_server.key)
    assert "SmolLM2-135M-Instruct" in {m.id for m in client.models.list()}
    upload = client.files.create(file=(DATA / "sentiment_valid.jsonl").open("rb"), purpose="fine-tune")
    done = client.files.wait_for_processing(upload.id, poll_interval=0.5, max_wait_seconds=ceiling(30))
    assert done.status == "processed", done.status_details
    stats = (done.model_extra or {})["validation"]["statistics"]
    assert stats["tokenizer"] == "SmolLM2-135M-Instruct"
    assert stats["examples"] == 24
    assert stats["trainable_tokens"] >= 24 * 3  # "thumbs-up"/"thumbs-down" + the end-of-turn token


@dataclass(frozen=True)
class SentimentJob:
    job: Any
    azure: openai.AzureOpenAI


@pytest.fixture(scope="module")
def sentiment_job(readme_server: Readme) -> SentimentJob:
    """The Azure tutorial's flow on SmolLM2: upload train + validation, create with a seed, poll to the end."""
    files = openai.OpenAI(base_url=f"{readme_server.url}/openai/v1/", api_key=readme_server.key)
    train = files.files.create(file=(DATA / "sentiment_train.jsonl").open("rb"), purpose="fine-tune")
    valid = files.files.create(file=(DATA / "sentiment_valid.jsonl").open("rb"), purpose="fine-tune")
    for f in (train, valid):
        done = files.files.wait_for_processing(f.id, poll_interval=0.5, max_wait_seconds=ceiling(30))
        assert done.status == "processed"

    azure = openai.AzureOpenAI(
        azure_endpoint=readme_server.url, api_key=readme_server.key, api_version="2025-04-01-preview"
    )
    job = azure.fine_tuning.jobs.create(
        model="SmolLM2-135M-Instruct",
        training_file=train.id,
        validation_file=valid.id,
        seed=105,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 5}},
        },
        extra_body={"trainingType": "GlobalStandard"},
    )
    assert job.status == "pending"
    assert job.seed == 105
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while job.status not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(2)
        job = azure.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", (job.status, job.error)
    return SentimentJob(job=job, azure=azure)


def test_azure_tutorial_flow_on_smollm2(sentiment_job: SentimentJob) -> None:
    job, azure = sentiment_job.job, sentiment_job.azure
    assert job.fine_tuned_model.startswith("SmolLM2-135M-Instruct.ft-")
    events = azure.fine_tuning.jobs.list_events(fine_tuning_job_id=job.id, limit=10)
    assert len(events.data) == 10
    checkpoints = azure.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [48, 32, 16]

    text = azure.files.content(job.result_files[0]).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 48
    full = [float(r["full_valid_loss"]) for r in rows if r["full_valid_loss"]]
    assert len(full) == 3
    first_valid = next(float(r["valid_loss"]) for r in rows if r["valid_loss"])
    print(f"\nSmolLM2 sentiment: first validation loss {first_valid:.3f}, final full validation loss {full[-1]:.3f}")
    assert full[-1] < 0.5 * first_valid, "validation loss falls clearly on a learnable task"


def _accuracy(client: openai.OpenAI, model: str, rows: list[dict[str, Any]]) -> float:
    def ask(row: dict[str, Any]) -> bool:
        prompt = [m for m in row["messages"] if m["role"] != "assistant"]
        reply = client.chat.completions.create(model=model, messages=prompt, temperature=0, max_tokens=8)
        return (reply.choices[0].message.content or "").strip() == row["messages"][-1]["content"]

    with ThreadPoolExecutor(max_workers=8) as pool:  # concurrent: the engine batches them
        hits = list(pool.map(ask, rows))
    return sum(hits) / len(hits)


def test_deployed_fine_tune_learns_what_the_base_gets_wrong(readme_server: Readme, sentiment_job: SentimentJob) -> None:
    azure = sentiment_job.azure
    model = sentiment_job.job.fine_tuned_model
    client = openai.OpenAI(base_url=f"{readme_server.url}/openai/v1/", api_key=readme_server.key)
    deployment = client.put(
        "/deployments/sentiment",
        body={
            "sku": {"name": "standard", "capacity": 1},
            "properties": {"model": {"format": "OpenAI", "name": model, "version": "1"}},
        },
        cast_to=object,
    )
    assert deployment["properties"]["model"]["name"] == model  # type: ignore[index]
    rows = [json.loads(line) for line in (DATA / "sentiment_test.jsonl").read_text().splitlines()]
    base = _accuracy(client, "SmolLM2-135M-Instruct", rows)
    tuned = _accuracy(client, "sentiment", rows)
    print(f"\nheld-out exact match: base SmolLM2-135M-Instruct {base:.0%}, fine-tuned deployment {tuned:.0%}")
    assert tuned >= 0.8
    assert tuned > base
    deployed = openai.AzureOpenAI(
        azure_endpoint=readme_server.url, api_key=readme_server.key, api_version="2024-10-21",
        azure_deployment="sentiment",
    )  # fmt: skip
    answer = deployed.chat.completions.create(model="ignored", messages=rows[0]["messages"][:-1], temperature=0)
    assert answer.choices[0].message.content
    assert azure.models.retrieve(model).id == model


def _verdict_rate(client: openai.OpenAI, model: str, rows: list[dict[str, Any]]) -> tuple[float, list[str]]:
    """Share of held-out prompts whose greedy reply is in the preferred style (starts with 'Verdict:')."""

    def ask(row: dict[str, Any]) -> str:
        reply = client.chat.completions.create(
            model=model, messages=row["input"]["messages"], temperature=0, max_tokens=8
        )
        return (reply.choices[0].message.content or "").strip()

    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(ask, rows))
    return sum(r.startswith("Verdict:") for r in replies) / len(replies), replies


def test_dpo_on_smollm2_prefers_the_preferred_style(readme_server: Readme) -> None:
    """Issue 6: a DPO job on the preference files under tests/data, through the official client."""
    client = openai.OpenAI(base_url=f"{readme_server.url}/v1", api_key=readme_server.key)
    train = client.files.create(file=(DATA / "preference_train.jsonl").open("rb"), purpose="fine-tune")
    valid = client.files.create(file=(DATA / "preference_valid.jsonl").open("rb"), purpose="fine-tune")
    for f in (train, valid):
        done = client.files.wait_for_processing(f.id, poll_interval=0.5, max_wait_seconds=ceiling(30))
        assert done.status == "processed"
    job = client.fine_tuning.jobs.create(
        model="SmolLM2-135M-Instruct",
        training_file=train.id,
        validation_file=valid.id,
        seed=11,
        suffix="verdicts",
        method={
            "type": "dpo",
            "dpo": {"hyperparameters": {"beta": 0.1, "n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 5}},
        },
    )
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while job.status not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(2)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", (job.status, job.error)

    events = client.fine_tuning.jobs.list_events(job.id, limit=200).data
    (before,) = [e for e in events if e.message.startswith("Before training:")]
    at_start = (before.data or {})["full_valid_reward_accuracy"]
    rows = list(csv.DictReader(io.StringIO(client.files.content(job.result_files[0]).text)))
    at_end = float(next(r for r in reversed(rows) if r["full_valid_reward_accuracy"])["full_valid_reward_accuracy"])
    print(f"\nSmolLM2 DPO: validation reward accuracy {at_start:.2f} at step 0, {at_end:.2f} at the end")
    assert at_end > 0.5
    assert at_end > at_start

    client.put(
        "/deployments/verdicts",
        body={
            "sku": {"name": "standard", "capacity": 1},
            "properties": {"model": {"format": "OpenAI", "name": job.fine_tuned_model, "version": "1"}},
        },
        cast_to=object,
    )
    held_out = [json.loads(line) for line in (DATA / "preference_test.jsonl").read_text().splitlines()]
    base, base_replies = _verdict_rate(client, "SmolLM2-135M-Instruct", held_out)
    tuned, tuned_replies = _verdict_rate(client, "verdicts", held_out)
    print(f"held-out replies in the preferred style: base {base:.0%}, DPO deployment {tuned:.0%}")
    print(f"  base says: {base_replies[0]!r}; the DPO deployment says: {tuned_replies[0]!r}")
    assert tuned > base
