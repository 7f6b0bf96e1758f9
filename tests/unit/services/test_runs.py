"""The worker-facing run service with scripted progress records instead of a trainer process.

Covers what the worker makes of a trainer's records: events, results.csv, checkpoint retention and naming,
model registration, pause, crash retries and recovery. Run: ``.venv/bin/pytest tests/unit/services``
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tunery.bootstrap import build_services
from tunery.config import ModelsSettings, Settings
from tunery.domain.errors import Conflict, NotFound
from tunery.domain.jobs import Job, JobStatus
from tunery.domain.pagination import PageRequest
from tunery.graders import ChatMessage, GraderErrors, GraderMetadata, GraderResult, JudgeSampling
from tunery.services.container import Services
from tunery.services.job_requests import parse_job_request
from tunery.services.runs import adapter_path
from tunery.storage import Database, JobStore, LocalBlobStore
from tunery.training.progress import (
    STATE_DIR,
    STATE_FILE,
    ProgressKind,
    ProgressWriter,
    RunFolder,
    parse_record,
    write_graded,
)
from tunery.training.remote_judge import JudgeUnavailable, RemoteJudge
from tunery.training.rft import grading_metrics
from tunery.worker.runner import Worker

WORKER = "worker-test"


def chat_jsonl(n: int = 12) -> bytes:
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture
def services(tmp_path: Path, tiny_model_dir: Path) -> Services:
    settings = Settings(data_dir=tmp_path, models=ModelsSettings(base_models=[f"tiny-llama={tiny_model_dir}"]))
    built = build_services(settings, background_checks=False)
    yield built
    built.close()


@pytest.fixture
def project(services: Services) -> str:
    return services.keys.create("p").project.id


def new_job(services: Services, project: str, **body: Any) -> Job:
    file = services.files.create(project, filename="t.jsonl", purpose="fine-tune", chunks=[chat_jsonl()])
    return services.jobs.create(project, parse_job_request({"model": "tiny-llama", "training_file": file.id, **body}))


def start(services: Services, job: Job) -> Job:
    claimed = services.runs.claim_next(WORKER)
    assert claimed is not None
    assert claimed.id == job.id
    queued = services.runs.validate(claimed)
    assert queued is not None
    assert queued.status is JobStatus.QUEUED
    spec = services.runs.start(queued)
    assert spec is not None
    assert spec.n_epochs == 8  # auto: 100 // 12 examples
    return services.jobs.retrieve(job.project_id, job.id)


def adapter(tmp_path: Path, step: int) -> Path:
    folder = tmp_path / f"adapter-{step}"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"weights %d" % step)
    return folder


def feed(services: Services, job: Job, kind: ProgressKind, **data: Any) -> Job:
    return services.runs.record(job, WORKER, parse_record({"kind": kind.value, "time": 0.0, **data}))


def test_a_full_run_registers_model_checkpoints_and_results(services: Services, project: str, tmp_path: Path) -> None:
    job = start(services, new_job(services, project, suffix="s"))
    job = feed(services, job, ProgressKind.STARTED, total_steps=40)
    for step in range(1, 41):
        values = {"train_loss": 2.0 / step, "train_mean_token_accuracy": 0.5}
        if step % 5 == 0:
            values |= {"full_valid_loss": 1.0 / step, "full_valid_mean_token_accuracy": 0.9}
        job = feed(services, job, ProgressKind.STEP, step=step, total_steps=40, trained_tokens=step * 10, **values)
        if step % 5 == 0:
            feed(services, job, ProgressKind.CHECKPOINT, step=step, path=str(adapter(tmp_path, step)), metrics=values)
    done = feed(services, job, ProgressKind.COMPLETED, step=40, trained_tokens=400)

    assert done.status is JobStatus.SUCCEEDED
    assert done.fine_tuned_model == f"tiny-llama.ft-{job.job_hex}-s"
    assert done.trained_tokens == 400
    checkpoints = services.jobs.list_checkpoints(project, job.id, PageRequest(limit=10)).data
    assert [c.step_number for c in checkpoints] == [40, 35, 30], "only the last three are kept"
    assert checkpoints[0].fine_tuned_model_checkpoint == done.fine_tuned_model
    assert checkpoints[1].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-35"
    ref = services.models.resolve(project, done.fine_tuned_model)
    assert ref.adapter_key == checkpoints[0].adapter_key
    assert services.models.resolve(project, checkpoints[2].id).name.endswith(":ckpt-step-30")

    record, stream = services.files.content(project, done.result_files[0])
    assert record.filename == "results.csv"
    rows = list(csv.DictReader(io.StringIO(stream.read().decode())))
    assert len(rows) == 40
    assert rows[4]["full_valid_loss"] == repr(1.0 / 5)
    assert rows[3]["full_valid_loss"] == ""

    events = [e.message for e in services.jobs.list_events(project, job.id, PageRequest(limit=500)).data]
    assert events[0].startswith("Training hours billed: ")
    assert "Job succeeded." in events
    metrics = [e for e in services.jobs.list_events(project, job.id, PageRequest(limit=500)).data if e.data]
    # every 10th step, plus the other epoch-end (full validation) steps: 5, 15, 25, 35
    assert len(metrics) == 4 + 4
    assert metrics[0].message == "Step 40/40: training loss=0.0500"


def test_pause_then_trainer_reports_paused(services: Services, project: str, tmp_path: Path) -> None:
    job = start(services, new_job(services, project))
    job = feed(services, job, ProgressKind.STEP, step=3, total_steps=40, train_loss=1.0)
    services.jobs.pause(project, job.id)
    assert services.runs.control(job.id) == "pause"
    paused = feed(services, job, ProgressKind.PAUSED, step=3, state_path="x", checkpoint=str(adapter(tmp_path, 3)))
    assert paused.status is JobStatus.PAUSED
    assert paused.finished_at is not None
    names = [
        c.fine_tuned_model_checkpoint for c in services.jobs.list_checkpoints(project, job.id, PageRequest(10)).data
    ]
    assert names == [f"tiny-llama.ft-{job.job_hex}:ckpt-step-3"]


def test_cancel_is_passed_to_the_trainer_and_completion_cannot_undo_it(services: Services, project: str) -> None:
    job = start(services, new_job(services, project))
    services.jobs.cancel(project, job.id)
    assert services.runs.control(job.id) == "cancel"
    after = feed(services, job, ProgressKind.COMPLETED, step=1, trained_tokens=1)
    assert after.status is JobStatus.CANCELLED


def test_a_crashed_trainer_is_retried_once_then_fails_clearly(services: Services, project: str) -> None:
    job = start(services, new_job(services, project))
    retried = services.runs.trainer_exited(job, -9, "")
    assert retried.status is JobStatus.QUEUED  # no saved state yet: start over
    again = services.runs.start(services.runs.claim_next(WORKER))  # type: ignore[arg-type]
    assert again is not None
    failed = services.runs.trainer_exited(services.jobs.retrieve(project, job.id), 1, "Traceback...\nMemoryError")
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.code == "trainer_crashed"
    assert "MemoryError" in failed.error.message


def test_bad_data_at_job_start_fails_with_the_line(services: Services, project: str, tmp_path: Path) -> None:
    job = new_job(services, project)
    # The job's own copy is what the worker checks; corrupt it to simulate bad data found at start.
    LocalBlobStore(tmp_path / "blobs").write(f"jobs/{job.id}/training.jsonl", [b'{"messages": []}\n' * 12])
    claimed = services.runs.claim_next(WORKER)
    assert claimed is not None
    assert services.runs.validate(claimed) is not None
    failed = services.jobs.retrieve(project, job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.param == "training_file"
    assert "Line 1" in failed.error.message


def test_recovery_hands_back_a_dead_workers_job(services: Services, project: str, tmp_path: Path) -> None:
    job = start(services, new_job(services, project))
    (services.runs.run_dir(job.id) / "state").mkdir()
    store = JobStore(Database(f"sqlite:///{tmp_path / 'tunery.db'}"))
    store.heartbeat(job.id, WORKER, 0.0)  # its worker went silent long ago
    killed: list[int] = []
    assert services.runs.recover("new-worker", lambda _pid, _job: False, killed.append) == 1
    recovered = services.jobs.retrieve(project, job.id)
    assert recovered.status is JobStatus.RESUMING
    events = [e.message for e in services.jobs.list_events(project, job.id, PageRequest(limit=50)).data]
    assert any("worker restarted" in m for m in events)


def test_two_servers_recovering_at_once_hand_the_job_back_once(
    services: Services, project: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Recovery on two servers sharing one database: the job's conditional transition lets one of them win."""
    job = start(services, new_job(services, project))
    JobStore(Database(f"sqlite:///{tmp_path / 'tunery.db'}")).heartbeat(job.id, WORKER, 0.0)
    other = build_services(
        Settings(data_dir=tmp_path, models=ModelsSettings(base_models=[f"tiny-llama={tiny_model_dir}"])),
        background_checks=False,
    )
    try:

        def recover(server: tuple[str, Services]) -> int:
            return server[1].runs.recover(server[0], lambda _pid, _job: False, lambda _pid: None)

        with ThreadPoolExecutor(2) as pool:
            counts = list(pool.map(recover, [("worker-a", services), ("worker-b", other)]))
    finally:
        other.close()
    assert sorted(counts) == [0, 1]
    events = [e.message for e in services.jobs.list_events(project, job.id, PageRequest(limit=50)).data]
    assert sum("worker restarted" in m for m in events) == 1


