"""The evals service and run executor on real stores and the FakeEngine: a run left ``in_progress`` by a dead
runner is resumed without redoing its items; a cancel is honoured at the next batch; per-checkpoint evals
score the base model and every checkpoint, name the best one, and ``<model>:best`` resolves to it.

Run alone: ``.venv/bin/pytest tests/unit/services/test_evals.py``
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tunery.bootstrap import build_eval_executor, build_services
from tunery.config import ModelsSettings, Settings
from tunery.domain.checkpoints import Checkpoint
from tunery.domain.evals import OutputItem, RunStatus, new_output_item_id
from tunery.domain.ids import new_id
from tunery.domain.jobs import Hyperparameters, Job, JobStatus, Method, checkpoint_model_name
from tunery.domain.models import FineTunedModel
from tunery.domain.pagination import PageRequest
from tunery.services.container import Services
from tunery.services.eval_requests import CreateEvalRequest, CreateEvalRunRequest
from tunery.storage import CheckpointStore, JobStore, LocalBlobStore, ModelStore
from tunery.testing.fakes import FakeEngine

SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}, "a": {"type": "string"}}, "required": ["q", "a"]}
CRITERION = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.a}}",
             "operation": "eq"}  # fmt: skip
TEMPLATE = {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]}


@dataclass
class Env:
    services: Services
    settings: Settings
    project: str


@pytest.fixture
def env(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Env]:
    settings = Settings(data_dir=tmp_path / "data", models=ModelsSettings(base_models=[f"tiny-llama={tiny_model_dir}"]))
    engine = FakeEngine()
    services = build_services(settings, background_checks=False, engine=lambda: engine)
    project = services.keys.authenticate(services.keys.create("team").secret).project_id
    yield Env(services, settings, project)
    services.close()


def new_eval(env: Env) -> str:
    body = {
        "name": "e",
        "data_source_config": {"type": "custom", "item_schema": SCHEMA},
        "testing_criteria": [CRITERION],
    }
    return env.services.evals.create(env.project, CreateEvalRequest.model_validate(body)).id


def completions(model: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "completions", "model": model, "input_messages": TEMPLATE,
            "source": {"type": "file_content", "content": rows}}  # fmt: skip


def rows(n: int, answer: str = "Hello from tiny-llama") -> list[dict[str, Any]]:
    return [{"item": {"q": f"q{i}", "a": answer}} for i in range(n)]


def test_a_run_left_in_progress_by_a_dead_runner_is_resumed(env: Env) -> None:
    evals = env.services.evals
    eval_id = new_eval(env)
    run = evals.create_run(env.project, eval_id, CreateEvalRunRequest.model_validate(
        {"data_source": completions("tiny-llama", rows(5))}))  # fmt: skip
    store = evals.store
    assert store.claim_next("dead-runner", now=time.time()) is not None
    store.transition(run.id, RunStatus.IN_PROGRESS, expect={RunStatus.QUEUED})
    kept = OutputItem(id=new_output_item_id(), run_id=run.id, eval_id=eval_id, created_at=1, status="pass",
                      datasource_item_id=0, datasource_item={"q": "q0", "a": "x"},
                      results=[{"name": "kept", "score": 1.0, "passed": True}], sample={})  # fmt: skip
    store.insert_items([kept])
    executor = build_eval_executor(env.settings, env.services)
    assert executor.run_next("new-runner", stale_after=60) is False  # its holder beat just now
    assert executor.run_next("new-runner", stale_after=0) is True
    done = evals.retrieve_run(env.project, eval_id, run.id)
    assert done.status is RunStatus.COMPLETED
    assert done.result_counts == {"total": 5, "errored": 0, "failed": 0, "passed": 5}
    items = store.all_items(run.id)
    assert [i.datasource_item_id for i in items] == [0, 1, 2, 3, 4]
    assert items[0].id == kept.id  # not redone


def test_cancel_is_honoured_at_the_next_batch(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    evals, chat = env.services.evals, env.services.chat
    eval_id = new_eval(env)
    run = evals.create_run(env.project, eval_id, CreateEvalRunRequest.model_validate(
        {"data_source": completions("tiny-llama", rows(6))}))  # fmt: skip
    original = chat.complete_batch
    sizes: list[int] = []

    def complete_then_cancel(*args: Any, **kwargs: Any) -> Any:
        sizes.append(len(args[1]))
        evals.cancel_run(env.project, eval_id, run.id)
        return original(*args, **kwargs)

    monkeypatch.setattr(chat, "complete_batch", complete_then_cancel)
    env.settings.evals.batch_size = 1
    assert build_eval_executor(env.settings, env.services).run_next("runner", stale_after=60)
    done = evals.retrieve_run(env.project, eval_id, run.id)
    assert done.status is RunStatus.CANCELED
    assert sizes == [4]  # one round (4 engine batches of 1), then it stopped
    assert done.result_counts["total"] == 4


def register_job(env: Env, steps: list[int], evals: list[dict[str, Any]]) -> tuple[Job, list[str]]:
    job_id = new_id("ftjob")
    model = f"tiny-llama.ft-{job_id.split('-')[1]}"
    job = Job(id=job_id, project_id=env.project, created_at=1, model="tiny-llama", base_model="tiny-llama",
              training_file="file-x", validation_file=None, method=Method.SUPERVISED,
              hyperparameters=Hyperparameters(), seed=1, status=JobStatus.SUCCEEDED, fine_tuned_model=model,
              extras={"evals": evals})  # fmt: skip
    db = env.services.evals.store._db
    JobStore(db).insert(job)
    blobs = LocalBlobStore(env.settings.data_dir / "blobs")
    names = []
    for index, step in enumerate(steps):
        key = f"adapters/{job_id}/step-{step}"
        for filename in ("adapter_config.json", "adapter_model.safetensors"):
            blobs.write(f"{key}/{filename}", [b"{}"])
        name = model if index == len(steps) - 1 else checkpoint_model_name(model, step)
        CheckpointStore(db).insert(Checkpoint(id=new_id("ftchkpt"), job_id=job_id, project_id=env.project,
                                              created_at=step, step_number=step, fine_tuned_model_checkpoint=name,
                                              adapter_key=key))  # fmt: skip
        names.append(name)
    ModelStore(db).insert(FineTunedModel(id=model, project_id=env.project, job_id=job_id, base_model="tiny-llama",
                                         parent_model=None, adapter_key=f"adapters/{job_id}/step-{steps[-1]}",
                                         created_at=1))  # fmt: skip
    return job, names


def test_per_checkpoint_evals_score_each_checkpoint_and_name_the_best(env: Env) -> None:
    eval_id = new_eval(env)
    checkpoint_evals = env.services.checkpoint_evals
    entry_rows: list[dict[str, Any]] = []
    source = {"type": "completions", "input_messages": TEMPLATE, "source": {"type": "file_content",
                                                                            "content": entry_rows}}  # fmt: skip
    job, names = register_job(env, [1, 2, 3], [{"eval_id": eval_id, "data_source": source}])
    # The FakeEngine answers "Hello from <adapter name>": only the step-2 checkpoint says what the items expect.
    entry_rows.extend(rows(3, answer=f"Hello from {names[1]}"))
    job = job.with_changes(extras={"evals": [{"eval_id": eval_id, "data_source": source}]})
    JobStore(env.services.evals.store._db).update(job)
    checkpoint_evals.start(job)
    assert checkpoint_evals.schedule() == 3
    assert checkpoint_evals.schedule() == 0  # idempotent
    executor = build_eval_executor(env.settings, env.services)
    while executor.run_next("runner", stale_after=60):
        pass
    results = checkpoint_evals.results(job)
    assert results is not None
    by_step = {r["step"]: r["pass_rate"] for r in results["eval_results"]}
    assert by_step == {0: 0.0, 1: 0.0, 2: 1.0, 3: 0.0}
    best = results["best_checkpoint"]
    assert best["step_number"] == 2
    assert best["fine_tuned_model_checkpoint"] == names[1]
    assert best["base_pass_rate"] == 0.0
    assert env.services.models.resolve(env.project, f"{job.fine_tuned_model}:best").name == names[1]
    checkpoint = CheckpointStore(env.services.evals.store._db).list_all(job.id)[1]
    assert checkpoint_evals.metrics(job, checkpoint)["eval_pass_rate"] == 1.0
    events = env.services.jobs.list_events(env.project, job.id, PageRequest(limit=50)).data
    assert sum(e.message.startswith("Eval ") for e in events) == 4
