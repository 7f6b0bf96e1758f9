"""A job created with ``hf_output_repo_name`` pushes its model to the Hub when it succeeds (a local fake Hub).

The job is driven by scripted trainer records (as in ``test_runs``); the push goes through the outbox, as the
background sender of ``tunery serve`` sends it. Run: ``.venv/bin/pytest tests/unit/services/test_hub_push.py``
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.services.test_runs import adapter, chat_jsonl, feed, start
from tunery.api.dialects import Dialect
from tunery.api.schemas.fine_tuning import FineTuningJob
from tunery.bootstrap import build_services
from tunery.config import ModelsSettings, PortabilitySettings, Settings
from tunery.domain.errors import InvalidRequest
from tunery.domain.events import EventLevel
from tunery.domain.jobs import Job, JobStatus
from tunery.domain.pagination import PageRequest
from tunery.services.container import Services
from tunery.services.job_requests import parse_job_request
from tunery.testing.fake_hub import TOKEN, FakeHub, fake_hub_server
from tunery.training.progress import ProgressKind


@pytest.fixture(scope="module")
def hub() -> Iterator[str]:
    with fake_hub_server() as url:
        yield url


@pytest.fixture
def services(tmp_path: Path, tiny_model_dir: Path, hub: str) -> Iterator[Services]:
    settings = Settings(
        data_dir=tmp_path,
        models=ModelsSettings(base_models=[f"tiny-llama={tiny_model_dir}"]),
        portability=PortabilitySettings(hf_endpoint=hub),
    )
    built = build_services(settings, background_checks=False)
    FakeHub.commits.clear()
    yield built
    built.close()


def succeeded_job(services: Services, tmp_path: Path, **body: Any) -> Job:
    tmp_path.mkdir(parents=True, exist_ok=True)
    project = services.keys.create("p").project.id
    file = services.files.create(project, filename="t.jsonl", purpose="fine-tune", chunks=[chat_jsonl()])
    job = services.jobs.create(project, parse_job_request({"model": "tiny-llama", "training_file": file.id, **body}))
    job = feed(services, start(services, job), ProgressKind.STARTED, total_steps=2)
    feed(services, job, ProgressKind.CHECKPOINT, step=2, path=str(adapter(tmp_path, 2)), metrics={})
    done = feed(services, job, ProgressKind.COMPLETED, step=2, trained_tokens=20)
    assert done.status is JobStatus.SUCCEEDED
    return done


def events(services: Services, job: Job) -> list[tuple[EventLevel, str]]:
    page = services.jobs.list_events(job.project_id, job.id, PageRequest(limit=100)).data
    return [(e.level, e.message) for e in page]


def test_a_succeeded_job_pushes_its_model_and_forgets_the_token(services: Services, tmp_path: Path) -> None:
    job = succeeded_job(services, tmp_path, hf_output_repo_name="me/colours", hf_api_token=TOKEN)
    echoed = FineTuningJob.from_domain(job, Dialect.OPENAI).model_dump()
    assert echoed["hf_output_repo_name"] == "me/colours"
    assert echoed["hf_output_format"] == "peft"
    assert TOKEN not in str(echoed)

    assert services.outbox.run_once("sender") == 1
    (commit,) = FakeHub.commits
    assert commit["repo"] == "me/colours"
    assert commit["files"]["adapter_model.safetensors"] == b"weights 2"
    assert "base_model: tiny-llama" in commit["files"]["README.md"].decode()
    level, message = events(services, job)[0]
    assert level is EventLevel.INFO
    assert message.startswith(f"Pushed {job.fine_tuned_model} (peft) to the Hugging Face Hub repository me/colours")
    assert "hf_api_token" not in services.jobs.retrieve(job.project_id, job.id).extras
    assert services.outbox.run_once("sender") == 0  # pushed once


def test_a_refused_push_is_a_warning_and_the_job_stays_succeeded(services: Services, tmp_path: Path) -> None:
    job = succeeded_job(services, tmp_path, hf_output_repo_name="me/colours", hf_api_token="wrong")
    services.outbox.run_once("sender")
    assert FakeHub.commits == []
    level, message = events(services, job)[0]
    assert level is EventLevel.WARN
    assert "The push to the Hugging Face Hub failed" in message
    assert "refused the push" in message
    assert services.jobs.retrieve(job.project_id, job.id).status is JobStatus.SUCCEEDED


def test_a_job_without_hub_output_sends_nothing(services: Services, tmp_path: Path) -> None:
    succeeded_job(services, tmp_path)
    assert services.outbox.run_once("sender") == 0


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"hf_output_repo_name": "no-owner", "hf_api_token": TOKEN}, "hf_output_repo_name", "'owner/name'"),
        ({"hf_output_repo_name": "me/x", "hf_output_format": "onnx"}, "hf_output_format", "peft, merged, gguf"),
        ({"hf_api_token": TOKEN}, "hf_api_token", "only used with hf_output_repo_name"),
        ({"hf_output_repo_name": "me/x", "hf_output_private": "yes"}, "hf_output_private", "true or false"),
    ],
)
def test_bad_hub_fields_are_refused_by_name(body: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words) as refused:
        parse_job_request({"model": "tiny-llama", "training_file": "file-x", **body})
    assert refused.value.param == param


def test_without_any_token_the_job_is_refused_at_create(services: Services) -> None:
    project = services.keys.create("p").project.id
    file = services.files.create(project, filename="t.jsonl", purpose="fine-tune", chunks=[chat_jsonl()])
    request = parse_job_request({"model": "tiny-llama", "training_file": file.id, "hf_output_repo_name": "me/x"})
    with pytest.raises(InvalidRequest, match="needs a Hugging Face token") as refused:
        services.jobs.create(project, request)
    assert refused.value.param == "hf_api_token"