def test_a_running_worker_hands_back_a_job_whose_worker_went_silent_after_it_started(
    services: Services, project: str, tmp_path: Path
) -> None:
    """A worker started moments after a crash sees a fresh heartbeat; it must still recover the job later."""
    job = start(services, new_job(services, project))
    (services.runs.run_dir(job.id) / "state").mkdir()
    store = JobStore(Database(f"sqlite:///{tmp_path / 'tunery.db'}"))

    class NeverTrains:  # the real run service, except that this worker takes no job to train
        def __getattr__(self, name: str) -> Any:
            return getattr(services.runs, name)

        def claim_next(self, worker_id: str) -> None:
            return None

    worker = Worker(NeverTrains(), worker_id="new-worker", poll_s=0.02, recover_every_s=0.05)  # type: ignore[arg-type]
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        time.sleep(0.3)
        assert services.jobs.retrieve(project, job.id).status is JobStatus.RUNNING, "its heartbeat is fresh"
        store.heartbeat(job.id, WORKER, 0.0)  # now the old worker has been silent too long
        deadline = time.monotonic() + 5
        while services.jobs.retrieve(project, job.id).status is JobStatus.RUNNING and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert services.jobs.retrieve(project, job.id).status is JobStatus.RESUMING


def died_with_records(
    services: Services, project: str, tmp_path: Path, *, read: int, written: int, end: bool, paused: bool = False
) -> Job:
    """A job whose trainer wrote ``written`` steps (a checkpoint - or with ``paused`` the pause's checkpoint - and
    its saved state at the last, then the end if ``end``) while its worker read only ``read`` of them before it
    died; the job is handed to a new worker."""
    job = start(services, new_job(services, project))
    run_dir = services.runs.run_dir(job.id)
    writer = ProgressWriter(run_dir)
    writer.emit(ProgressKind.STARTED, total_steps=written, resumed_from_step=0)
    job = feed(services, job, ProgressKind.STARTED, total_steps=written)
    for step in range(1, written + 1):
        values = {"step": step, "total_steps": written, "trained_tokens": step * 10, "train_loss": 1.0 / step}
        writer.emit(ProgressKind.STEP, **values)
        if step <= read:
            job = feed(services, job, ProgressKind.STEP, **values)
    checkpoint = adapter(tmp_path, written)
    if paused:
        services.jobs.pause(project, job.id)
        writer.emit(ProgressKind.PAUSED, step=written, state_path="state", checkpoint=str(checkpoint), metrics={})
    else:
        writer.emit(ProgressKind.CHECKPOINT, step=written, path=str(checkpoint), metrics={"train_loss": 0.1})
    (run_dir / STATE_DIR).mkdir()
    (run_dir / STATE_DIR / STATE_FILE).write_text(json.dumps({"step": written}))
    if end:
        writer.emit(ProgressKind.COMPLETED, step=written, trained_tokens=written * 10)
    JobStore(Database(f"sqlite:///{tmp_path / 'tunery.db'}")).heartbeat(job.id, WORKER, 0.0)  # its worker is gone
    assert services.runs.recover("new-worker", lambda _pid, _job: False, lambda _pid: None) == 1
    claimed = services.runs.claim_next("new-worker")
    assert claimed is not None
    assert claimed.status is JobStatus.RESUMING
    return claimed


