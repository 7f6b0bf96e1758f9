"""Builds the concrete objects of one Tunery process from settings: the only module that knows them all.

Preparing a bundled base model needs torch; that runs in a child process (``python -m tunery.catalog``)
so the web process never imports the ML stack.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

from tunery.catalog import Catalog, parse_model_ref
from tunery.config import Settings
from tunery.domain.datasets import ExampleTokenizer
from tunery.domain.errors import Unavailable
from tunery.graders import PythonSandbox, SandboxLimits
from tunery.inference.engine import Engine
from tunery.services.chat import ChatService
from tunery.services.checkpoint_evals import CheckpointEvals
from tunery.services.container import Services
from tunery.services.deployments import DeploymentRules, DeploymentService
from tunery.services.eval_runs import EvalRunExecutor, RunnerSettings
from tunery.services.evals import EvalRules, EvalService
from tunery.services.files import FileRules, FileService
from tunery.services.graders import ChatJudge, GraderService
from tunery.services.jobs import JobRules, JobService
from tunery.services.keys import KeyService
from tunery.services.models import ModelService
from tunery.services.runs import RunService, RunSettings
from tunery.storage.blobs import BlobStore, LocalBlobStore, S3BlobStore
from tunery.storage.checkpoints import CheckpointStore, MetricStore
from tunery.storage.db import Database
from tunery.storage.deployments import DeploymentStore
from tunery.storage.evals import EvalStore
from tunery.storage.events import EventStore
from tunery.storage.files import FileStore
from tunery.storage.jobs import JobStore
from tunery.storage.models import ModelStore
from tunery.storage.projects import ApiKeyStore, ProjectStore
from tunery.training.spec import LoraSpec

log = logging.getLogger(__name__)


def build_catalog(settings: Settings) -> Catalog:
    return Catalog([parse_model_ref(ref) for ref in settings.models.base_models], settings.model_cache_dir)


def build_blob_store(settings: Settings) -> BlobStore:
    if settings.storage.blob_backend == "s3":
        if not settings.storage.s3_bucket:
            raise ValueError("TUNERY_STORAGE__S3_BUCKET must be set when blob_backend is 's3'")
        import boto3  # the optional 's3' extra

        client = boto3.client("s3", endpoint_url=settings.storage.s3_endpoint_url)
        # Each server caches what it downloads under its own data folder (adapters, training copies).
        cache = settings.data_dir / "s3-cache"
        return S3BlobStore(
            settings.storage.s3_bucket,
            settings.storage.s3_prefix,
            client,
            cache_dir=cache,
            cache_max_bytes=settings.storage.s3_cache_max_bytes,
        )
    return LocalBlobStore(settings.data_dir / "blobs")


def prepare_base_model(settings: Settings, name: str | None = None, *, weights: bool = False) -> None:
    """Make a base model's tokenizer (and optionally weights) ready in the model cache.

    Runs in a child process because it imports transformers; a no-op when already prepared.
    """
    catalog = build_catalog(settings)
    spec = catalog.get(name) if name else catalog.default
    if catalog.is_prepared(spec.name, "weights" if weights else "tokenizer"):
        return
    ref = next(r for r in settings.models.base_models if parse_model_ref(r).name == spec.name)
    command = [sys.executable, "-m", "tunery.catalog", "prepare", ref, "--cache-dir", str(settings.model_cache_dir)]
    if weights:
        command.append("--all")
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def build_services(
    settings: Settings, *, background_checks: bool = True, engine: Callable[[], Engine] | None = None
) -> Services:
    """Everything one process needs. ``engine`` replaces the serving engine (tests pass a fake)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = Database(settings.database_url)
    database.upgrade()
    catalog = build_catalog(settings)

    @cache
    def default_tokenizer() -> ExampleTokenizer | None:
        try:
            return catalog.chat_tokenizer(catalog.default.name)
        except Unavailable as exc:
            log.warning("file statistics will have no token counts: %s", exc.message)
            return None

    blobs = build_blob_store(settings)
    files = FileService(
        FileStore(database),
        blobs,
        FileRules(
            max_upload_bytes=settings.files.max_upload_bytes,
            min_examples=settings.files.min_examples,
            max_reported_problems=settings.files.max_reported_problems,
            max_files_per_project=settings.files.max_files_per_project,
        ),
        default_tokenizer,
        background=background_checks,
    )
    keys = KeyService(ProjectStore(database), ApiKeyStore(database))
    jobs_store, events, checkpoints = JobStore(database), EventStore(database), CheckpointStore(database)
    model_store = ModelStore(database)
    models = ModelService(catalog, model_store, checkpoints, jobs_store)
    jobs = JobService(
        jobs_store,
        events,
        checkpoints,
        model_store,
        files,
        models,
        JobRules(
            max_jobs_per_project=settings.jobs.max_jobs_per_project,
            max_waiting_per_project=settings.jobs.max_waiting_per_project,
        ),
    )

    def base_weights(name: str) -> Path:
        prepare_base_model(settings, name, weights=True)
        return catalog.weights_dir(name)

    worker = settings.worker
    runs = RunService(
        jobs_store,
        events,
        checkpoints,
        MetricStore(database),
        model_store,
        files,
        blobs,
        base_weights,
        RunSettings(
            run_root=settings.run_root,
            metrics_every=worker.metrics_every,
            max_seq_len=worker.max_seq_len,
            lora=LoraSpec(
                r=worker.lora_r,
                alpha=worker.lora_alpha,
                dropout=worker.lora_dropout,
                target_modules=tuple(worker.lora_target_modules) if worker.lora_target_modules else None,
            ),
            dtype=worker.dtype,
            device=worker.device,
            num_threads=worker.num_threads,
            processes=worker.processes,
            stale_after_s=worker.stale_after_s,
            precision_cache=precision_cache(settings),
        ),
    )
    deployments = DeploymentService(
        DeploymentStore(database),
        models,
        DeploymentRules(
            max_per_project=settings.deployments.max_per_project,
            inactivity_days=settings.deployments.inactivity_days,
        ),
        background=background_checks,
    )
    chat = ChatService(models, deployments, catalog, blobs, engine or (lambda: build_engine(settings, base_weights)))
    deployments.set_warmup(chat.warm)
    limits = settings.evals
    evals = EvalService(
        EvalStore(database),
        files,
        chat,
        EvalRules(
            max_items_per_run=limits.max_items_per_run,
            max_completion_tokens=limits.max_completion_tokens,
            default_completion_tokens=limits.default_completion_tokens,
            max_run_tokens=limits.max_run_tokens,
        ),
    )
    checkpoint_evals = CheckpointEvals(evals, jobs, jobs_store, checkpoints, models)
    models.set_best_checkpoint(checkpoint_evals.best_checkpoint)
    graders = GraderService(chat, build_sandbox(settings))
    return Services(
        keys=keys, files=files, jobs=jobs, models=models, runs=runs, deployments=deployments, chat=chat, evals=evals,
        checkpoint_evals=checkpoint_evals, graders=graders,
    )  # fmt: skip


