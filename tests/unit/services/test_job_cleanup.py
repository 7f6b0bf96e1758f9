"""Cancelling or deleting a paused job removes the trainer state its pause shared in the blob store.

The pause copies the trainer's state (adapter, optimizer, data position) to ``jobs/<id>/state/`` so any server
can resume the job; once the job can never resume, nothing else would remove it. Checked on local disk and on
S3 (the moto server): the state goes, and what is still used stays — a cancelled job's checkpoint (deployable),
another job's state and checkpoints, the uploaded file the job was made from.
Run: ``.venv/bin/pytest tests/unit/services/test_job_cleanup.py``
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.services.test_cross_machine_resume import write_state
from tests.unit.services.test_runs import WORKER, adapter, feed, new_job
from tunery.bootstrap import build_services
from tunery.config import ModelsSettings, Settings, StorageSettings
from tunery.domain.errors import NotFound
from tunery.domain.jobs import Job, JobStatus
from tunery.domain.pagination import PageRequest
from tunery.services.container import Services
from tunery.services.jobs import training_copy_key
from tunery.services.runs import ADAPTER_FILES
from tunery.services.shared_state import shared_state_prefix
from tunery.testing.s3_server import CREDENTIALS, fresh_bucket, s3_client
from tunery.training.progress import ProgressKind


@pytest.fixture(params=["local", "s3"])
def services(
    request: pytest.FixtureRequest, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Services]:
    storage = StorageSettings(database_url=f"sqlite:///{tmp_path / 'tunery.db'}")
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        for name, value in CREDENTIALS.items():
            monkeypatch.setenv(name, value)
        storage = storage.model_copy(update={
            "blob_backend": "s3", "s3_bucket": fresh_bucket(s3_client(endpoint)), "s3_endpoint_url": endpoint,
        })  # fmt: skip
    models = ModelsSettings(base_models=[f"tiny-llama={tiny_model_dir}"])
    settings = Settings(data_dir=tmp_path / "data", storage=storage, models=models)
    built = build_services(settings, background_checks=False)
    yield built
    built.close()


def keys(services: Services, prefix: str) -> list[str]:
    return sorted(key for key, _ in services.runs._blobs.listing(prefix))


def running(services: Services, project: str) -> Job:
    """A job claimed and started by the test's worker (any job may be first in the queue)."""
    job = new_job(services, project)
    claimed = services.runs.claim_next(WORKER)
    assert claimed is not None
    assert claimed.id == job.id
    queued = services.runs.validate(claimed)
    assert queued is not None
    assert services.runs.start(queued) is not None
    started = services.jobs.retrieve(project, job.id)
    return feed(services, started, ProgressKind.STARTED, total_steps=40)


def paused(services: Services, project: str, tmp_path: Path, step: int) -> Job:
    """A job paused at ``step``: a pinned checkpoint and its state shared in the blob store, trainer gone."""
    job = running(services, project)
    job = feed(services, job, ProgressKind.STEP, step=step, total_steps=40, train_loss=1.0)
    write_state(services, job, step)
    services.jobs.pause(project, job.id)
    checkpoint = adapter(tmp_path, step)  # each job of a test pauses at its own step
    done = feed(services, job, ProgressKind.PAUSED, step=step, state_path="state", checkpoint=str(checkpoint))
    assert done.status is JobStatus.PAUSED
    services.runs.trainer_exited(done, 0, "")
    assert keys(services, shared_state_prefix(job.id) + "/"), "the pause shared the trainer's state"
    return services.jobs.retrieve(project, job.id)


def adapter_blobs(services: Services, project: str, job: Job) -> list[str]:
    checkpoints = services.jobs.list_checkpoints(project, job.id, PageRequest(limit=10)).data
    assert checkpoints
    return [f"{c.adapter_key}/{name}" for c in checkpoints for name in ADAPTER_FILES]


def test_deleting_a_paused_job_removes_its_shared_state_and_keeps_what_is_used(
    services: Services, tmp_path: Path
) -> None:
    project = services.keys.create("p").project.id
    other = paused(services, project, tmp_path, 4)  # another paused job: its state must survive
    other_state = keys(services, shared_state_prefix(other.id) + "/")
    other_adapters = adapter_blobs(services, project, other)
    job = paused(services, project, tmp_path, 3)
    uploaded = job.training_file

    services.jobs.delete(project, job.id)

    assert keys(services, f"jobs/{job.id}/") == [], "its shared state and its copies of its data are gone"
    with pytest.raises(NotFound):
        services.jobs.retrieve(project, job.id)
    assert keys(services, shared_state_prefix(other.id) + "/") == other_state
    assert all(services.runs._blobs.exists(key) for key in other_adapters), "another job's checkpoints stay"
    assert services.runs._blobs.exists(training_copy_key(other.id, "training"))
    record, stream = services.files.content(project, uploaded)  # the uploaded file the job was made from stays
    assert stream.read()
    assert record.status.value == "processed"

    services.jobs.resume(project, other.id)  # and the other job still resumes from its shared state
    assert services.runs.resume_point(other.id) == 4


def test_cancelling_a_paused_job_removes_its_shared_state_and_keeps_its_checkpoint(
    services: Services, tmp_path: Path
) -> None:
    project = services.keys.create("p").project.id
    job = paused(services, project, tmp_path, 3)
    checkpoint_blobs = adapter_blobs(services, project, job)

    cancelled = services.jobs.cancel(project, job.id)

    assert cancelled.status is JobStatus.CANCELLED
    assert keys(services, shared_state_prefix(job.id) + "/") == []
    assert all(services.runs._blobs.exists(key) for key in checkpoint_blobs), "its checkpoint is still deployable"
    checkpoint = services.jobs.list_checkpoints(project, job.id, PageRequest(limit=10)).data[0]
    resolved = services.models.resolve(project, checkpoint.fine_tuned_model_checkpoint)
    assert resolved.adapter_key == checkpoint.adapter_key
    assert services.runs._blobs.exists(training_copy_key(job.id, "training"))

    services.jobs.delete(project, job.id)  # deleting it later removes the rest of jobs/<id>/
    assert keys(services, f"jobs/{job.id}/") == []