def test_a_trainer_that_finished_after_its_worker_died_ends_the_job_with_nothing_lost(
    services: Services, project: str, tmp_path: Path
) -> None:
    job = died_with_records(services, project, tmp_path, read=5, written=8, end=True)
    assert services.runs.start(job) is None, "nothing is trained again"

    done = services.jobs.retrieve(project, job.id)
    assert done.status is JobStatus.SUCCEEDED
    assert done.trained_tokens == 80
    _, stream = services.files.content(project, done.result_files[0])
    assert [int(r["step"]) for r in csv.DictReader(io.StringIO(stream.read().decode()))] == list(range(1, 9))
    checkpoint = services.jobs.list_checkpoints(project, job.id, PageRequest(limit=10)).data[0]
    assert checkpoint.step_number == 8
    assert services.models.resolve(project, done.fine_tuned_model).adapter_key == checkpoint.adapter_key
    events = [e.message for e in services.jobs.list_events(project, job.id, PageRequest(limit=100)).data]
    assert "The worker restarted; the job continues from its last saved state (step 8)." in events
    assert "The previous training run had ended before its worker stopped; its results are kept." in events


def test_steps_and_checkpoints_no_worker_read_are_kept_when_the_job_resumes(
    services: Services, project: str, tmp_path: Path
) -> None:
    job = died_with_records(services, project, tmp_path, read=3, written=6, end=False)
    spec = services.runs.start(job)
    assert spec is not None
    assert spec.resume_from == str(services.runs.run_dir(job.id) / STATE_DIR)

    resumed = services.jobs.retrieve(project, job.id)
    assert resumed.status is JobStatus.RUNNING
    assert resumed.step == 6
    assert [c.step_number for c in services.jobs.list_checkpoints(project, job.id, PageRequest(limit=10)).data] == [6]
    assert [int(r["step"]) for r in csv.DictReader(io.StringIO(services.runs.results_csv(resumed).decode()))] == [
        1, 2, 3, 4, 5, 6,
    ]  # fmt: skip
    events = [e.message for e in services.jobs.list_events(project, job.id, PageRequest(limit=100)).data]
    assert "Job resumed from step 6." in events


def test_a_pause_no_worker_read_keeps_its_checkpoint_and_the_job_resumes(
    services: Services, project: str, tmp_path: Path
) -> None:
    job = died_with_records(services, project, tmp_path, read=2, written=4, end=False, paused=True)
    assert services.runs.start(job) is not None
    checkpoints = services.jobs.list_checkpoints(project, job.id, PageRequest(limit=10)).data
    assert [c.fine_tuned_model_checkpoint for c in checkpoints] == [f"tiny-llama.ft-{job.job_hex}:ckpt-step-4"]
    events = [e.message for e in services.jobs.list_events(project, job.id, PageRequest(limit=100)).data]
    assert "The worker restarted while the job was pausing; it resumes instead." in events
    assert "Job resumed from step 4." in events


def test_a_run_that_stopped_early_makes_its_best_checkpoint_the_model(
    services: Services, project: str, tmp_path: Path
) -> None:
    job = start(services, new_job(services, project))
    timings = {"process_start": 2.5, "data": 0.25, "model_load": 1.5, "initial_validation": 0.5}
    job = feed(services, job, ProgressKind.STARTED, total_steps=96, timings=timings, device="cpu", dtype="bf16")
    for step in range(1, 25):
        values = {"train_loss": 1.0, "train_mean_token_accuracy": 0.5}
        if step % 12 == 0:
            values |= {"full_valid_loss": 0.5 if step == 12 else 0.6, "full_valid_mean_token_accuracy": 0.9}
        job = feed(services, job, ProgressKind.STEP, step=step, total_steps=96, trained_tokens=step * 10, **values)
        if step % 12 == 0:
            feed(services, job, ProgressKind.CHECKPOINT, step=step, path=str(adapter(tmp_path, step)), metrics=values)
    stopped = {"epoch": 2, "n_epochs": 8, "best_step": 12, "best_full_valid_loss": 0.5}
    stopped |= {"patience": 1, "min_delta": 0.001}
    done = feed(services, job, ProgressKind.COMPLETED, step=24, trained_tokens=240, best_step=12, stopped_early=stopped)

    assert done.status is JobStatus.SUCCEEDED
    assert (done.step, done.total_steps, done.trained_tokens) == (24, 24, 240), "the job ends where training stopped"
    checkpoints = services.jobs.list_checkpoints(project, job.id, PageRequest(limit=10)).data
    by_step = {c.step_number: c for c in checkpoints}
    assert by_step[12].fine_tuned_model_checkpoint == done.fine_tuned_model, "the best one carries the model's name"
    assert by_step[24].fine_tuned_model_checkpoint.endswith(":ckpt-step-24")
    assert services.models.resolve(project, done.fine_tuned_model).adapter_key == by_step[12].adapter_key
    messages = [e.message for e in services.jobs.list_events(project, job.id, PageRequest(limit=100)).data]
    assert any(
        m.startswith("Stopped early after epoch 2 of 8: the full validation loss has not improved by more than 0.001")
        and "(best 0.5000 at step 12). The model is the step-12 checkpoint." in m
        for m in messages
    ), messages
    assert any(
        m.startswith("Trainer ready in 4.8 s on cpu in bf16: process start and imports 2.5 s, tokenizing the data")
        for m in messages
    ), messages
    _, stream = services.files.content(project, done.result_files[0])
    assert len(list(csv.DictReader(io.StringIO(stream.read().decode())))) == 24