def build_eval_executor(settings: Settings, services: Services) -> EvalRunExecutor:
    """What executes eval runs: batched sampling on the chat engine, model graders judged by it too."""
    checkpoint_evals = services.checkpoint_evals
    return EvalRunExecutor(
        services.evals,
        services.chat,
        lambda project_id: ChatJudge(services.chat, project_id),
        RunnerSettings(batch_size=settings.evals.batch_size),
        resolve_target=checkpoint_evals.resolve_target,
        on_finished=checkpoint_evals.finished,
        sandbox=services.graders.sandbox,
    )


def build_sandbox(settings: Settings) -> PythonSandbox:
    """The python graders' sandbox pool; graders may never touch the data directory."""
    limits = settings.graders
    denied = {str(settings.data_dir.resolve()), str(settings.model_cache_dir.resolve())}
    if settings.storage.blob_backend == "local":
        denied.add(str((settings.data_dir / "blobs").resolve()))
    return PythonSandbox(
        SandboxLimits(
            wall_seconds=limits.python_timeout_s,
            cpu_seconds=limits.python_cpu_s,
            memory_bytes=limits.python_memory_mb * 1024**2,
            workers=limits.python_workers,
            denied_paths=tuple(sorted(denied)),
        )
    )


def precision_cache(settings: Settings) -> Path:
    """Where dtype ``auto`` keeps this machine's measured fp32-or-bf16 verdict (``hardware.precision``)."""
    return settings.data_dir / "cache" / "precision.json"


def build_engine(settings: Settings, base_weights: Callable[[str], Path]) -> Engine:
    """The serving engine; built on the first chat request, so serving files and jobs never loads torch."""
    inference = settings.inference
    from tunery.inference.hf_engine import HFEngine  # transformers + peft: only the edge imports it

    return HFEngine(
        base_weights,
        max_loaded_adapters=inference.max_loaded_adapters,
        max_batch_size=inference.max_batch_size,
        device=inference.device,
        dtype=inference.dtype,
        num_threads=inference.num_threads,
        precision_cache=precision_cache(settings),
    )
