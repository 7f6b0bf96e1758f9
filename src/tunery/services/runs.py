"""The worker's side of a job: claim → check data → start → record progress → finish, and recovery.

A run lives in ``<run_root>/<job id>/``: ``spec.json`` (what to do), the job's own copies of its data,
``progress.jsonl`` (what happened), ``control.json`` (pause/cancel asks), ``checkpoints/``, ``state/``
(resumable optimizer + data position). The trainer is a child process the worker starts; this module
never imports torch. Progress records become events, ``results.csv`` rows and checkpoints here.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tunery.domain.checkpoints import Checkpoint, MetricRow, metric_columns
from tunery.domain.errors import ServiceError
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
from tunery.services.files import FileService
from tunery.services.job_requests import response_format_schema
from tunery.services.jobs import FORMAT_FOR_METHOD, training_copy_key
from tunery.storage.blobs import BlobStore
from tunery.storage.checkpoints import CheckpointStore, MetricStore
from tunery.storage.deployments import DeploymentStore
from tunery.storage.events import EventStore
from tunery.storage.jobs import JobStore
from tunery.storage.models import ModelStore
from tunery.storage.portability import ImportedModelStore
from tunery.training.progress import STATE_DIR, ControlRequest, ProgressKind, ProgressReader, ProgressRecord, saved_step
from tunery.training.spec import LoraSpec, TrainingSpec

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MAX_CRASH_RETRIES = 1
CRASH_FILE = "crashes"
SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How runs are set up (plain values from the worker's settings)."""

    run_root: Path
    metrics_every: int = 10
    max_seq_len: int = 2048
    keep_checkpoints: int = 3
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
            report = self._files.inspect_blob(training_copy_key(job.id, "training"), expected)
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
        resuming = job.status is JobStatus.RESUMING and (run_dir / STATE_DIR).is_dir()
        if resuming and self._catch_up(job):
            return None  # the previous trainer had already finished: nothing is run again
        if not resuming:
            crashes = (run_dir / CRASH_FILE).read_text() if (run_dir / CRASH_FILE).exists() else None
            shutil.rmtree(run_dir, ignore_errors=True)  # a fresh start: nothing from an earlier attempt
            self._metrics.delete_after(job.id, 0)
            if crashes is not None:  # but the retry budget survives the wipe
                run_dir.mkdir(parents=True)
                (run_dir / CRASH_FILE).write_text(crashes)
        run_dir.mkdir(parents=True, exist_ok=True)
        _rotate_progress(run_dir)
        (run_dir / "control.json").unlink(missing_ok=True)
        try:
            if not self._base_ready(job.base_model):
                self._log(
                    job.id,
                    f"Preparing the base model {job.base_model} for its first job (once per server); "
                    "training starts when it is ready.",
                )
            base_dir = self._base_weights(job.base_model)
            spec = self._spec(job, run_dir, base_dir, resume_from=str(run_dir / STATE_DIR) if resuming else None)
        except ServiceError as exc:
            self._fail(job, JobError("unsupported_model", exc.message, "model"))
            return None
        now = int(self._clock())
        started = self._jobs.transition(
            job.id,
            JobStatus.RUNNING,
            expect={JobStatus.QUEUED, JobStatus.RESUMING},
            started_at=job.started_at or now,
            finished_at=None,
            heartbeat_at=self._clock(),
        )
        if started is None:
            return None
        spec.write(run_dir / "spec.json")
        if resuming:
            self._log(job.id, f"Job resumed from step {saved_step(run_dir) or 0}.")
        else:
            self._log(job.id, "Job started.")
            self._log(job.id, "Preprocessing started.")
        return spec

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
            lora=settings.lora,
            init_adapter_dir=str(init_adapter) if init_adapter else None,
            resume_from=resume_from,
            max_seq_len=settings.max_seq_len,
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

    def _rft_fields(self, job: Job, resolved: Hyperparameters) -> dict[str, Any]:
        """The reinforcement part of a spec: the grader, group size, sampling budget and loss settings."""
        settings = self._settings
        response_format = job.extras.get("response_format")
        return {
            "grader": job.extras["grader"],
            "rft_group_size": rft_group_size(float(resolved.compute_multiplier or 1.0)),
            "rft_eval_samples": int(resolved.eval_samples or 1),
            "rft_eval_interval": int(resolved.eval_interval or 1),
            "rft_max_new_tokens": settings.rft_max_new_tokens or completion_tokens(resolved.reasoning_effort),
            "rft_temperature": settings.rft_temperature,
            "rft_kl_beta": settings.rft_kl_beta,
            "rft_parse_json": True if response_format is None else response_format_schema(response_format) is not None,
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
        ended: ProgressRecord | None = None
        for record in ProgressReader(self.run_dir(job.id)).read_new():
            data = record.data
            if record.kind is ProgressKind.STEP and int(data["step"]) > job.step:
                job = self._on_step(job, worker_id, data)
            elif record.kind in (ProgressKind.CHECKPOINT, ProgressKind.PAUSED):
                folder = data.get("path") or data.get("checkpoint")  # a pause saves a checkpoint too
                if folder and Path(folder).is_dir():
                    paused = record.kind is ProgressKind.PAUSED
                    self._save_checkpoint(
                        job, int(data["step"]), Path(folder), data.get("metrics") or {}, pinned=paused
                    )
            elif record.kind in (ProgressKind.COMPLETED, ProgressKind.FAILED):
                ended = record
        if ended is None:
            return False
        self._log(job.id, "The previous training run had ended before its worker stopped; its results are kept.")
        if ended.kind is ProgressKind.FAILED:
            self.record(job, worker_id, ended)
            return True
        running = self._jobs.transition(job.id, JobStatus.RUNNING, expect={JobStatus.RESUMING})
        if running is not None:
            self._complete(running, ended.data)
        return True

    def attach(self, job: Job, worker_id: str, pid: int) -> None:
        self._jobs.heartbeat(job.id, worker_id, self._clock(), trainer_pid=pid)

    # ----------------------------------------------------------------------------------------- progress
    def record(self, job: Job, worker_id: str, record: ProgressRecord) -> Job:
        """Turn one progress record into events, metrics, checkpoints or a final state."""
        data = record.data
        kind = record.kind
        if kind is ProgressKind.STARTED:
            resumed = int(data.get("resumed_from_step") or 0)
            self._metrics.delete_after(job.id, resumed)
            total = int(data["total_steps"])
            self.heartbeat(job, worker_id, total_steps=total, step=resumed)
            timings = data.get("timings") or {}
            if timings:
                self._log(job.id, _startup_message(timings, data))
            if not resumed:
                self._log(job.id, "Training started.")
                initial = {k: float(v) for k, v in (data.get("initial_validation") or {}).items() if v is not None}
                if initial:
                    self._events.append(
                        JobEvent(
                            id=new_id("ftevent"),
                            job_id=job.id,
                            created_at=int(self._clock()),
                            level=EventLevel.INFO,
                            message="Before training: " + _validation_summary(initial),
                            type=EventType.METRICS,
                            data={"step": 0.0, **initial},
                        )
                    )
            return job.with_changes(total_steps=total, step=resumed)
        if kind is ProgressKind.STEP:
            return self._on_step(job, worker_id, data)
        if kind is ProgressKind.CHECKPOINT:
            self._save_checkpoint(job, int(data["step"]), Path(data["path"]), data.get("metrics") or {})
            return job
        if kind is ProgressKind.PAUSED:
            step = int(data["step"])
            if data.get("checkpoint"):
                self._save_checkpoint(job, step, Path(data["checkpoint"]), data.get("metrics") or {}, pinned=True)
            paused = self._jobs.transition(
                job.id, JobStatus.PAUSED, expect={JobStatus.PAUSING}, finished_at=int(self._clock()), step=step
            )
            if paused is not None:
                self._log(job.id, f"Job paused at step {step}. A deployable checkpoint was saved.")
                return paused
            return job
        if kind is ProgressKind.CANCELLED:
            self._log(job.id, f"Training stopped at step {data.get('step')} after the job was cancelled.")
            return job
        if kind is ProgressKind.COMPLETED:
            return self._complete(job, data)
        if kind is ProgressKind.FAILED:
            error = JobError(str(data.get("code") or "internal_error"), str(data.get("message") or "Training failed."))
            return self._fail(job, error)
        return job

    def _on_step(self, job: Job, worker_id: str, data: dict[str, Any]) -> Job:
        step = int(data["step"])
        values = {k: float(data[k]) for k in metric_columns(job.method.value) if data.get(k) is not None}
        self._metrics.upsert(MetricRow(job_id=job.id, step=step, values=values))
        total = int(data.get("total_steps") or job.total_steps or step)
        trained = int(data.get("trained_tokens") or 0)
        eta = None
        seconds_per_step = data.get("seconds_per_step")
        if seconds_per_step:
            eta = int(self._clock() + float(seconds_per_step) * max(total - step, 0))
        self.heartbeat(job, worker_id, step=step, total_steps=total, trained_tokens=trained, estimated_finish=eta)
        evaluated = "full_valid_loss" in values or "valid_reward_mean" in values
        if step % self._settings.metrics_every == 0 or step == total or evaluated:
            self._events.append(
                JobEvent(
                    id=new_id("ftevent"),
                    job_id=job.id,
                    created_at=int(self._clock()),
                    level=EventLevel.INFO,
                    message=_step_message(step, total, values),
                    type=EventType.METRICS,
                    data=_event_data(values, step, total),
                )
            )
        return job.with_changes(step=step, total_steps=total, trained_tokens=trained)

    def _save_checkpoint(
        self, job: Job, step: int, folder: Path, metrics: dict[str, Any], *, pinned: bool = False
    ) -> None:
        model_name = fine_tuned_model_name(job.base_model, job.id, job.suffix)
        name = checkpoint_model_name(model_name, step)
        existing = self._checkpoints.get_by_name(job.project_id, name)
        if existing is not None:  # a resumed run re-announcing a checkpoint it already has
            if pinned and not existing.pinned:
                self._checkpoints.pin(existing.id)
            return
        key = f"adapters/{job.id}/step-{step}"
        for filename in ADAPTER_FILES:
            with (folder / filename).open("rb") as source:
                self._blobs.write(f"{key}/{filename}", iter(partial(source.read, 1 << 20), b""))
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
        for old in older:
            reason = self._still_used(old)
            if reason is None:
                self._checkpoints.delete(old.id)
                for filename in ADAPTER_FILES:
                    self._blobs.delete(f"{old.adapter_key}/{filename}")
            elif old is older[-1]:  # it has just left the newest few: say so once
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

    def _complete(self, job: Job, data: dict[str, Any]) -> Job:
        self._log(job.id, "Postprocessing started.")
        model_name = fine_tuned_model_name(job.base_model, job.id, job.suffix)
        checkpoints = self._checkpoints.list_all(job.id)
        if not checkpoints:
            return self._fail(job, JobError("internal_error", "Training finished without saving a model."))
        best_step = data.get("best_step")
        newest = next((c for c in checkpoints if c.step_number == best_step), checkpoints[-1])
        stopped = data.get("stopped_early")
        if stopped:
            self._log(job.id, _early_stop_message(stopped, newest.step_number))
        self._checkpoints.rename(newest.id, model_name)
        results = self._files.create_results(job.project_id, filename="results.csv", data=self.results_csv(job))
        self._log(job.id, f"Created results file: {results.id}")
        now = int(self._clock())
        trained = int(data.get("trained_tokens") or job.trained_tokens or 0)
        done = self._jobs.transition(
            job.id,
            JobStatus.SUCCEEDED,
            expect=set(ACTIVE),
            fine_tuned_model=model_name,
            finished_at=now,
            trained_tokens=trained,
            result_files=[results.id],
            estimated_finish=None,
            step=int(data.get("step") or job.step),
            **({"total_steps": int(data.get("step") or job.step)} if stopped else {}),
        )
        if done is None:
            return self._jobs.get_any(job.id)  # cancelled at the last moment: keep it cancelled
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
        columns = metric_columns(job.method.value)
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
        if current.status not in ACTIVE:
            return current
        run_dir = self.run_dir(job.id)
        crashes = _bump(run_dir / CRASH_FILE)
        reason = f"exit code {exit_code}" if exit_code >= 0 else f"killed by signal {-exit_code}"
        if crashes <= MAX_CRASH_RETRIES:
            saved = saved_step(run_dir)
            target = JobStatus.RESUMING if (run_dir / STATE_DIR).is_dir() else JobStatus.QUEUED
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
            has_state = (self.run_dir(job.id) / STATE_DIR).is_dir()
            target = JobStatus.RESUMING if has_state else JobStatus.QUEUED
            moved = self._jobs.transition(job.id, target, expect=set(ACTIVE), worker_id=None, trainer_pid=None)
            if moved is None:
                continue
            recovered += 1
            if job.status is JobStatus.PAUSING:
                self._log(job.id, "The worker restarted while the job was pausing; it resumes instead.")
            where = (
                f"from its last saved state (step {saved_step(self.run_dir(job.id)) or 0})"
                if has_state
                else "from the beginning"
            )
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
        self._log(job.id, f"Job failed: {error.message}", level=EventLevel.ERROR)
        return failed

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


def _startup_message(timings: dict[str, Any], started: dict[str, Any]) -> str:
    """Where the trainer's start-up time went, as an event (overheads are measured, not guessed)."""
    names = {
        "process_start": "process start and imports",
        "precision": "precision check",
        "data": "tokenizing the data",
        "model_load": "model load",
        "dpo_reference": "reference log-probs",
        "initial_validation": "validation before training",
    }
    parts = [f"{names.get(k, k)} {float(v):.1f} s" for k, v in timings.items() if v is not None]
    total = sum(float(v) for v in timings.values() if v is not None)
    where = f" on {started.get('device', 'cpu')} in {started.get('dtype', 'fp32')}"
    return f"Trainer ready in {total:.1f} s{where}: " + ", ".join(parts) + "."


def _early_stop_message(stopped: dict[str, Any], model_step: int) -> str:
    patience = int(stopped.get("patience") or 1)
    best = stopped.get("best_full_valid_loss")
    return (
        f"Stopped early after epoch {stopped.get('epoch')} of {stopped.get('n_epochs')}: the full validation loss has"
        f" not improved by more than {stopped.get('min_delta')} for {patience} epoch{'s' if patience > 1 else ''}"
        f" (best {float(best):.4f} at step {stopped.get('best_step')})."
        f" The model is the step-{model_step} checkpoint."
        if best is not None
        else f"Stopped early after epoch {stopped.get('epoch')}. The model is the step-{model_step} checkpoint."
    )


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


def _event_data(values: dict[str, float], step: int, total: int) -> dict[str, Any]:
    """A metrics event's data: the step's values; for RFT also OpenAI's ``scores`` object (rft §3.5)."""
    if "train_reward_mean" not in values:
        return dict(values)
    scores = {k: values[k] for k in ("train_reward_mean", "valid_reward_mean") if k in values}
    return {**values, "step": step, "total_steps": total, "scores": scores}


def _step_message(step: int, total: int, values: dict[str, float]) -> str:
    """``Step 10/40: training loss=0.6931`` (spec §4.4), with the reward accuracy for DPO; for RFT
    ``Step 10/20, train mean reward=0.42, full validation mean reward=0.68`` (rft §3.5)."""
    if "train_reward_mean" in values:
        message = f"Step {step}/{total}, train mean reward={values['train_reward_mean']:.2f}"
        if "valid_reward_mean" in values:
            message += f", full validation mean reward={values['valid_reward_mean']:.2f}"
        return message
    message = f"Step {step}/{total}: training loss={values.get('train_loss', float('nan')):.4f}"
    if "train_reward_accuracy" in values:
        message += f", reward accuracy={values['train_reward_accuracy']:.2f}"
    return message


def _validation_summary(values: dict[str, float]) -> str:
    """``full validation loss=0.6931, reward accuracy=0.00`` from ``full_valid_*`` values (RFT: its mean reward)."""
    if "valid_reward_mean" in values:
        return f"full validation mean reward={values['valid_reward_mean']:.2f}"
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
    progress = run_dir / "progress.jsonl"
    if progress.exists():
        attempt = len(list(run_dir.glob("progress-*.jsonl"))) + 1
        progress.rename(run_dir / f"progress-{attempt}.jsonl")


def _bump(counter: Path) -> int:
    value = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(value))
    return value


__all__ = ["ADAPTER_FILES", "RunService", "RunSettings", "adapter_path"]