def checkpoint_steps(services: Services, project: str, job: Job) -> list[int]:
    return [c.step_number for c in services.jobs.list_checkpoints(project, job.id, PageRequest(limit=50)).data]


def test_retention_keeps_what_a_deployment_serves_a_job_starts_from_or_a_pause_saved(
    services: Services, project: str, tmp_path: Path
) -> None:
    services.deployments.set_warmup(lambda _ref: None)
    job = start(services, new_job(services, project))
    job = feed(services, job, ProgressKind.STARTED, total_steps=40)
    model = f"tiny-llama.ft-{job.job_hex}"
    for step in (5, 10, 15):
        job = feed(services, job, ProgressKind.STEP, step=step, total_steps=40, train_loss=1.0)
        feed(services, job, ProgressKind.CHECKPOINT, step=step, path=str(adapter(tmp_path, step)))
    services.deployments.create_or_update(project, "served", model=f"{model}:ckpt-step-5")
    child = new_job(services, project, model=f"{model}:ckpt-step-10")
    services.jobs.pause(project, job.id)
    job = feed(services, job, ProgressKind.PAUSED, step=16, checkpoint=str(adapter(tmp_path, 16)))
    services.jobs.resume(project, job.id)
    job = services.jobs.retrieve(project, job.id).with_changes(status=JobStatus.RUNNING)
    for step in (20, 25, 30, 35, 40):
        feed(services, job, ProgressKind.CHECKPOINT, step=step, path=str(adapter(tmp_path, step)))

    assert checkpoint_steps(services, project, job) == [40, 35, 30, 16, 10, 5], "15, 20, 25 pruned; the rest used"
    events = [e.message for e in services.jobs.list_events(project, job.id, PageRequest(limit=500)).data]
    assert any("step 5 kept" in m and "deployment served serves it" in m for m in events)
    assert any("step 10 kept" in m and f"job {child.id} starts from it" in m for m in events)
    assert any("step 16 kept" in m and "saved at a pause" in m for m in events)
    for step in (5, 10, 16):  # the files are still there: the deployment and the child job can load them
        key = services.models.resolve(project, f"{model}:ckpt-step-{step}").adapter_key or ""
        folder = adapter_path(LocalBlobStore(tmp_path / "blobs"), key)
        assert (folder / "adapter_model.safetensors").read_bytes() == b"weights %d" % step


def test_a_job_whose_checkpoint_is_deployed_or_a_parent_cannot_be_deleted(
    services: Services, project: str, tmp_path: Path
) -> None:
    services.deployments.set_warmup(lambda _ref: None)
    job = start(services, new_job(services, project))
    job = feed(services, job, ProgressKind.STARTED, total_steps=10)
    feed(services, job, ProgressKind.CHECKPOINT, step=5, path=str(adapter(tmp_path, 5)))
    services.jobs.cancel(project, job.id)
    name = f"tiny-llama.ft-{job.job_hex}:ckpt-step-5"
    services.deployments.create_or_update(project, "served", model=name)
    with pytest.raises(Conflict, match="has a deployment"):
        services.jobs.delete(project, job.id)
    services.deployments.delete(project, "served")
    child = new_job(services, project, model=name)
    with pytest.raises(Conflict, match=f"parent model of unfinished job {child.id}"):
        services.jobs.delete(project, job.id)
    services.jobs.cancel(project, child.id)
    services.jobs.delete(project, job.id)


def test_the_start_up_sweep_deletes_what_a_crash_mid_upload_left(
    services: Services, project: str, tmp_path: Path
) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    kept = services.files.create(project, filename="t.jsonl", purpose="fine-tune", chunks=[chat_jsonl()])
    blobs.write(f"files/{project}/file-0123456789abcdef0123456789abcdef", [b"no row owns me"])
    half = blobs.root / "files" / project / ".file-x.abc.tmp"
    half.write_bytes(b"half an upload")
    fresh = blobs.root / "files" / project / ".file-y.abc.tmp"
    fresh.write_bytes(b"an upload in progress")
    old = time.time() - 3600
    for path in (half, blobs.root / "files" / project / "file-0123456789abcdef0123456789abcdef"):
        os.utime(path, (old, old))
    os.utime(blobs.root / "files" / project / kept.id, (old, old))

    assert services.files.sweep(min_age_s=600) == 2
    assert not half.exists()
    assert not blobs.exists(f"files/{project}/file-0123456789abcdef0123456789abcdef")
    assert fresh.exists(), "a recent temporary file may be an upload in progress"
    assert blobs.exists(f"files/{project}/{kept.id}")


def rft_job(services: Services, project: str, grader: dict[str, Any]) -> Job:
    rows = "".join(
        json.dumps({"messages": [{"role": "user", "content": f"{i} + 1?"}], "answer": str(i + 1)}) + "\n"
        for i in range(12)
    ).encode()
    train = services.files.create(project, filename="t.jsonl", purpose="fine-tune", chunks=[rows])
    valid = services.files.create(project, filename="v.jsonl", purpose="fine-tune", chunks=[rows])
    method = {"type": "reinforcement", "reinforcement": {"grader": grader}}
    request = {"model": "tiny-llama", "training_file": train.id, "validation_file": valid.id, "method": method}
    return services.jobs.create(project, parse_job_request(request))


