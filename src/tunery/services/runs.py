"""The worker's side of a job: claim → check data → start → record progress → finish, and recovery.

A run lives in ``<run_root>/<job id>/``: ``spec.json`` (what to do), the job's own copies of its data,
``progress.jsonl`` (what happened), ``control.json`` (pause/cancel asks), ``checkpoints/``, ``state/``
(resumable optimizer + data position). The trainer is a child process the worker starts; this module
never imports torch. Progress records become events, ``results.csv`` rows and checkpoints here.

Resuming on another machine: each time the trainer saves its state (every checkpoint, and at a pause) the
worker copies ``state/`` into the blob store (``jobs/<job id>/state/step-<N>/...``, then ``latest.json`` naming
it; S3 when configured, so every server sees it). A worker that starts a resuming job whose run folder lacks
that state (or holds an older one) fetches it first, so a job paused or interrupted on one server continues
on another from its last saved step, not from step 0. The copy goes when the job ends.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunery.domain.checkpoints import Checkpoint, MetricRow
from tunery.domain.errors import NotFound, ServiceError
from tunery.domain.events import EventLevel, EventType, JobEvent
from tunery.domain.ids import new_id
from tunery.domain.jobs import (
    ACTIVE,
    BASE_LEARNING_RATE,
    Hyperparameters,
    Job,
    JobError,
    JobStatus,
    Method,
    checkpoint_model_name,
    completion_tokens,
    fine_tuned_model_name,
    rft_group_size,
)
from tunery.domain.models import FineTunedModel
from tunery.graders import Judge
from tunery.services import rft_metrics
from tunery.services.files import FileService
from tunery.services.job_requests import has_model_grader, response_format_schema
from tunery.services.jobs import FORMAT_FOR_METHOD, training_copy_key
from tunery.services.judge_relay import JudgeRelay
from tunery.services.shared_state import STATE_MANIFEST, drop_shared_state, shared_state_prefix
from tunery.storage.blobs import BlobStore
from tunery.storage.checkpoints import CheckpointStore, MetricStore
from tunery.storage.deployments import DeploymentStore
from tunery.storage.events import EventStore
from tunery.storage.jobs import JobStore
from tunery.storage.models import ModelStore
from tunery.storage.portability import ImportedModelStore
from tunery.training.progress import (
    STATE_DIR,
    STATE_FILE,
    Cancelled,
    CheckpointSaved,
    Completed,
    ControlRequest,
    Failed,
    Paused,
    ProgressReader,
    ProgressRecord,
    RunFolder,
    Started,
    Step,
    StoppedEarly,
    saved_step,
)
from tunery.training.spec import LoraSpec, TrainingSpec

if TYPE_CHECKING:
    from tunery.services.rft_evals import RftEvals  # imports the chat service, which imports this module

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MAX_CRASH_RETRIES = 1
SHARE_ATTEMPTS = 5
SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How runs are set up (plain values from the worker's settings)."""

    run_root: Path
    metrics_every: int = 10
    max_seq_len: int = 2048
    keep_checkpoints: int = 3
    warmup_ratio: float = 0.0
    lora: LoraSpec = field(default_factory=LoraSpec)
    dtype: str = "auto"
    device: str = "auto"
    num_threads: int | None = None
    processes: int = 1  # data-parallel trainer processes (0: one per GPU); a job's distributed.processes wins
    stale_after_s: float = 30.0
    precision_cache: Path | None = None  # the measured fp32/bf16 verdict for dtype "auto" (hardware.precision)
    rft_temperature: float = 1.0
    rft_kl_beta: float = 0.04
    rft_max_new_tokens: int | None = None  # None: by the job's reasoning_effort (domain.jobs.completion_tokens)
    grader_concurrency: int = 4


# Returns a local folder with the base model's weights (preparing it if needed).
BaseWeights = Callable[[str], Path]


