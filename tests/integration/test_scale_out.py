"""Many servers, one state: two ``tunery serve`` processes (each with its worker thread and its own data folder)
on one PostgreSQL schema and one bucket of a real S3 server (moto, a separate process over HTTP).

A file uploaded through server A is used by a job created through server B, trained by whichever worker claims
it (data parallel, 2 processes), deployed through A and answered through B, whose adapter comes from the bucket
into B's own cache. Stopping the server whose worker trains a job hands the job to the other server's worker
(recovered once: one event), which resumes it from the state the first one saved at its last epoch end (shared
through the bucket), not from step 0. Needs ``TUNERY_TEST_DATABASE_URL`` (skipped without it) and moto's server extra.

Run alone: ``.venv/bin/pytest tests/integration/test_scale_out.py``
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from tests.ceilings import ceiling
from tests.integration.harness import tunery
from tests.integration.test_fine_tuning import at_step, colour_jsonl, finished, upload, wait_for
from tests.integration.test_serving import PROMPT, deploy
from tunery.testing.databases import POSTGRES_URL_VARIABLE, fresh_database
from tunery.testing.s3_server import CREDENTIALS, fresh_bucket, s3_client

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

StartServer = Callable[[dict[str, str], Path], tuple[subprocess.Popen[str], str]]


def two_servers(
    tmp_path: Path, tiny_model_dir: Path, s3_endpoint: str, start_server: StartServer, database_url: str, **extra: str
) -> tuple[str, list[tuple[subprocess.Popen[str], openai.OpenAI]]]:
    """Servers a and b (each with a worker and its own data folder) on one schema and a fresh bucket."""
    bucket = fresh_bucket(s3_client(s3_endpoint))
    shared = {
        **os.environ,
        **CREDENTIALS,
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
        "TUNERY_STORAGE__DATABASE_URL": database_url,
        "TUNERY_STORAGE__BLOB_BACKEND": "s3",
        "TUNERY_STORAGE__S3_BUCKET": bucket,
        "TUNERY_STORAGE__S3_ENDPOINT_URL": s3_endpoint,
        "TUNERY_MODELS__BASE_MODELS": f'["tiny-llama={tiny_model_dir}"]',
        "TUNERY_WORKER__NUM_THREADS": "1",
        "TUNERY_EVALS__RUNNER_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    key = tunery({**shared, "TUNERY_DATA_DIR": str(tmp_path / "cli")}, "keys", "create", "--project", "itest")
    servers = []
    for name in ("a", "b"):
        env = {**shared, "TUNERY_DATA_DIR": str(tmp_path / name)}
        proc, base = start_server(env, tmp_path / f"server-{name}.log")
        servers.append((proc, openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)))
    return bucket, servers


def postgres_url() -> str:
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.skip(f"{POSTGRES_URL_VARIABLE} is not set")
    return url


def test_two_servers_share_one_database_and_one_bucket(
    tmp_path: Path, tiny_model_dir: Path, s3_endpoint: str, start_server: StartServer
) -> None:
    with fresh_database(tmp_path, postgres_url()) as database:
        bucket, servers = two_servers(
            tmp_path, tiny_model_dir, s3_endpoint, start_server, database.url.render_as_string(hide_password=False)
        )
        (_, a), (_, b) = servers

        file_id = upload(a, colour_jsonl(12), "scale-train.jsonl")
        assert b.files.retrieve(file_id).status == "processed"
        job = b.fine_tuning.jobs.create(
            model="tiny-llama",
            training_file=file_id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
            extra_body={"distributed": {"processes": 2}},
        )
        assert (job.model_extra or {}).get("distributed") == {"processes": 2}
        done = wait_for(a, job.id, finished)
        assert done.status == "succeeded", done.error
        assert done.fine_tuned_model

        deployment = deploy(a, "scaled", done.fine_tuned_model)
        assert deployment["properties"]["provisioningState"] in {"Accepted", "Succeeded"}
        reply = b.chat.completions.create(model="scaled", messages=PROMPT, temperature=0, max_tokens=8)  # type: ignore[arg-type]
        assert reply.choices[0].message.content
        again = a.chat.completions.create(model="scaled", messages=PROMPT, temperature=0, max_tokens=8)  # type: ignore[arg-type]
        assert again.choices[0].message.content == reply.choices[0].message.content, "one adapter, two servers"

        for name in ("a", "b"):  # each server fetched the adapter from the bucket into its own cache
            cached = list((tmp_path / name / "s3-cache").rglob("adapter_model.safetensors"))
            assert cached, f"server {name} has no cached adapter"
        keys = [o["Key"] for o in s3_client(s3_endpoint).list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert any(k.endswith("adapter_model.safetensors") for k in keys), keys


def test_stopping_the_worker_mid_job_hands_the_job_to_the_other_server(
    tmp_path: Path, tiny_model_dir: Path, s3_endpoint: str, start_server: StartServer
) -> None:
    with fresh_database(tmp_path, postgres_url()) as database:
        _, servers = two_servers(
            tmp_path,
            tiny_model_dir,
            s3_endpoint,
            start_server,
            database.url.render_as_string(hide_password=False),
            # the handover waits this long; short, but not so short that a busy machine delays the running
            # worker's own heartbeat past it (at 3 s, a loaded CI box saw the survivor's job recovered twice)
            TUNERY_WORKER__STALE_AFTER_S=str(int(ceiling(2))),
        )
        file_id = upload(servers[0][1], colour_jsonl(12), "handover-train.jsonl")
        job = servers[1][1].fine_tuning.jobs.create(
            model="tiny-llama",
            training_file=file_id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 8, "batch_size": 1}}},
        )
        wait_for(servers[0][1], job.id, at_step(13))  # past the first epoch end (12 steps): a state is saved
        trainer = [i for i, name in enumerate("ab") if (tmp_path / name / "runs" / job.id).is_dir()]
        assert len(trainer) == 1, [sorted(p.name for p in (tmp_path / n / "runs" / job.id).rglob("*")) for n in "ab"]
        stopped, survivor = servers[trainer[0]][0], servers[1 - trainer[0]][1]
        stopped.terminate()
        stopped.wait(timeout=60)

        done = wait_for(survivor, job.id, finished)
        assert done.status == "succeeded", done.error
        events = [e.message for e in survivor.fine_tuning.jobs.list_events(job.id, limit=100).data]
        assert sum("worker restarted" in m for m in events) == 1, events
        resumed = [int(m.split("step ")[1].rstrip(".")) for m in events if m.startswith("Job resumed from step ")]
        assert resumed, events
        assert resumed[0] >= 12, "resumed from the first server's saved state, not from step 0"
        assert f"Fetched the job's saved state (step {resumed[0]}) from the shared store." in events
        assert (tmp_path / "ab"[1 - trainer[0]] / "runs" / job.id).is_dir(), "the other server's worker trained it"
