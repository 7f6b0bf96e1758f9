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


# A python grader with partial credit: the exact verdict sentence scores 1; an answer whose first verdict word
# is right but says more (or says it differently) scores 0.5; a wrong or missing verdict scores 0.
VERDICT_GRADER = """def grade(sample, item):
    text = sample["output_text"].strip()
    if text == "This review is " + item["label"] + ".":
        return 1.0
    low = text.lower()
    pos, neg = low.find("positive"), low.find("negative")
    first = "positive" if pos >= 0 and (neg < 0 or pos < neg) else ("negative" if neg >= 0 else "")
    return 0.5 if first == item["label"] else 0.0
"""


def _rft_rows(name: str) -> list[dict[str, Any]]:
    """The sentiment reviews as RFT prompts: the question in a user turn, the label as a reference field."""
    rows = []
    for line in (DATA / f"sentiment_{name}.jsonl").read_text().splitlines():
        messages = json.loads(line)["messages"]
        review = next(m["content"] for m in messages if m["role"] == "user")
        label = {"thumbs-up": "positive", "thumbs-down": "negative"}[messages[-1]["content"]]
        question = f"Is this review positive or negative? Answer with one word.\nReview: {review}"
        rows.append({"messages": [{"role": "user", "content": question}], "label": label})
    return rows


def _verdict_exact_match(client: openai.OpenAI, model: str, rows: list[dict[str, Any]]) -> tuple[float, list[str]]:
    def ask(row: dict[str, Any]) -> str:
        reply = client.chat.completions.create(model=model, messages=row["messages"], temperature=0, max_tokens=12)
        return (reply.choices[0].message.content or "").strip()

    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(ask, rows))
    hits = [reply == f"This review is {row['label']}." for reply, row in zip(replies, rows, strict=True)]
    return sum(hits) / len(hits), replies


def test_rft_on_smollm2_raises_held_out_exact_match(readme_server: Readme) -> None:
    """Issue 14: GRPO with a partial-credit grader on SmolLM2; the held-out exact match rises clearly.

    The base model mostly rambles ("This review is positive, as it ...") and leans positive, so few of its
    greedy answers are the exact verdict sentence; the grader's half credit for a right first verdict word
    gives GRPO a signal from the first step."""
    client = openai.OpenAI(base_url=f"{readme_server.url}/v1", api_key=readme_server.key, max_retries=0)
    ids = {}
    for name in ("train", "valid"):
        body = "".join(json.dumps(r) + "\n" for r in _rft_rows(name)).encode()
        uploaded = client.files.create(file=(f"rft_{name}.jsonl", body), purpose="fine-tune")
        done = client.files.wait_for_processing(uploaded.id, poll_interval=0.5, max_wait_seconds=ceiling(30))
        assert done.status == "processed", done.status_details
        ids[name] = uploaded.id
    hyperparameters = {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 3, "compute_multiplier": 1,
                       "eval_interval": 4, "eval_samples": 1, "reasoning_effort": "low"}  # fmt: skip
    grader = {"type": "python", "name": "verdict", "source": VERDICT_GRADER}
    job = client.fine_tuning.jobs.create(
        model="SmolLM2-135M-Instruct",
        training_file=ids["train"],
        validation_file=ids["valid"],
        seed=3,
        suffix="verdict-rft",
        method={"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": hyperparameters}},  # type: ignore[arg-type]
    )
    deadline = time.monotonic() + ceiling(420)
    while job.status not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(2)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", (job.status, job.error)

    rows = list(csv.DictReader(io.StringIO(client.files.content(job.result_files[0]).text)))
    rewards = [float(r["valid_reward_mean"]) for r in rows if r["valid_reward_mean"]]
    events = client.fine_tuning.jobs.list_events(job.id, limit=200).data
    (before,) = [e for e in events if e.message.startswith("Before training:")]
    at_start = float((before.data or {})["valid_reward_mean"])
    print(f"\nSmolLM2 RFT: validation reward {at_start:.2f} before training, by evaluation {rewards}")

    client.put(
        "/deployments/verdict-rft",
        body={
            "sku": {"name": "standard", "capacity": 1},
            "properties": {"model": {"format": "OpenAI", "name": job.fine_tuned_model, "version": "1"}},
        },
        cast_to=object,
    )
    held_out = _rft_rows("test")
    base, base_replies = _verdict_exact_match(client, "SmolLM2-135M-Instruct", held_out)
    tuned, tuned_replies = _verdict_exact_match(client, "verdict-rft", held_out)
    print(f"held-out exact match: base {base:.0%}, RFT deployment {tuned:.0%}")
    print(f"  base says: {base_replies[0]!r}; the RFT deployment says: {tuned_replies[0]!r}")
    assert max(rewards) > at_start + 0.2, "the validation reward rises"
    assert tuned >= base + 0.3, "held-out exact match is clearly above the base model's"