def test_an_rft_run_with_a_model_grader_gets_a_judge_relay_for_its_life(services: Services, project: str) -> None:
    judge = {"type": "score_model", "name": "judge", "model": "tiny-llama",
             "input": [{"role": "user", "content": "{{sample.output_text}} = {{item.answer}}?"}]}  # fmt: skip
    job = rft_job(services, project, judge)
    claimed = services.runs.claim_next(WORKER)
    assert claimed is not None
    spec = services.runs.start(services.runs.validate(claimed))  # type: ignore[arg-type]
    assert spec is not None
    assert spec.judge_url is not None
    assert spec.judge_url.startswith("http://127.0.0.1:")
    assert spec.judge_token
    written = json.loads((spec.run_path / "spec.json").read_text())
    assert (written["judge_url"], written["judge_token"]) == (spec.judge_url, spec.judge_token)
    question = [ChatMessage(role="user", content="hi")]
    with pytest.raises(JudgeUnavailable, match="token"):  # it answers, but only its own trainer
        RemoteJudge(spec.judge_url, "guess", timeout_s=5).complete("tiny-llama", question, JudgeSampling())
    services.runs.release(job.id)  # the trainer has stopped: the relay goes with it
    with pytest.raises(JudgeUnavailable, match="cannot be reached"):
        RemoteJudge(spec.judge_url, spec.judge_token, timeout_s=5).complete("tiny-llama", question, JudgeSampling())


def test_an_rft_run_without_a_model_grader_has_no_relay(services: Services, project: str) -> None:
    exact = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "operation": "eq"}  # fmt: skip
    rft_job(services, project, exact)
    claimed = services.runs.claim_next(WORKER)
    assert claimed is not None
    spec = services.runs.start(services.runs.validate(claimed))  # type: ignore[arg-type]
    assert spec is not None
    assert (spec.judge_url, spec.judge_token) == (None, None)


def test_a_jobs_training_extensions_reach_the_trainer_and_absent_ones_are_the_workers(
    services: Services, project: str
) -> None:
    given = {"lora": {"rank": 4, "alpha": 12, "target_modules": ["q_proj", "v_proj"]}, "max_seq_len": 512,
             "warmup_ratio": 0.2}  # fmt: skip
    job = new_job(services, project, **given)
    spec = services.runs.start(services.runs.validate(services.runs.claim_next(WORKER)))  # type: ignore[arg-type]
    assert spec is not None
    assert spec.job_id == job.id
    written = json.loads((spec.run_path / "spec.json").read_text())
    assert written["lora"] == {"r": 4, "alpha": 12, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    assert (written["max_seq_len"], written["warmup_ratio"]) == (512, 0.2)

    plain = new_job(services, project, lora={"rank": 8})
    other = services.runs.start(services.runs.validate(services.runs.claim_next("worker-2")))  # type: ignore[arg-type]
    assert other is not None
    assert other.job_id == plain.id
    assert (other.lora.r, other.lora.alpha, other.lora.target_modules) == (8, 32, None)  # alpha: the worker's
    assert (other.max_seq_len, other.warmup_ratio) == (2048, 0.0)


def test_a_queued_job_says_how_many_jobs_are_ahead_not_a_stock_phrase(services: Services, project: str) -> None:
    first = start(services, new_job(services, project))
    assert first.status is JobStatus.RUNNING
    second = new_job(services, project)
    third = new_job(services, project)
    assert services.jobs.queue_position(first) is None, "it has started"
    assert services.jobs.queue_position(third) == {"ahead": 1, "training": 1}, "the pending second job goes first"
    for job in (second, third):
        claimed = services.runs.claim_next(f"{WORKER}-{job.id}")
        assert claimed is not None
        assert claimed.id == job.id
        services.runs.validate(claimed)

    def enqueued(job: Job) -> str:
        events = services.jobs.list_events(project, job.id, PageRequest(limit=50)).data
        return next(e.message for e in events if e.message.startswith("Job enqueued"))

    assert enqueued(first) == "Job enqueued. No job is ahead of it; it starts as soon as a worker takes it."
    assert enqueued(second) == "Job enqueued: first in the queue, 1 job training now."
    assert enqueued(third) == "Job enqueued: 1 job ahead of it in the queue, 1 job training now."


def test_a_job_waiting_for_its_base_model_says_so(services: Services, project: str, tmp_path: Path) -> None:
    services.runs._base_ready = lambda _name: False  # as on a fresh server: the weights are not prepared yet
    start(services, new_job(services, project))
    job = services.jobs.list(project, PageRequest(limit=1)).data[0]
    messages = [e.message for e in services.jobs.list_events(project, job.id, PageRequest(limit=50)).data]
    assert any(m.startswith("Preparing the base model tiny-llama for its first job") for m in messages)


def test_each_steps_metrics_are_listed_after_a_step_and_pause_checkpoints_are_marked(
    services: Services, project: str, tmp_path: Path
) -> None:
    job = start(services, new_job(services, project))
    job = feed(services, job, ProgressKind.STARTED, total_steps=40)
    for step in range(1, 8):
        job = feed(services, job, ProgressKind.STEP, step=step, total_steps=40, train_loss=1.0 / step)
    rows = services.jobs.list_metrics(project, job.id, after_step=2, limit=3)
    assert [r.step for r in rows] == [3, 4, 5]
    assert rows[0].values["train_loss"] == 1.0 / 3
    assert len(services.jobs.list_metrics(project, job.id, after_step=-1, limit=100)) == 7
    services.jobs.pause(project, job.id)
    feed(services, job, ProgressKind.PAUSED, step=7, checkpoint=str(adapter(tmp_path, 7)))
    (paused,) = services.jobs.list_checkpoints(project, job.id, PageRequest(limit=10)).data
    assert paused.pinned


def test_deleting_a_model_takes_its_checkpoints_with_it(services: Services, project: str, tmp_path: Path) -> None:
    job = start(services, new_job(services, project))
    job = feed(services, job, ProgressKind.STARTED, total_steps=10)
    for step in (5, 10):
        job = feed(services, job, ProgressKind.STEP, step=step, total_steps=10, train_loss=1.0)
        feed(services, job, ProgressKind.CHECKPOINT, step=step, path=str(adapter(tmp_path, step)))
    done = feed(services, job, ProgressKind.COMPLETED, step=10)
    model = done.fine_tuned_model or ""
    assert checkpoint_steps(services, project, done) == [10, 5]
    services.models.delete(project, model)
    assert checkpoint_steps(services, project, done) == [], "the words say its checkpoints go with it"
    for name in (model, f"{model}:ckpt-step-5"):
        with pytest.raises(NotFound):
            services.models.resolve(project, name)
    assert services.jobs.retrieve(project, job.id).status is JobStatus.SUCCEEDED


def test_a_metrics_event_names_its_step_as_openais_do(services: Services, project: str) -> None:
    """The portal charts events by ``data.step``; OpenAI's metrics events carry ``step`` and ``total_steps``."""
    job = start(services, new_job(services, project))
    job = feed(services, job, ProgressKind.STARTED, total_steps=20)
    job = feed(services, job, ProgressKind.STEP, step=10, total_steps=20, train_loss=0.5, train_mean_token_accuracy=0.8)
    events = services.jobs.list_events(project, job.id, PageRequest(limit=50)).data
    (metrics,) = [e for e in events if e.type.value == "metrics"]
    assert metrics.data == {"step": 10, "total_steps": 20, "train_loss": 0.5, "train_mean_token_accuracy": 0.8}


def test_a_checkpoint_folder_replaced_before_the_worker_read_it_is_skipped(
    services: Services, project: str, tmp_path: Path
) -> None:
    """The trainer keeps its newest few folders; a worker behind it must not abandon the job over an old one."""
    job = start(services, new_job(services, project))
    job = feed(services, job, ProgressKind.STARTED, total_steps=20)
    job = feed(services, job, ProgressKind.STEP, step=10, total_steps=20, train_loss=1.0)
    job = feed(services, job, ProgressKind.CHECKPOINT, step=10, path=str(tmp_path / "pruned" / "step-10"))
    feed(services, job, ProgressKind.CHECKPOINT, step=20, path=str(adapter(tmp_path, 20)))
    assert checkpoint_steps(services, project, job) == [20]


def test_a_run_resumed_at_its_last_step_makes_the_adapter_it_wrote_the_model(
    services: Services, project: str, tmp_path: Path
) -> None:
    """Seen on CI: the first worker stopped before reading any checkpoint (the fast trainer had replaced the
    folders), the second resumed from the state saved at the last step and only wrote the adapter."""
    job = start(services, new_job(services, project))
    job = feed(services, job, ProgressKind.STARTED, total_steps=20)
    job = feed(services, job, ProgressKind.CHECKPOINT, step=10, path=str(tmp_path / "pruned" / "step-10"))
    done = feed(services, job, ProgressKind.COMPLETED, step=20, trained_tokens=200,
                adapter_path=str(adapter(tmp_path, 20)))  # fmt: skip
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert checkpoint_steps(services, project, job) == [20]
    model = services.models.resolve(project, str(done.fine_tuned_model))
    folder = adapter_path(LocalBlobStore(tmp_path / "blobs"), str(model.adapter_key))
    assert (folder / "adapter_model.safetensors").read_bytes() == b"weights 20"


EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
         "reference": "{{item.answer}}", "operation": "eq"}  # fmt: skip


