"""Builds the concrete objects of one Tunery process from settings: the only module that knows them all.

Preparing a bundled base model needs torch; that runs in a child process (``python -m tunery.catalog``)
so the web process never imports the ML stack.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

import psutil

from tunery.catalog import Catalog, parse_model_ref
from tunery.config import Settings
from tunery.domain.datasets import ExampleTokenizer
from tunery.domain.errors import ServiceError, Unavailable
from tunery.domain.webhooks import Target
from tunery.graders import PythonSandbox, SandboxLimits
from tunery.inference.engine import Engine
from tunery.inference.llama_cpp import LlamaCppEngine, LlamaCppOptions, find_llama_server
from tunery.inference.process import EngineProcess, HFEngineOptions
from tunery.inference.routing import RoutedEngine
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
from tunery.services.migration import MigrationService
from tunery.services.models import ModelService
from tunery.services.outbound import UrlPolicy
from tunery.services.outbox import OutboxRules, OutboxSender
from tunery.services.permissions import PermissionService
from tunery.services.portability import (
    ExportCacheRules,
    ExportService,
    HubSettings,
    ImportRules,
    ImportService,
    JobHubPush,
)
from tunery.services.rft_evals import RftEvals
from tunery.services.runs import RunService, RunSettings
from tunery.services.trackers import TrackerRunner, TrackerSettings
from tunery.services.uploads import UploadRules, UploadService
from tunery.services.webhooks import WebhookService
from tunery.storage.blobs import BlobStore, LocalBlobStore, S3BlobStore
from tunery.storage.checkpoints import CheckpointStore, MetricStore
from tunery.storage.db import Database
from tunery.storage.deployments import DeploymentStore
from tunery.storage.disk import SpaceReserve, disk_full, is_disk_full
from tunery.storage.evals import EvalStore
from tunery.storage.events import EventStore
from tunery.storage.files import FileStore
from tunery.storage.jobs import JobStore
from tunery.storage.models import ModelStore
from tunery.storage.permissions import PermissionStore
from tunery.storage.portability import ImportedModelStore, MigrationStore
from tunery.storage.projects import ApiKeyStore, ProjectStore
from tunery.storage.uploads import UploadStore
from tunery.storage.webhooks import WebhookStore
from tunery.training.spec import LoraSpec

log = logging.getLogger(__name__)
# How long a failed base-model preparation is answered from memory before it is tried again.
PREPARE_RETRY_S = 300.0


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
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        log.error("preparing base model %s failed (exit %d):\n%s", spec.name, done.returncode, done.stderr)
        if is_disk_full(OSError(done.stderr)):
            raise disk_full(f"preparing base model '{spec.name}'")
        raise Unavailable(f"Preparing base model '{spec.name}' failed; the server log says why.")


class BaseWeights:
    """A local folder with a base model's weights, preparing it on first use.

    A failed preparation (a full disk, say) is remembered for ``retry_after_s``: requests in that time get
    the same clear error at once instead of each running the minutes-long preparation again.
    """

    def __init__(self, settings: Settings, catalog: Catalog, *, retry_after_s: float = PREPARE_RETRY_S) -> None:
        self._settings = settings
        self._catalog = catalog
        self._retry_after_s = retry_after_s
        self._failures: dict[str, tuple[float, ServiceError]] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str) -> Path:
        with self._lock:
            failed = self._failures.get(name)
            if failed is not None and time.monotonic() - failed[0] < self._retry_after_s:
                error = failed[1]
                raise type(error)(error.message, param=error.param, code=error.code)
            try:
                prepare_base_model(self._settings, name, weights=True)
            except ServiceError as exc:
                self._failures[name] = (time.monotonic(), exc)
                raise
            self._failures.pop(name, None)
        return self._catalog.weights_dir(name)


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
        reserve=SpaceReserve(settings.data_dir / ".space-reserve"),
    )
    keys = KeyService(ProjectStore(database), ApiKeyStore(database))
    jobs_store, events, checkpoints = JobStore(database), EventStore(database), CheckpointStore(database)
    model_store, deployment_store = ModelStore(database), DeploymentStore(database)
    imported, migrated = ImportedModelStore(database), MigrationStore(database)
    permission_store = PermissionStore(database)
    models = ModelService(
        catalog, model_store, checkpoints, jobs_store, imported=imported, migrations=migrated,
        shared=permission_store.shared_checkpoint,
    )  # fmt: skip
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
            hub_token_configured=bool(settings.portability.hf_token),
        ),
        metrics=MetricStore(database),
        blobs=blobs,
    )

    base_weights = BaseWeights(settings, catalog)

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
            keep_checkpoints=worker.keep_checkpoints,
            warmup_ratio=worker.warmup_ratio,
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
            rft_temperature=worker.rft_temperature,
            rft_kl_beta=worker.rft_kl_beta,
            rft_max_new_tokens=worker.rft_max_new_tokens,
            grader_concurrency=worker.grader_concurrency,
        ),
        imported=imported,
        deployments=deployment_store,
        shared=permission_store.shared_checkpoint,
        base_ready=lambda name: catalog.is_prepared(name, "weights"),
    )
    deployments = DeploymentService(
        deployment_store,
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
    rft_evals = RftEvals(evals.store, jobs_store)
    evals.guard_deletes(rft_evals.check_delete)
    jobs.set_eval_creator(rft_evals.create_eval)  # an RFT job's evaluations become runs of its own eval
    runs.set_rft_evals(rft_evals)
    models.set_best_checkpoint(checkpoint_evals.best_checkpoint)
    graders = GraderService(chat, build_sandbox(settings))
    jobs.set_judge_check(graders.check_models)  # RFT model graders: the judge must be a model the project uses
    runs.set_judge(lambda project_id: ChatJudge(chat, project_id))  # and judge through the chat service
    portability = settings.portability
    exports = ExportService(
        models, blobs, base_weights, settings.data_dir / "exports",
        HubSettings(endpoint=portability.hf_endpoint, token=portability.hf_token),
        ExportCacheRules(max_bytes=portability.export_cache_max_bytes, max_age_s=portability.export_cache_max_age_s),
    )  # fmt: skip
    models.on_delete(exports.forget)
    imports = ImportService(
        models, catalog, imported, blobs, base_weights,
        ImportRules(allowed_dir=portability.import_allowed_dir, max_archive_bytes=portability.max_import_bytes),
        settings.data_dir / "imports",
    )  # fmt: skip
    migrations = MigrationService(migrated, files, jobs, models, chat)
    hooks = settings.webhooks
    webhook_store = WebhookStore(database)
    trackers = TrackerRunner(
        jobs_store,
        MetricStore(database),
        TrackerSettings(
            wandb_dir=settings.integrations.wandb_dir or settings.data_dir / "wandb",
            wandb_mode=settings.integrations.wandb_mode,
            mlflow_tracking_uri=settings.integrations.mlflow_tracking_uri,
            timeout_s=hooks.tracker_timeout_s,
        ),
    )
    hub_push = JobHubPush(jobs_store, exports)
    urls = UrlPolicy(allow_private=hooks.allow_private_urls, allowed_hosts=tuple(hooks.allowed_hosts))
    outbox = OutboxSender(
        webhook_store,
        events,
        lambda delivery: hub_push(delivery) if delivery.target is Target.HUB else trackers(delivery),
        OutboxRules(
            retry_base_s=hooks.retry_base_s,
            retry_max_s=hooks.retry_max_s,
            give_up_after_s=hooks.give_up_after_s,
            timeout_s=hooks.timeout_s,
            tracker_timeout_s=hooks.tracker_timeout_s,
        ),
        urls,
    )
    webhooks = WebhookService(webhook_store, outbox.send, urls)
    return Services(
        keys=keys, files=files, jobs=jobs, models=models, runs=runs, deployments=deployments, chat=chat, evals=evals,
        checkpoint_evals=checkpoint_evals, graders=graders, exports=exports, imports=imports, migrations=migrations,
        webhooks=webhooks, outbox=outbox,
        permissions=PermissionService(permission_store, checkpoints, keys, deployments.drop_serving),
        uploads=UploadService(
            UploadStore(database), blobs, files,
            UploadRules(
                max_upload_bytes=settings.files.max_multipart_bytes,
                max_part_bytes=settings.files.max_part_bytes,
                import_dirs=tuple(settings.files.import_dirs),
                urls=UrlPolicy(
                    allow_private=settings.files.import_allow_private_urls,
                    allowed_hosts=tuple(settings.files.import_allowed_hosts),
                    setting="TUNERY_FILES__IMPORT_ALLOW_PRIVATE_URLS",
                    hosts_setting="TUNERY_FILES__IMPORT_ALLOWED_HOSTS",
                ),
            ),
        ),
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
    """The serving engine, built on the first chat request, so serving files and jobs never loads torch.

    ``inference.isolation = "process"`` (the default) runs it in a supervised child process; ``"thread"`` runs
    it in this process.
    """
    inference = settings.inference
    options = HFEngineOptions(
        max_loaded_adapters=inference.max_loaded_adapters,
        adapter_cache_mb=inference.adapter_cache_mb,
        max_batch_size=inference.max_batch_size,
        device=inference.device,
        dtype=inference.dtype,
        num_threads=inference.num_threads,
        precision_cache=precision_cache(settings),
        adapter_timeout_s=inference.adapter_timeout_s,
        max_prefill_tokens=inference.max_prefill_tokens,
        prefix_cache_mb=inference.prefix_cache_mb,
        lean_forward=inference.lean_forward,
        native_attention=inference.native_attention,
        kernel_cache=settings.data_dir / "cache" / "kernels",
    )

    def tunery_engine() -> Engine:
        if inference.isolation == "thread":
            return options(base_weights)  # imports transformers + peft into this process
        limit = inference.memory_limit_mb
        if limit is None:
            limit = int(psutil.virtual_memory().total * 0.8 / 1024**2)
        hang = inference.hang_timeout_s or None
        return EngineProcess(base_weights, options, memory_limit_mb=limit or None, hang_timeout_s=hang)

    llama = llama_cpp_backend(settings, base_weights)
    if llama is None:
        return tunery_engine()
    return RoutedEngine(tunery_engine, llama, "always" if inference.llama_cpp == "always" else "auto")


def llama_cpp_backend(settings: Settings, base_weights: Callable[[str], Path]) -> LlamaCppEngine | None:
    """llama.cpp as a second backend when ``inference.llama_cpp`` asks for it and a ``llama-server`` is found."""
    inference = settings.inference
    if inference.llama_cpp == "off":
        return None
    if inference.device == "cuda":
        log.warning("inference.llama_cpp is ignored on cuda: Tunery's llama.cpp backend runs on the CPU")
        return None
    binary = find_llama_server(inference.llama_cpp_server)
    if binary is None:
        where = inference.llama_cpp_server or "PATH"
        log.warning(
            "inference.llama_cpp=%s but no llama-server in %s: Tunery's engine serves alone", inference.llama_cpp, where
        )
        return None
    return LlamaCppEngine(
        base_weights,
        LlamaCppOptions(
            binary=binary,
            cache_dir=settings.data_dir / "cache" / "llama.cpp",
            threads=inference.num_threads,
            slots=inference.llama_cpp_slots,
            slot_context=inference.llama_cpp_slot_context,
            max_servers=inference.llama_cpp_max_servers,
            extra_args=tuple(inference.llama_cpp_args),
            weights=inference.llama_cpp_weights,
        ),
    )