class RunService:
    def __init__(
        self,
        jobs: JobStore,
        events: EventStore,
        checkpoints: CheckpointStore,
        metrics: MetricStore,
        models: ModelStore,
        files: FileService,
        blobs: BlobStore,
        base_weights: BaseWeights,
        settings: RunSettings,
        *,
        deployments: DeploymentStore | None = None,
        clock: Callable[[], float] = time.time,
        imported: ImportedModelStore | None = None,
        shared: Callable[[str, str], Checkpoint | None] | None = None,
        base_ready: Callable[[str], bool] | None = None,
    ) -> None:
        self._base_ready = base_ready or (lambda _name: True)
        self._imported = imported
        self._deployments = deployments
        self._shared = shared or (lambda _project, _name: None)
        self._jobs = jobs
        self._events = events
        self._checkpoints = checkpoints
        self._metrics = metrics
        self._models = models
        self._files = files
        self._blobs = blobs
        self._base_weights = base_weights
        self._settings = settings
        self._clock = clock
        self._judge: Callable[[str], Judge] | None = None
        self._rft_evals: RftEvals | None = None
        self._relays: dict[str, JudgeRelay] = {}
        self._relay_lock = threading.Lock()

    # ----------------------------------------------------------------------------------------- claiming
    def claim_next(self, worker_id: str) -> Job | None:
        return self._jobs.claim_next(worker_id, self._clock(), stale_after=self._settings.stale_after_s)

    def heartbeat(self, job: Job, worker_id: str, **changes: Any) -> bool:
        return self._jobs.heartbeat(job.id, worker_id, self._clock(), **changes)

    def run_dir(self, job_id: str) -> Path:
        return self._settings.run_root / job_id

    # ----------------------------------------------------------------------------------------- checks
    def validate(self, job: Job) -> Job | None:
        """Check the job's data again (pending → queued, or failed with a line-numbered reason)."""
        files = f"{job.training_file}" + (f" and validation file: {job.validation_file}" if job.validation_file else "")
        self._log(job.id, f"Validating training file: {files}")
        expected = FORMAT_FOR_METHOD[job.method]
        try:
            report = self._files.inspect_blob(training_copy_key(job.id, "training"), expected, training=True)
            if not report.ok:
                return self._fail(job, _data_error(report.problems, report.problem_count, "training_file"))
            n_examples = report.examples
            if job.validation_file:
                valid = self._files.inspect_blob(training_copy_key(job.id, "validation"), expected)
                if not valid.ok:
                    return self._fail(job, _data_error(valid.problems, valid.problem_count, "validation_file"))
        except ServiceError as exc:
            return self._fail(job, JobError("invalid_training_file", exc.message, "training_file"))
        tokens_mean = report.stats.tokens_mean if report.stats else None
        resolved = job.hyperparameters.resolve(n_examples, job.method, tokens_mean)
        moved = self._jobs.transition(job.id, JobStatus.QUEUED, expect={JobStatus.PENDING}, resolved=resolved)
        if moved is None:
            return None  # cancelled meanwhile
        self._log(job.id, "Files validated, moving job to queued state")
        self._log(job.id, _queue_message(*self._jobs.count_ahead(job.id)))
        return moved

    # ----------------------------------------------------------------------------------------- start
    def start(self, job: Job) -> TrainingSpec | None:
        """Move a queued (or resuming) job to running and write its run folder. None: it changed meanwhile."""
        run_dir = self.run_dir(job.id)
        if job.status is JobStatus.RESUMING:
            try:
                self.fetch_state(job.id)  # saved on another machine (or this one, before its run folder was lost)
            except Exception:  # the store is unreachable: resume from what this machine has, if anything
                log.warning("job %s: could not fetch its shared state", job.id, exc_info=True)
        resuming = job.status is JobStatus.RESUMING and RunFolder(run_dir).state.is_dir()
        if resuming and self._catch_up(job):
            return None  # the previous trainer had already finished: nothing is run again
        if not resuming:
            crashes = RunFolder(run_dir).crashes.read_text() if RunFolder(run_dir).crashes.exists() else None
            shutil.rmtree(run_dir, ignore_errors=True)  # a fresh start: nothing from an earlier attempt
            self._metrics.delete_after(job.id, 0)
            if crashes is not None:  # but the retry budget survives the wipe
                run_dir.mkdir(parents=True)
                RunFolder(run_dir).crashes.write_text(crashes)
        run_dir.mkdir(parents=True, exist_ok=True)
        _rotate_progress(run_dir)
        RunFolder(run_dir).control.unlink(missing_ok=True)
        try:
            if not self._base_ready(job.base_model):
                self._log(
                    job.id,
                    f"Preparing the base model {job.base_model} for its first job (once per server); "
                    "training starts when it is ready.",
                )
            base_dir = self._base_weights(job.base_model)
            spec = self._spec(job, run_dir, base_dir, resume_from=str(RunFolder(run_dir).state) if resuming else None)
        except ServiceError as exc:
            self._fail(job, JobError("unsupported_model", exc.message, "model"))
            return None
        now = int(self._clock())
        started = self._jobs.transition(
            job.id,
            JobStatus.RUNNING,
            expect={JobStatus.QUEUED, JobStatus.RESUMING},
            holder=job.worker_id,  # preparing took longer than the stale window and another worker took it
            started_at=job.started_at or now,
            finished_at=None,
            heartbeat_at=self._clock(),
        )
        if started is None:
            if not resuming:  # the folder made for this attempt: the job runs elsewhere, or not at all
                shutil.rmtree(run_dir, ignore_errors=True)
            return None
        spec = self._with_judge(job, spec)
        spec.write(RunFolder(run_dir).spec)
        if resuming:
            self._log(job.id, f"Job resumed from step {saved_step(run_dir) or 0}.")
        else:
            self._log(job.id, "Job started.")
            self._log(job.id, "Preprocessing started.")
        return spec

    def set_rft_evals(self, rft_evals: RftEvals) -> None:
        """Where an RFT job's evaluations become runs of its eval (``services.rft_evals``)."""
        self._rft_evals = rft_evals

    def set_judge(self, judge: Callable[[str], Judge]) -> None:
        """How an RFT run's model graders judge (``project id → Judge``: the chat service's, set at start-up)."""
        self._judge = judge

    def _with_judge(self, job: Job, spec: TrainingSpec) -> TrainingSpec:
        """A run whose grader holds a model grader gets a ``JudgeRelay`` to the project's judge, for its life."""
        self.release(job.id)
        grader = job.extras.get("grader") if job.method is Method.REINFORCEMENT else None
        if grader is None or self._judge is None or not has_model_grader(grader):
            return spec
        relay = JudgeRelay(self._judge(job.project_id))
        with self._relay_lock:
            self._relays[job.id] = relay
        return replace(spec, judge_url=relay.url, judge_token=relay.token)

    def release(self, job_id: str) -> None:
        """Close the run's judge relay, if it has one (its trainer has stopped)."""
        with self._relay_lock:
            relay = self._relays.pop(job_id, None)
        if relay is not None:
            relay.close()

    def _spec(self, job: Job, run_dir: Path, base_dir: Path, *, resume_from: str | None) -> TrainingSpec:
        resolved = job.resolved or job.hyperparameters.resolve(0, job.method)
        stopping = job.extras.get("early_stopping")
        distributed = job.extras.get("distributed") or {}
        training = self._blobs.path(training_copy_key(job.id, "training"))
        validation = self._blobs.path(training_copy_key(job.id, "validation")) if job.validation_file else None
        init_adapter = self._adapter_dir(job.parent_model, job.project_id) if job.parent_model else None
        settings = self._settings
        return TrainingSpec(
            job_id=job.id,
            run_dir=str(run_dir),
            base_model_dir=str(base_dir),
            train_file=str(training),
            validation_file=str(validation) if validation else None,
            method=job.method.value,
            n_epochs=int(resolved.n_epochs or 1),
            batch_size=int(resolved.batch_size or 1),
            learning_rate=BASE_LEARNING_RATE * float(resolved.learning_rate_multiplier or 1.0),
            seed=job.seed,
            lora=self._lora(job),
            init_adapter_dir=str(init_adapter) if init_adapter else None,
            resume_from=resume_from,
            max_seq_len=int(job.extras.get("max_seq_len", settings.max_seq_len)),
            warmup_ratio=float(job.extras.get("warmup_ratio", settings.warmup_ratio)),
            metrics_every=settings.metrics_every,
            keep_checkpoints=settings.keep_checkpoints,
            dpo_beta=float(resolved.beta or 0.1),
            dtype=settings.dtype,  # type: ignore[arg-type]
            device=settings.device,  # type: ignore[arg-type]
            num_threads=settings.num_threads,
            precision_cache=str(settings.precision_cache) if settings.precision_cache else None,
            early_stopping_patience=int(stopping["patience"]) if stopping and validation else None,
            early_stopping_min_delta=float(stopping["min_delta"]) if stopping else 0.001,
            **(self._rft_fields(job, resolved) if job.method is Method.REINFORCEMENT else {}),
            processes=1
            if job.method in (Method.DPO, Method.REINFORCEMENT)
            else int(distributed.get("processes", settings.processes)),
        )

    def _lora(self, job: Job) -> LoraSpec:
        """The worker's LoRA settings with the job's ``lora`` extension (rank, alpha, target_modules) over them."""
        given = job.extras.get("lora") or {}
        lora = self._settings.lora
        targets = given.get("target_modules")
        return replace(
            lora,
            r=int(given.get("rank", lora.r)),
            alpha=int(given.get("alpha", lora.alpha)),
            target_modules=tuple(targets) if targets else lora.target_modules,
        )

    def training_defaults(self) -> dict[str, Any]:
        """What a job gets without the training extensions, and how many checkpoints a job keeps (for the
        portal: the wizard's defaults and the job page's retention words)."""
        settings = self._settings
        return {
            "lora_rank": settings.lora.r,
            "lora_alpha": settings.lora.alpha,
            "lora_target_modules": list(settings.lora.target_modules) if settings.lora.target_modules else None,
            "max_seq_len": settings.max_seq_len,
            "warmup_ratio": settings.warmup_ratio,
            "checkpoints_kept": settings.keep_checkpoints,
        }

    def _rft_fields(self, job: Job, resolved: Hyperparameters) -> dict[str, Any]:
        """The reinforcement part of a spec: the grader, group size, sampling budget and loss settings."""
        settings = self._settings
        response_format = job.extras.get("response_format")
        schema = None if response_format is None else response_format_schema(response_format)
        return {
            "grader": job.extras["grader"],
            "rft_group_size": rft_group_size(float(resolved.compute_multiplier or 1.0)),
            "rft_eval_samples": int(resolved.eval_samples or 1),
            "rft_eval_interval": int(resolved.eval_interval or 1),
            "rft_max_new_tokens": settings.rft_max_new_tokens or completion_tokens(resolved.reasoning_effort),
            "rft_temperature": settings.rft_temperature,
            "rft_kl_beta": settings.rft_kl_beta,
            "rft_parse_json": True if response_format is None else schema is not None,
            "rft_response_schema": schema,
            "grader_concurrency": settings.grader_concurrency,
        }

    def _adapter_dir(self, model_name: str, project_id: str) -> Path:
        """A local folder with a model's or checkpoint's adapter files (fetched from the blob store)."""
        model = self._models.get(project_id, model_name)
        key = model.adapter_key if model else None
        if key is None:
            checkpoint = self._checkpoints.get_by_name(project_id, model_name) or self._shared(project_id, model_name)
            key = checkpoint.adapter_key if checkpoint else None
        if key is None and self._imported is not None:
            imported = self._imported.get(project_id, model_name)
            key = imported.adapter_key if imported else None
        if key is None:
            raise ServiceError(
                f"The parent model '{model_name}' no longer exists (or is no longer shared with this project).",
                param="model",
            )
        return adapter_path(self._blobs, key)

    # ----------------------------------------------------------------------------------------- control
    def control(self, job_id: str) -> ControlRequest | None:
        """What the trainer should be asked, judging by the job's status (users change it via the API)."""
        status = self._jobs.get_any(job_id).status
        if status is JobStatus.CANCELLED:
            return "cancel"
        if status is JobStatus.PAUSING:
            return "pause"
        return None

    def _catch_up(self, job: Job) -> bool:
        """Record what the previous trainer wrote after its worker's last look, before a resumed run starts.

        A worker killed while its trainer keeps going (or just finishes) leaves records in ``progress.jsonl``
        that nobody read: steps, checkpoints, even the end. Resuming rotates that file away, and the resumed
        trainer starts after its saved state, so it never announces them again. Steps and checkpoints are
        recorded here; a trainer that had completed (or failed) ends the job as it would have then.

        Returns:
            True when the job ended here (nothing left to run).
        """
        worker_id = job.worker_id or ""
        ended: Completed | Failed | None = None
        for record in ProgressReader(self.run_dir(job.id)).read_new():
            if isinstance(record, Step) and record.step > job.step:
                job = self._on_step(job, worker_id, record)
            elif isinstance(record, CheckpointSaved | Paused):
                # a pause saves a checkpoint too
                folder = record.path if isinstance(record, CheckpointSaved) else record.checkpoint
                if folder and Path(folder).is_dir():
                    paused = isinstance(record, Paused)
                    self._save_checkpoint(job, record.step, Path(folder), record.metrics, pinned=paused)
            elif isinstance(record, Completed | Failed):
                ended = record
        if ended is None:
            return False
        self._log(job.id, "The previous training run had ended before its worker stopped; its results are kept.")
        if isinstance(ended, Failed):
            self.record(job, worker_id, ended)
            return True
        running = self._jobs.transition(job.id, JobStatus.RUNNING, expect={JobStatus.RESUMING})
        if running is not None:
            self._complete(running, ended)
        return True

    def attach(self, job: Job, worker_id: str, pid: int) -> None:
        self._jobs.heartbeat(job.id, worker_id, self._clock(), trainer_pid=pid)

    # ----------------------------------------------------------------------------------------- progress
    def record(self, job: Job, worker_id: str, record: ProgressRecord) -> Job:
        """Turn one progress record into events, metrics, checkpoints or a final state."""
        if isinstance(record, Started):
            resumed = record.resumed_from_step
            self._metrics.delete_after(job.id, resumed)
            total = record.total_steps
            self.heartbeat(job, worker_id, total_steps=total, step=resumed)
            if record.timings:
                self._log(job.id, _startup_message(record))
            if resumed and job.method is Method.REINFORCEMENT and self._rft_evals is not None:
                self._rft_evals.forget_after(job, resumed)  # the steps after it are evaluated again
            if not resumed:
                self._log(job.id, "Training started.")
                initial = {k: float(v) for k, v in record.initial_validation.items() if v is not None}
                if "valid_reward_mean" in initial:
                    self._record_eval(job, 0, initial["valid_reward_mean"])
                if initial:
                    self._events.append(
                        JobEvent(
                            id=new_id("ftevent"),
                            job_id=job.id,
                            created_at=int(self._clock()),
                            level=EventLevel.INFO,
                            message="Before training: " + _validation_summary(initial),
                            type=EventType.METRICS,
                            data=_event_data(job, initial, _row(job, initial), 0, int(total or 0))
                            if job.method is Method.REINFORCEMENT
                            else {"step": 0.0, **initial},
                        )
                    )
            return job.with_changes(total_steps=total, step=resumed)
        if isinstance(record, Step):
            return self._on_step(job, worker_id, record)
        if isinstance(record, CheckpointSaved):
            self._save_checkpoint(job, record.step, Path(record.path), record.metrics)
            self.share_state(job.id)
            return job
        if isinstance(record, Paused):
            step = record.step
            if record.checkpoint:
                self._save_checkpoint(job, step, Path(record.checkpoint), record.metrics, pinned=True)
            self.share_state(job.id)  # before the job reads paused: any server may resume it
            paused = self._jobs.transition(
                job.id, JobStatus.PAUSED, expect={JobStatus.PAUSING}, finished_at=int(self._clock()), step=step
            )
            if paused is not None:
                self._log(job.id, f"Job paused at step {step}. A deployable checkpoint was saved.")
                return paused
            return job
        if isinstance(record, Cancelled):
            self._log(job.id, f"Training stopped at step {record.step} after the job was cancelled.")
            return job
        if isinstance(record, Completed):
            return self._complete(job, record)
        if isinstance(record, Failed):
            return self._fail(job, JobError(record.code or "internal_error", record.message or "Training failed."))
        return job

    def _on_step(self, job: Job, worker_id: str, record: Step) -> Job:
        step = record.step
        metrics = record.metrics
        values = _row(job, metrics)
        self._metrics.upsert(MetricRow(job_id=job.id, step=step, values=values))
        total = int(record.total_steps or job.total_steps or step)
        trained = record.trained_tokens
        eta = None
        seconds_per_step = record.seconds_per_step
        if seconds_per_step:
            eta = int(self._clock() + float(seconds_per_step) * max(total - step, 0))
        self.heartbeat(job, worker_id, step=step, total_steps=total, trained_tokens=trained, estimated_finish=eta)
        evaluated = "full_valid_loss" in values or "valid_reward_mean" in values
        if "valid_reward_mean" in values and job.method is Method.REINFORCEMENT:
            self._record_eval(job, step, values["valid_reward_mean"])
        if step % self._settings.metrics_every == 0 or step == total or evaluated:
            self._events.append(
                JobEvent(
                    id=new_id("ftevent"),
                    job_id=job.id,
                    created_at=int(self._clock()),
                    level=EventLevel.INFO,
                    message=_step_message(step, total, values),
                    type=EventType.METRICS,
                    data=_event_data(job, metrics, values, step, total),
                )
            )
        return job.with_changes(step=step, total_steps=total, trained_tokens=trained)

    def _record_eval(self, job: Job, step: int, reward: float) -> None:
        """An RFT evaluation becomes a run of the job's eval, announced by an event linking it."""
        if self._rft_evals is None:
            return
        model = job.model if step == 0 else checkpoint_model_name(
            fine_tuned_model_name(job.base_model, job.id, job.suffix), step
        )  # fmt: skip
        try:
            graded = RunFolder(self.run_dir(job.id)).graded(step)
            run = self._rft_evals.record(job, step, model, graded, temperature=self._settings.rft_temperature)
        except Exception:  # the eval is a view of the job's metrics: never the reason a job fails
            log.exception("job %s: could not record the evaluation at step %d as an eval run", job.id, step)
            return
        if run is None:
            return
        counts = run.result_counts
        where = "the base model" if step == 0 else f"step {step}"
        self._events.append(
            JobEvent(
                id=new_id("ftevent"),
                job_id=job.id,
                created_at=int(self._clock()),
                level=EventLevel.INFO,
                message=(f"Eval run {run.id} on {where}: {counts.get('passed', 0)}/{counts.get('total', 0)} graded "
                         f"answers passed, mean reward {reward:.3f}"),
                data={"eval_id": run.eval_id, "eval_run_id": run.id, "step": step, "model": model,
                      "pass_rate": run.pass_rate, "valid_reward_mean": reward, "result_counts": counts},
            )
        )  # fmt: skip

    def _save_checkpoint(
        self, job: Job, step: int, folder: Path, metrics: dict[str, float | None], *, pinned: bool = False
    ) -> None:
        model_name = fine_tuned_model_name(job.base_model, job.id, job.suffix)
        name = checkpoint_model_name(model_name, step)
        existing = self._checkpoints.get_by_name(job.project_id, name)
        if existing is not None:  # a resumed run re-announcing a checkpoint it already has
            if pinned and not existing.pinned:
                self._checkpoints.pin(existing.id)
            return
        key = f"adapters/{job.id}/step-{step}"
        try:
            for filename in ADAPTER_FILES:
                with (folder / filename).open("rb") as source:
                    self._blobs.write(f"{key}/{filename}", iter(partial(source.read, 1 << 20), b""))
        except FileNotFoundError:
            # The trainer keeps only its newest few checkpoint folders; a worker that fell behind (a slow blob
            # store) can read a record whose folder newer ones have already replaced. Retention would drop this
            # checkpoint anyway, and nothing can use it yet: skip it rather than abandon the job.
            for filename in ADAPTER_FILES:
                self._blobs.delete(f"{key}/{filename}")
            log.info("job %s: checkpoint at step %d was replaced by newer ones before it was read", job.id, step)
            return
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        numbers.setdefault("step", float(step))
        self._checkpoints.insert(
            Checkpoint(
                id=new_id("ftchkpt"),
                job_id=job.id,
                project_id=job.project_id,
                created_at=int(self._clock()),
                step_number=step,
                fine_tuned_model_checkpoint=name,
                adapter_key=key,
                metrics=numbers,
                pinned=pinned,
            )
        )
        self._log(job.id, f"Checkpoint created at step {step}.")
        self._retain(job)

    def _retain(self, job: Job) -> None:
        """Keep the newest ``keep_checkpoints`` checkpoints and every older one something still uses.

        A checkpoint a deployment serves, an unfinished job starts from, or that was saved at a pause (users
        are told they can deploy it) is kept; the event says why, once, when it leaves the newest few.
        """
        kept = self._checkpoints.list_all(job.id)
        older = kept[: max(0, len(kept) - self._settings.keep_checkpoints)]
        if job.method is Method.REINFORCEMENT:  # the best validation rewards stay (OpenAI keeps its best three)
            ranked = sorted(kept, key=lambda c: (c.metrics.get("valid_reward_mean", -math.inf), c.step_number))
            older = ranked[: max(0, len(ranked) - self._settings.keep_checkpoints)]
        for old in older:
            reason = self._still_used(old)
            if reason is None:
                self._checkpoints.delete(old.id)
                for filename in ADAPTER_FILES:
                    self._blobs.delete(f"{old.adapter_key}/{filename}")
            elif old is older[-1] and job.method is not Method.REINFORCEMENT:  # it has just left the newest few
                self._log(
                    job.id,
                    f"Checkpoint at step {old.step_number} kept beyond the last "
                    f"{self._settings.keep_checkpoints}: {reason}.",
                )

    def _still_used(self, checkpoint: Checkpoint) -> str | None:
        """Why retention must keep this checkpoint, or None."""
        if checkpoint.pinned:
            return "it was saved at a pause and can be deployed"
        served = self._deployments.serving_adapter(checkpoint.adapter_key) if self._deployments else []
        if served:
            return f"deployment {', '.join(served)} serves it"
        children = self._jobs.starting_from(checkpoint.project_id, {checkpoint.fine_tuned_model_checkpoint})
        if children:
            return f"job {', '.join(children)} starts from it"
        return None

    def _complete(self, job: Job, completed: Completed) -> Job:
        self._log(job.id, "Postprocessing started.")
        model_name = fine_tuned_model_name(job.base_model, job.id, job.suffix)
        checkpoints = self._checkpoints.list_all(job.id)
        final = Path(completed.adapter_path) if completed.adapter_path else None
        if final is not None and final.is_dir() and not any(c.step_number == completed.step for c in checkpoints):
            # The final adapter was never read as a checkpoint: the worker that ran the trainer stopped before it
            # read the last records (the trainer had already replaced those folders), and this run resumed from
            # a state saved at the last step. The adapter it wrote is the model.
            self._save_checkpoint(job, completed.step, final, {})
            checkpoints = self._checkpoints.list_all(job.id)
        if not checkpoints:
            return self._fail(job, JobError("internal_error", "Training finished without saving a model."))
        best_step = completed.best_step
        newest = next((c for c in checkpoints if c.step_number == best_step), checkpoints[-1])
        stopped = completed.stopped_early
        if stopped:
            self._log(job.id, _early_stop_message(stopped, newest.step_number))
        elif job.method is Method.REINFORCEMENT and "valid_reward_mean" in newest.metrics:
            self._log(
                job.id,
                f"The model is the checkpoint at step {newest.step_number}, the best validation reward "
                f"({newest.metrics['valid_reward_mean']:.3f}).",
            )
        self._checkpoints.rename(newest.id, model_name)
        results = self._files.create_results(job.project_id, filename="results.csv", data=self.results_csv(job))
        self._log(job.id, f"Created results file: {results.id}")
        now = int(self._clock())
        trained = completed.trained_tokens or job.trained_tokens or 0
        ended_early: dict[str, Any] = {"total_steps": completed.step or job.step} if stopped else {}
        done = self._jobs.transition(
            job.id,
            JobStatus.SUCCEEDED,
            expect=set(ACTIVE),
            fine_tuned_model=model_name,
            finished_at=now,
            trained_tokens=trained,
            result_files=[results.id],
            estimated_finish=None,
            step=completed.step or job.step,
            **ended_early,
        )
        if done is None:
            return self._jobs.get_any(job.id)  # cancelled at the last moment: keep it cancelled
        self.drop_shared_state(job.id)
        self._models.insert(
            FineTunedModel(
                id=model_name,
                project_id=job.project_id,
                job_id=job.id,
                base_model=job.base_model,
                parent_model=job.parent_model,
                adapter_key=newest.adapter_key,
                created_at=now,
                method=job.method.value,
            )
        )
        self._log(job.id, f"New fine-tuned model created: {model_name}")
        self._log(job.id, "Job succeeded.")
        self._log(job.id, f"Completed results file: {results.id}")
        hours = (now - (job.started_at or now)) / SECONDS_PER_HOUR
        self._log(job.id, f"Training hours billed: {hours:.3f}")
        return done

    def results_csv(self, job: Job) -> bytes:
        """``results.csv``: a header and one row per optimizer step (spec §7.1; DPO jobs have DPO columns)."""
        columns = rft_metrics.job_columns(job)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in self._metrics.list(job.id):
            values = {**row.values, "step": row.step}
            writer.writerow([_csv_cell(values.get(column)) for column in columns])
        return out.getvalue().encode()

    # ----------------------------------------------------------------------------------------- endings
    def trainer_exited(self, job: Job, exit_code: int, log_tail: str) -> Job:
        """The trainer process is gone. If the job is still active it died: resume once, else fail clearly."""
        current = self._jobs.get_any(job.id)
        if current.status.terminal:
            self.drop_shared_state(job.id)
        if current.status in (JobStatus.PAUSED, JobStatus.RESUMING) and current.worker_id:
            # Its trainer is gone: the job is free at once for any server's worker to resume (not after the
            # stale window), and no trainer of this worker can still write into its run folder.
            self._jobs.release(job.id, current.worker_id)
            current = self._jobs.get_any(job.id)
        if current.status not in ACTIVE:
            return current
        run_dir = self.run_dir(job.id)
        crashes = _bump(RunFolder(run_dir).crashes)
        reason = f"exit code {exit_code}" if exit_code >= 0 else f"killed by signal {-exit_code}"
        if crashes <= MAX_CRASH_RETRIES:
            saved = self.resume_point(job.id)
            target = JobStatus.RESUMING if saved is not None else JobStatus.QUEUED
            moved = self._jobs.transition(job.id, target, expect=set(ACTIVE), worker_id=None, trainer_pid=None)
            if moved is not None:
                where = f"from step {saved or 0}" if target is JobStatus.RESUMING else "from the beginning"
                self._log(
                    job.id,
                    f"The training process stopped unexpectedly ({reason}); restarting {where}.",
                    level=EventLevel.WARN,
                )
                return moved
        detail = log_tail.strip().splitlines()[-1] if log_tail.strip() else reason
        return (
            self._fail(
                current, JobError("trainer_crashed", f"The training process stopped unexpectedly ({reason}): {detail}")
            )
            or current
        )

    def recover(self, worker_id: str, is_alive: Callable[[int, str], bool], kill: Callable[[int], None]) -> int:
        """Hand back jobs whose worker died: resume from their saved state, or start over. Returns the count."""
        recovered = 0
        for job in self._jobs.list_stale(self._clock(), self._settings.stale_after_s):
            if job.status not in ACTIVE:
                continue
            if job.trainer_pid and is_alive(job.trainer_pid, job.id):
                kill(job.trainer_pid)  # an orphan of the dead worker must not keep writing
            saved = self.resume_point(job.id)  # on this machine, or shared by the dead worker's machine
            has_state = saved is not None
            target = JobStatus.RESUMING if has_state else JobStatus.QUEUED
            moved = self._jobs.transition(job.id, target, expect=set(ACTIVE), worker_id=None, trainer_pid=None)
            if moved is None:
                continue
            recovered += 1
            if job.status is JobStatus.PAUSING:
                self._log(job.id, "The worker restarted while the job was pausing; it resumes instead.")
            where = f"from its last saved state (step {saved})" if has_state else "from the beginning"
            self._log(job.id, f"The worker restarted; the job continues {where}.", level=EventLevel.WARN)
        return recovered

    # ----------------------------------------------------------------------------------------- helpers
    def _fail(self, job: Job, error: JobError) -> Job:
        """Fail the job unless it already ended (a user's cancel wins). Returns the job as it now stands."""
        failed = self._jobs.transition(
            job.id,
            JobStatus.FAILED,
            expect={JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RESUMING, *ACTIVE},
            error=error,
            finished_at=int(self._clock()),
            estimated_finish=None,
        )
        if failed is None:
            return self._jobs.get_any(job.id)
        self.drop_shared_state(job.id)
        self._log(job.id, f"Job failed: {error.message}", level=EventLevel.ERROR)
        return failed

    # ----------------------------------------------------------------------------------------- shared state
    def share_state(self, job_id: str) -> int | None:
        """Copy the run's saved state into the blob store, where any server can resume from it.

        The trainer may replace ``state/`` (atomically, by renames) while this reads: every file is opened
        between two reads of ``state.json``, and a copy whose two reads differ is taken again, so the files
        sent are all of one save. Returns the step shared, or None (no state, or the store failed: the job
        can still resume on this machine; logged).
        """
        folder = self.run_dir(job_id) / STATE_DIR
        prefix = shared_state_prefix(job_id)
        for _ in range(SHARE_ATTEMPTS):
            handles: dict[str, Any] = {}
            try:
                before = (folder / STATE_FILE).read_bytes()
                for item in sorted(folder.rglob("*")):
                    if item.is_file() and item.name != STATE_FILE:
                        handles[item.relative_to(folder).as_posix()] = item.open("rb")
                after = (folder / STATE_FILE).read_bytes()
            except FileNotFoundError:
                _close(handles)
                if not folder.is_dir() and not folder.with_name(f".{STATE_DIR}~old").is_dir():
                    return None  # this run saves no state (or not yet)
                time.sleep(0.05)  # a save is swapping the folder in
                continue
            if before != after:
                _close(handles)
                continue
            try:
                previous = self._manifest(job_id)
                step = int(json.loads(before)["step"])
                with_step = f"{prefix}/step-{step}"
                for name, handle in handles.items():
                    self._blobs.write(f"{with_step}/{name}", iter(partial(handle.read, 1 << 20), b""))
                self._blobs.write(f"{with_step}/{STATE_FILE}", [before])
                manifest = {"step": step, "files": [*handles, STATE_FILE]}
                self._blobs.write(f"{prefix}/{STATE_MANIFEST}", [json.dumps(manifest).encode()])
                if previous is not None and int(previous["step"]) != step:
                    for name in previous["files"]:  # the older save
                        self._blobs.delete(f"{prefix}/step-{previous['step']}/{name}")
                return step
            except Exception:
                log.warning("job %s: could not share its saved state; it resumes on this machine only", job_id,
                            exc_info=True)  # fmt: skip
                return None
            finally:
                _close(handles)
        log.warning("job %s: its saved state kept changing while being shared; the next save shares it", job_id)
        return None

    def _manifest(self, job_id: str) -> dict[str, Any] | None:
        """The shared state's ``latest.json`` ({step, files}), or None when nothing is shared."""
        try:
            with self._blobs.open(f"{shared_state_prefix(job_id)}/{STATE_MANIFEST}") as source:
                manifest: dict[str, Any] = json.loads(source.read())
        except NotFound:
            return None
        return manifest

    def shared_step(self, job_id: str) -> int | None:
        """The step of the state shared in the blob store, or None (also when the store cannot be read)."""
        try:
            manifest = self._manifest(job_id)
        except Exception:
            log.warning("job %s: could not read its shared state", job_id, exc_info=True)
            return None
        return int(manifest["step"]) if manifest is not None else None

    def resume_point(self, job_id: str) -> int | None:
        """The newest step a resumed run can start from: this machine's state or the shared one; None: none."""
        run_dir = self.run_dir(job_id)
        local = (saved_step(run_dir) or 0) if (run_dir / STATE_DIR).is_dir() else None
        steps = [s for s in (local, self.shared_step(job_id)) if s is not None]
        return max(steps) if steps else None

    def fetch_state(self, job_id: str) -> int | None:
        """Put the shared state in this machine's run folder when it is newer than (or there is no) local one.

        Returns the step of the state the run folder now holds, or None.
        """
        run_dir = self.run_dir(job_id)
        local = saved_step(run_dir)
        prefix = shared_state_prefix(job_id)
        manifest = self._manifest(job_id)
        if manifest is None:
            return local
        step = int(manifest["step"])
        if local is not None and local >= step:
            return local
        run_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".state-fetch~", dir=run_dir))
        try:
            for name in manifest["files"]:
                target = staging.joinpath(*name.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                with self._blobs.open(f"{prefix}/step-{step}/{name}") as source, target.open("wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
            old = run_dir / f".{STATE_DIR}~old"
            shutil.rmtree(old, ignore_errors=True)
            if (run_dir / STATE_DIR).exists():
                os.replace(run_dir / STATE_DIR, old)
            os.replace(staging, run_dir / STATE_DIR)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._log(job_id, f"Fetched the job's saved state (step {step}) from the shared store.")
        return step

    def drop_shared_state(self, job_id: str) -> None:
        """The job has ended: its shared state goes (``services.shared_state.drop_shared_state``)."""
        drop_shared_state(self._blobs, job_id)

    def _log(self, job_id: str, message: str, *, level: EventLevel = EventLevel.INFO) -> None:
        self._events.append(
            JobEvent(id=new_id("ftevent"), job_id=job_id, created_at=int(self._clock()), level=level, message=message)
        )


def _queue_message(waiting: int, training: int) -> str:
    """Where a job that has just been queued stands: the jobs a worker takes before it, and those training."""
    if not waiting and not training:
        return "Job enqueued. No job is ahead of it; it starts as soon as a worker takes it."
    ahead = f"{waiting} job{'s' if waiting != 1 else ''} ahead of it in the queue" if waiting else "first in the queue"
    busy = f"{training} job{'s' if training != 1 else ''} training now" if training else "no job training now"
    return f"Job enqueued: {ahead}, {busy}."


def _startup_message(started: Started) -> str:
    """Where the trainer's start-up time went, as an event (overheads are measured, not guessed)."""
    names = {
        "process_start": "process start and imports",
        "precision": "precision check",
        "data": "tokenizing the data",
        "model_load": "model load",
        "attention_kernel": "compiling attention and the LM head",
        "dpo_reference": "reference log-probs",
        "initial_validation": "validation before training",
    }
    timings = started.timings
    parts = [f"{names.get(k, k)} {float(v):.1f} s" for k, v in timings.items() if v is not None]
    total = sum(float(v) for v in timings.values() if v is not None)
    where = f" on {started.device} in {started.dtype}"
    return f"Trainer ready in {total:.1f} s{where}: " + ", ".join(parts) + "."


def _early_stop_message(stopped: StoppedEarly, model_step: int) -> str:
    patience = stopped.patience or 1
    best = stopped.best_full_valid_loss
    return (
        f"Stopped early after epoch {stopped.epoch} of {stopped.n_epochs}: the full validation loss has"
        f" not improved by more than {stopped.min_delta} for {patience} epoch{'s' if patience > 1 else ''}"
        f" (best {float(best):.4f} at step {stopped.best_step})."
        f" The model is the step-{model_step} checkpoint."
        if best is not None
        else f"Stopped early after epoch {stopped.epoch}. The model is the step-{model_step} checkpoint."
    )


def _close(handles: dict[str, Any]) -> None:
    for handle in handles.values():
        handle.close()
    handles.clear()


def adapter_path(blobs: BlobStore, key: str) -> Path:
    """A local folder holding an adapter's files (the blob store fetches them if they live remotely)."""
    paths = [blobs.path(f"{key}/{filename}") for filename in ADAPTER_FILES]
    return paths[0].parent


def _data_error(problems: list[Any], count: int, param: str) -> JobError:
    first = problems[0].describe() if problems else "the file has problems"
    code = "invalid_n_examples" if problems and problems[0].code == "invalid_n_examples" else f"invalid_{param}"
    if code == "invalid_n_examples":
        return JobError(code, problems[0].message, param)
    return JobError(
        code, f"The job failed due to an invalid {param.replace('_', ' ')} ({count} problem(s)): {first}", param
    )


def _row(job: Job, metrics: Mapping[str, float | None]) -> dict[str, float]:
    """The results.csv columns of ``metrics`` that have a value."""
    return {k: v for k in rft_metrics.job_columns(job) if (v := metrics.get(k)) is not None}


def _event_data(
    job: Job, metrics: Mapping[str, float | None], values: dict[str, float], step: int, total: int
) -> dict[str, Any]:
    """A metrics event's data, as OpenAI's: ``step``, ``total_steps`` and the step's values; for RFT the
    structured ``scores``/``usage``/``errors``/``timing`` objects too (``rft_metrics``, rft §3.5)."""
    if job.method is Method.REINFORCEMENT:
        reported = {k: float(v) for k, v in metrics.items() if v is not None}
        return rft_metrics.event_data(job, reported, values, step, total)
    return {**values, "step": step, "total_steps": total}


def _step_message(step: int, total: int, values: dict[str, float]) -> str:
    """``Step 10/40: training loss=0.6931`` (spec §4.4), with the reward accuracy for DPO; for RFT
    ``Step 10/20, train mean reward=0.42, full validation mean reward=0.68, full validation mean parse error=0.00``
    (rft §3.5)."""
    if "train_reward_mean" in values:
        return rft_metrics.step_message(step, total, values)
    message = f"Step {step}/{total}: training loss={values.get('train_loss', float('nan')):.4f}"
    if "train_reward_accuracy" in values:
        message += f", reward accuracy={values['train_reward_accuracy']:.2f}"
    return message


def _validation_summary(values: dict[str, float]) -> str:
    """``full validation loss=0.6931, reward accuracy=0.00`` from ``full_valid_*`` values (RFT: its mean reward)."""
    if "valid_reward_mean" in values:
        return rft_metrics.validation_summary(values)
    parts = [f"full validation loss={values.get('full_valid_loss', float('nan')):.4f}"]
    if "full_valid_reward_accuracy" in values:
        parts.append(f"reward accuracy={values['full_valid_reward_accuracy']:.2f}")
    elif "full_valid_mean_token_accuracy" in values:
        parts.append(f"token accuracy={values['full_valid_mean_token_accuracy']:.2f}")
    return ", ".join(parts)


def _csv_cell(value: float | int | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if isinstance(value, int) else repr(float(value))


def _rotate_progress(run_dir: Path) -> None:
    folder = RunFolder(run_dir)
    if folder.progress.exists():
        attempt = len(list(run_dir.glob("progress-*.jsonl"))) + 1
        folder.progress.rename(folder.earlier_progress(attempt))


def _bump(counter: Path) -> int:
    value = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(value))
    return value


__all__ = ["ADAPTER_FILES", "RunService", "RunSettings", "adapter_path"]