def graded(services: Services, job: Job, step: int, passes: list[bool]) -> float:
    """Write what the trainer writes for an evaluation: 2 answers for each of len(passes) // 2 rows."""
    samples = []
    for index, ok in enumerate(passes):
        row, sample = divmod(index, 2)
        item = {"messages": [{"role": "user", "content": f"{row} + 1?"}], "answer": str(row + 1)}
        samples.append({"row": row, "sample": sample, "line": row + 1, "item": item,
                        "output_text": str(row + 1) if ok else "no", "reward": 1.0 if ok else 0.0, "sub_rewards": {},
                        "error": None, "parse_error": False, "prompt_tokens": 9, "completion_tokens": 2,
                        "finished": True})  # fmt: skip
    write_graded(RunFolder(services.runs.run_dir(job.id)).graded(step), samples)
    return sum(passes) / len(passes)


def test_each_rft_evaluation_is_a_run_of_the_jobs_eval_and_the_best_reward_is_the_model(
    services: Services, project: str, tmp_path: Path
) -> None:
    hook = services.webhooks.create(project, name="runs", url="https://93.184.215.14/hook",
                                    event_types=["eval.run.succeeded"])  # fmt: skip
    job = rft_job(services, project, EXACT)
    eval_id = job.extras["eval_id"]
    ev = services.evals.retrieve(project, eval_id)
    assert ev.name == job.id
    assert ev.metadata == {"fine_tuning_job_id": job.id}
    assert [c["type"] for c in ev.testing_criteria] == ["string_check"]
    claimed = services.runs.claim_next(WORKER)
    assert claimed is not None
    job = services.jobs.retrieve(project, job.id)
    assert services.runs.start(services.runs.validate(claimed)) is not None  # type: ignore[arg-type]

    outcomes = {0: [False] * 6, 2: [True, False] * 3, 4: [True] * 5 + [False], 6: [True] * 4 + [False] * 2,
                8: [True, False, False, False, False, False]}  # fmt: skip
    rewards = {step: graded(services, job, step, passes) for step, passes in outcomes.items() if step == 0}
    job = feed(services, job, ProgressKind.STARTED, total_steps=8, initial_validation={"valid_reward_mean": rewards[0]})
    for step in range(1, 9):
        values: dict[str, Any] = {"train_reward_mean": 0.5}
        if step in outcomes:
            rewards[step] = values["valid_reward_mean"] = graded(services, job, step, outcomes[step])
        job = feed(services, job, ProgressKind.STEP, step=step, total_steps=8, **values)
        if step in outcomes:
            feed(services, job, ProgressKind.CHECKPOINT, step=step, path=str(adapter(tmp_path, step)), metrics=values)
    with pytest.raises(Conflict, match="delete it once the job has ended"):
        services.evals.delete(project, eval_id)
    done = feed(services, job, ProgressKind.COMPLETED, step=8, best_step=4)

    runs = services.evals.list_runs(project, eval_id, PageRequest(limit=20)).data
    assert sorted((r.name, r.status.value) for r in runs) == [(f"step {s}", "completed") for s in (0, 2, 4, 6, 8)]
    for run in runs:
        step = int(run.metadata["step"])  # type: ignore[index]
        assert run.result_counts["total"] == 6
        assert run.pass_rate == pytest.approx(rewards[step]), "pass/fail grader: the pass rate is the reward"
        items = services.evals.list_items(project, eval_id, run.id, PageRequest(limit=20)).data
        assert sorted(i.datasource_item_id for i in items) == list(range(6))
        assert all(i.results[0]["name"] == ev.testing_criteria[0]["id"] for i in items)
        assert [i.status == "pass" for i in sorted(items, key=lambda i: i.datasource_item_id)] == outcomes[step]
    by_step = {int(r.metadata["step"]): r for r in runs}  # type: ignore[index]
    assert by_step[0].model == "tiny-llama"
    assert by_step[2].model == f"{done.fine_tuned_model}:ckpt-step-2"
    events = services.jobs.list_events(project, job.id, PageRequest(limit=100)).data
    linked = {e.data["step"]: e.data["eval_run_id"] for e in events if e.data and "eval_run_id" in e.data}
    assert linked == {step: run.id for step, run in by_step.items()}

    deliveries = services.webhooks.deliveries(project, hook.id, PageRequest(limit=20)).data
    assert sorted((d.event_type, json.loads(d.payload)["data"]["id"]) for d in deliveries) == sorted(
        ("eval.run.succeeded", run.id) for run in runs
    ), "each run is an eval.run.succeeded event to subscribers"

    checkpoints = services.jobs.list_checkpoints(project, job.id, PageRequest(limit=10)).data
    assert sorted(c.step_number for c in checkpoints) == [2, 4, 6], "the three best validation rewards stay"
    best = next(c for c in checkpoints if c.step_number == 4)
    assert best.fine_tuned_model_checkpoint == done.fine_tuned_model
    assert best.metrics["valid_reward_mean"] == pytest.approx(5 / 6)
    messages = [e.message for e in events]
    assert any("checkpoint at step 4, the best validation reward (0.833)" in m for m in messages), messages
    services.evals.delete(project, eval_id)  # the job has ended


