"""A job paused or interrupted on one server resumes on another from its last saved state, not from step 0.

Two "machines": separate data folders (so separate run folders and S3 caches) sharing one database and one
bucket on the moto S3 server (``s3_endpoint``). The trainer is replaced by scripted progress records and a
state folder written as the trainer writes it.
Run: ``.venv/bin/pytest tests/unit/services/test_cross_machine_resume.py``
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.services.test_runs import adapter, feed, new_job, start
from tunery.bootstrap import build_services
from tunery.config import ModelsSettings, Settings, StorageSettings
from tunery.domain.jobs import Job, JobStatus
from tunery.domain.pagination import PageRequest
from tunery.services.container import Services
from tunery.services.shared_state import shared_state_prefix
from tunery.storage import Database, JobStore
from tunery.testing.s3_server import CREDENTIALS, fresh_bucket, s3_client
from tunery.training.progress import STATE_DIR, STATE_FILE, ProgressKind

WORKER = "worker-test"  # test_runs' helpers claim as this worker (on machine A)


@pytest.fixture
def machines(
    tmp_path: Path, tiny_model_dir: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Services, Services]]:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    bucket = fresh_bucket(s3_client(s3_endpoint))
    storage = StorageSettings(
        database_url=f"sqlite:///{tmp_path / 'shared.db'}", blob_backend="s3", s3_bucket=bucket,
        s3_endpoint_url=s3_endpoint,
    )  # fmt: skip
    models = ModelsSettings(base_models=[f"tiny-llama={tiny_model_dir}"])
    built = [
        build_services(Settings(data_dir=tmp_path / name, storage=storage, models=models), background_checks=False)
        for name in ("a", "b")
    ]
    yield built[0], built[1]
    for services in built:
        services.close()


def write_state(services: Services, job: Job, step: int) -> dict[str, bytes]:
    """A state folder as the trainer saves it (adapter, optimizer/scheduler/RNG file, state.json)."""
    folder = services.runs.run_dir(job.id) / STATE_DIR
    files = {
        "adapter/adapter_config.json": b'{"r": 4}',
        "adapter/adapter_model.safetensors": b"adapter at step %d" % step,
        "trainer.pt": b"optimizer, scheduler and rng at step %d" % step,
        STATE_FILE: json.dumps({"step": step, "epoch": 0, "train_examples": 12}).encode(),
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


def read_state(services: Services, job: Job) -> dict[str, bytes]:
    folder = services.runs.run_dir(job.id) / STATE_DIR
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def messages(services: Services, job: Job) -> list[str]:
    return [e.message for e in services.jobs.list_events(job.project_id, job.id, PageRequest(limit=100)).data]


def shared_keys(services: Services, job: Job) -> list[str]:
    return [key for key, _ in services.runs._blobs.listing(shared_state_prefix(job.id) + "/")]


def test_a_job_paused_on_one_server_resumes_on_another(machines: tuple[Services, Services], tmp_path: Path) -> None:
    a, b = machines
    project = a.keys.create("p").project.id
    job = start(a, new_job(a, project))
    job = feed(a, job, ProgressKind.STARTED, total_steps=40)
    for step in (1, 2, 3):
        job = feed(a, job, ProgressKind.STEP, step=step, total_steps=40, train_loss=1.0)
    write_state(a, job, 2)  # an epoch-end save...
    feed(a, job, ProgressKind.CHECKPOINT, step=2, path=str(adapter(tmp_path, 2)), metrics={})
    saved = write_state(a, job, 3)  # ...then the pause's
    a.jobs.pause(project, job.id)
    paused = feed(a, job, ProgressKind.PAUSED, step=3, state_path="state", checkpoint=str(adapter(tmp_path, 3)))
    assert paused.status is JobStatus.PAUSED
    assert a.runs.trainer_exited(paused, 0, "").worker_id is None  # its trainer is gone: free for any worker
    assert sorted(shared_keys(a, job)) == sorted(
        [f"{shared_state_prefix(job.id)}/latest.json"] + [f"{shared_state_prefix(job.id)}/step-3/{n}" for n in saved]
    ), "one save is shared: the older one was replaced"

    b.jobs.resume(project, job.id)  # any server takes the request; machine B's worker takes the job
    claimed = b.runs.claim_next("worker-b")
    assert claimed is not None
    assert claimed.status is JobStatus.RESUMING
    spec = b.runs.start(claimed)
    assert spec is not None
    assert spec.resume_from == str(b.runs.run_dir(job.id) / STATE_DIR)
    assert read_state(b, job) == saved
    assert b.jobs.retrieve(project, job.id).status is JobStatus.RUNNING
    events = messages(b, job)
    assert "Fetched the job's saved state (step 3) from the shared store." in events
    assert "Job resumed from step 3." in events

    running = feed(b, b.jobs.retrieve(project, job.id), ProgressKind.STARTED, total_steps=4, resumed_from_step=3)
    feed(b, running, ProgressKind.CHECKPOINT, step=4, path=str(adapter(tmp_path, 4)), metrics={})
    done = feed(b, running, ProgressKind.COMPLETED, step=4, trained_tokens=40)
    assert done.status is JobStatus.SUCCEEDED
    assert shared_keys(b, job) == [], "the shared state goes with the job's end"


def test_a_dead_workers_job_continues_on_another_server_from_its_last_checkpoint(
    machines: tuple[Services, Services], tmp_path: Path
) -> None:
    a, b = machines
    project = a.keys.create("p").project.id
    job = start(a, new_job(a, project))
    job = feed(a, job, ProgressKind.STARTED, total_steps=40)
    job = feed(a, job, ProgressKind.STEP, step=5, total_steps=40, train_loss=1.0)
    saved = write_state(a, job, 5)
    feed(a, job, ProgressKind.CHECKPOINT, step=5, path=str(adapter(tmp_path, 5)), metrics={})
    JobStore(Database(f"sqlite:///{tmp_path / 'shared.db'}")).heartbeat(job.id, WORKER, 0.0)  # machine A is gone

    assert b.runs.recover("worker-b", lambda _pid, _job: False, lambda _pid: None) == 1
    assert "The worker restarted; the job continues from its last saved state (step 5)." in messages(b, job)
    claimed = b.runs.claim_next("worker-b")
    assert claimed is not None
    assert claimed.status is JobStatus.RESUMING
    assert b.runs.start(claimed) is not None
    assert read_state(b, job) == saved


def test_a_local_state_newer_than_the_shared_one_is_kept(machines: tuple[Services, Services]) -> None:
    a, _ = machines
    project = a.keys.create("p").project.id
    job = start(a, new_job(a, project))
    write_state(a, job, 2)
    assert a.runs.share_state(job.id) == 2
    newer = write_state(a, job, 4)  # saved, but its record was never read (the worker died first)
    assert a.runs.fetch_state(job.id) == 4
    assert read_state(a, job) == newer
    assert a.runs.resume_point(job.id) == 4