def test_a_resumed_rft_job_replaces_the_eval_runs_of_the_steps_it_repeats(services: Services, project: str) -> None:
    job = rft_job(services, project, {"type": "multi", "name": "both", "calculate_output": "exact",
                                      "graders": {"exact": EXACT}})  # fmt: skip
    eval_id = job.extras["eval_id"]
    assert [c["name"] for c in services.evals.retrieve(project, eval_id).testing_criteria] == ["exact"]
    claimed = services.runs.claim_next(WORKER)
    assert claimed is not None
    assert services.runs.start(services.runs.validate(claimed)) is not None  # type: ignore[arg-type]
    job = services.jobs.retrieve(project, job.id)
    job = feed(services, job, ProgressKind.STARTED, total_steps=4)
    for step in (1, 2):
        graded(services, job, step, [True, False])
        job = feed(services, job, ProgressKind.STEP, step=step, total_steps=4, valid_reward_mean=0.5)
    job = feed(services, job, ProgressKind.STARTED, total_steps=4, resumed_from_step=1)  # crashed after step 1
    runs = services.evals.list_runs(project, eval_id, PageRequest(limit=20)).data
    assert [r.name for r in runs] == ["step 1"]
    items = services.evals.list_items(project, eval_id, runs[0].id, PageRequest(limit=20)).data
    assert {len(i.results) for i in items} == {2}, "a multi grader: each child, then the combined reward"
    assert {i.results[-1]["name"] for i in items} == {"both"}


MULTI = {"type": "multi", "name": "both", "calculate_output": "0.5 * exact + 0.5 * close",
         "graders": {"exact": EXACT, "close": {**EXACT, "name": "close", "operation": "ilike"}}}  # fmt: skip


def round_metrics(split: str, rewards: list[tuple[float, float]], parse_errors: int = 0) -> dict[str, float]:
    """What the trainer reports for one round of gradings of a multi grader (``training.rft``), ``split``-prefixed."""
    results = [
        GraderResult(
            reward=(exact + close) / 2,
            metadata=GraderMetadata(name="both", type="multi", execution_time=0.25,
                                    errors=GraderErrors(sample_parse_error=i < parse_errors)),
            sub_rewards={"exact": exact, "close": close},
        )
        for i, (exact, close) in enumerate(rewards)
    ]  # fmt: skip
    metrics = {
        "reward_mean": sum(r.reward for r in results) / len(results),
        "reasoning_tokens_mean": 5.0,
        "reasoning_tokens_count": 5.0 * len(results),
        "parse_error_mean": parse_errors / len(results),
        "grader_error_mean": 0.0,
        "sampling_s": 1.5,
        "grading_s": 0.5,
        **grading_metrics(results),
    }
    return {f"{split}_{k}": v for k, v in metrics.items()}


def test_rft_metric_events_and_results_csv_follow_the_spec_with_a_column_pair_per_child_grader(
    services: Services, project: str, tmp_path: Path
) -> None:
    job = rft_job(services, project, MULTI)
    claimed = services.runs.claim_next(WORKER)
    assert claimed is not None
    assert services.runs.start(services.runs.validate(claimed)) is not None  # type: ignore[arg-type]
    job = services.jobs.retrieve(project, job.id)
    before = round_metrics("valid", [(0.0, 1.0), (0.0, 0.0)], parse_errors=1)
    before["full_valid_mean_parse_error"] = before["valid_parse_error_mean"]
    graded(services, job, 0, [False, False])
    job = feed(services, job, ProgressKind.STARTED, total_steps=20, initial_validation=before)
    train = round_metrics("train", [(1.0, 1.0), (0.0, 1.0), (0.0, 0.0), (1.0, 1.0)]) | {
        "train_loss": 0.1, "train_kl": 0.01, "train_reward_std": 0.3, "train_training_s": 3.0, "iteration_s": 5.0,
    }  # fmt: skip
    job = feed(services, job, ProgressKind.STEP, step=10, total_steps=20, **train)  # no validation
    valid = round_metrics("valid", [(1.0, 1.0), (0.0, 1.0)])
    valid["full_valid_mean_parse_error"] = valid["valid_parse_error_mean"]
    graded(services, job, 20, [True, False])
    job = feed(services, job, ProgressKind.STEP, step=20, total_steps=20, **train, **valid)

    events = services.jobs.list_events(project, job.id, PageRequest(limit=100)).data
    by_step = {e.data["step"]: e for e in events if e.type.value == "metrics" and "scores" in (e.data or {})}
    assert sorted(by_step) == [0, 10, 20]
    plain, validated = by_step[10], by_step[20]
    assert plain.message == "Step 10/20, train mean reward=0.62"
    assert validated.message == (
        "Step 20/20, train mean reward=0.62, full validation mean reward=0.75, full validation mean parse error=0.00"
    )
    assert by_step[0].message == (
        "Before training: full validation mean reward=0.25, full validation mean parse error=0.50"
    )
    data = validated.data
    assert (data["step"], data["total_steps"]) == (20, 20)
    assert data["scores"] == {
        "train_reward_mean": 0.625,
        "valid_reward_mean": 0.75,
        "graders": [
            {"name": "exact", "type": "string_check", "train_reward_mean": 0.5, "valid_reward_mean": 0.5},
            {"name": "close", "type": "string_check", "train_reward_mean": 0.75, "valid_reward_mean": 1.0},
        ],
    }
    assert data["usage"]["samples"] == {
        "train_reasoning_tokens_mean": 5.0,
        "train_reasoning_tokens_count": 20.0,
        "valid_reasoning_tokens_mean": 5.0,
        "valid_reasoning_tokens_count": 10.0,
    }
    assert "graders" not in data["usage"], "no model grader: no grader token usage"
    [errors] = data["errors"]["graders"]
    assert (errors["name"], errors["type"]) == ("both", "multi")
    for split in ("train", "valid"):
        for kind in ("sample_parse_error", "invalid_variable_error", "other_error", "python_grader_runtime_error",
                     "python_grader_server_error", "model_grader_server_error"):  # fmt: skip
            assert errors[f"{split}_{kind}_mean"] == 0.0
            assert errors[f"{split}_{kind}_count"] == 0.0
    assert data["timing"]["step"] == {"sampling": 2.0, "training": 3.0, "eval": 2.0, "full_iteration": 5.0}
    assert data["timing"]["graders"] == [{"name": "both", "type": "multi", "train_execution_latency_mean": 0.25,
                                          "valid_execution_latency_mean": 0.25}]  # fmt: skip
    assert (data["train_mean_reward"], data["full_valid_mean_reward"]) == (0.625, 0.75)
    assert data["full_valid_mean_parse_error"] == 0.0

    # A step without validation leaves every valid_* key and the eval time out.
    data = plain.data
    assert data["scores"]["graders"][0] == {"name": "exact", "type": "string_check", "train_reward_mean": 0.5}
    assert set(data["usage"]["samples"]) == {"train_reasoning_tokens_mean", "train_reasoning_tokens_count"}
    assert not [k for k in data["errors"]["graders"][0] if k.startswith("valid_")]
    assert set(data["timing"]["step"]) == {"sampling", "training", "full_iteration"}
    assert not [k for k in data if k.startswith(("valid_", "full_valid_"))]
    assert by_step[0].data["errors"]["graders"][0]["valid_sample_parse_error_count"] == 1.0

    rows = list(csv.reader(io.StringIO(services.runs.results_csv(job).decode())))
    assert rows[0] == [
        "step", "train_reward_mean", "valid_reward_mean", "train_reasoning_tokens_mean",
        "valid_reasoning_tokens_mean", "full_valid_mean_parse_error",
        "train_reward_mean:exact", "valid_reward_mean:exact", "train_reward_mean:close", "valid_reward_mean:close",
        "train_reward_std", "train_loss", "train_kl", "train_parse_error_mean", "train_grader_error_mean",
        "valid_grader_error_mean",
    ]  # fmt: skip
    assert rows[1] == ["10", "0.625", "", "5.0", "", "", "0.5", "", "0.75", "", "0.3", "0.1", "0.01", "0.0", "0.0", ""]
    assert rows[2][:10] == ["20", "0.625", "0.75", "5.0", "5.0", "0.0", "0.5", "0.5", "0.75", "1.0"]
    feed(services, job, ProgressKind.CHECKPOINT, step=20, path=str(adapter(tmp_path, 20)), metrics={**train, **valid})
    [checkpoint] = services.jobs.list_checkpoints(project, job.id, PageRequest(limit=10)).data
    assert checkpoint.metrics["valid_reward_mean"] == 0.75
