"""Fine-tuning jobs as users see them: create, retrieve, list, cancel, pause, resume, delete, events,
checkpoints (spec §3.2). Nothing trains here: create records a ``pending`` job and returns at once; the
worker (``services.runs``) does the rest. Every state change goes through the transitions table and a
compare-and-set in the store, so a user's cancel and a worker's progress never overwrite each other.
"""

from __future__ import annotations

import builtins
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunery.domain.checkpoints import Checkpoint, MetricRow
from tunery.domain.datasets import DatasetFormat
from tunery.domain.errors import Conflict, InvalidRequest, NotFound, QuotaExceeded
from tunery.domain.events import EventLevel, EventType, JobEvent
from tunery.domain.files import FilePurpose, FileRecord, FileStatus
from tunery.domain.ids import new_id
from tunery.domain.jobs import CLAIMABLE, TERMINAL, Job, JobStatus, Method, check_transition
from tunery.domain.pagination import Page, PageRequest
from tunery.graders import Grader, parse_grader, validate_grader
from tunery.services.files import FileService
from tunery.services.job_requests import GRADER_PARAM, JobRequest
from tunery.services.models import ModelService
from tunery.services.shared_state import drop_shared_state
from tunery.storage.blobs import BlobStore
from tunery.storage.checkpoints import CheckpointStore, MetricStore
from tunery.storage.events import EventStore
from tunery.storage.jobs import JobStore
from tunery.storage.models import ModelStore

log = logging.getLogger(__name__)

FORMAT_FOR_METHOD = {
    Method.SUPERVISED: DatasetFormat.CHAT,
    Method.DPO: DatasetFormat.PREFERENCE,
    Method.REINFORCEMENT: DatasetFormat.REINFORCEMENT,
}
RFT_RESERVED_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})
# evals-graders-rft.md §3.1: at most 50,000 training and 1,000 validation prompts.
RFT_MAX_ROWS = {"training_file": 50_000, "validation_file": 1_000}
CAS_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class JobRules:
    max_jobs_per_project: int = 100
    max_waiting_per_project: int = 20  # pending + queued (spec §11: "Max training jobs queued 20")
    hub_token_configured: bool = False  # the server has a Hub token for jobs with hf_output_repo_name and none


def training_copy_key(job_id: str, which: str) -> str:
    """Where a job keeps its own copy of its training/validation data."""
    return f"jobs/{job_id}/{which}.jsonl"


class JobService:
    def __init__(
        self,
        jobs: JobStore,
        events: EventStore,
        checkpoints: CheckpointStore,
        models: ModelStore,
        files: FileService,
        model_service: ModelService,
        rules: JobRules,
        *,
        clock: Callable[[], float] = time.time,
        metrics: MetricStore | None = None,
        blobs: BlobStore | None = None,
    ) -> None:
        self._metrics = metrics
        self._blobs = blobs
        self._jobs = jobs
        self._events = events
        self._checkpoints = checkpoints
        self._models = models
        self._files = files
        self._model_service = model_service
        self._rules = rules
        self._clock = clock
        self._check_judges: Callable[[str, Grader, str], None] | None = None
        self._create_eval: Callable[[str, str, dict[str, Any]], str] | None = None

    def set_eval_creator(self, create: Callable[[str, str, dict[str, Any]], str]) -> None:
        """How an RFT job gets its eval at create (``RftEvals.create_eval``: project, job id, grader → eval id)."""
        self._create_eval = create

    def set_judge_check(self, check: Callable[[str, Grader, str], None]) -> None:
        """How an RFT grader's judge models are checked at create (``GraderService.check_models``)."""
        self._check_judges = check

    # ----------------------------------------------------------------------------------------- create
    def create(self, project_id: str, request: JobRequest) -> Job:
        """Check the request, keep a copy of the data, and record a pending job.

        Raises:
            InvalidRequest: a bad field, an unknown model, or a file that is not usable (``param`` names it).
            QuotaExceeded: too many jobs in this project.
        """
        try:
            ref = self._model_service.resolve(project_id, request.model)
        except NotFound as exc:
            raise InvalidRequest(exc.message, param="model", code="model_not_found") from None
        expected = FORMAT_FOR_METHOD[request.method]
        training = self._usable_file(project_id, request.training_file, "training_file", expected, request)
        self._files.check_training_size(training)
        validation = (
            self._usable_file(project_id, request.validation_file, "validation_file", expected, request)
            if request.validation_file
            else None
        )
        if request.method is Method.REINFORCEMENT:
            files = {"training_file": training} | ({"validation_file": validation} if validation else {})
            self._check_grader_fields(project_id, request, files)
        if ref.adapter_key and "lora" in request.extras:
            raise InvalidRequest(
                f"lora cannot be set when continuing the fine-tune '{ref.name}': training goes on in its own "
                "adapter, whose rank, alpha and target modules are fixed. Leave lora out, or start from the base "
                f"model '{ref.base_model}' to train an adapter of another shape.",
                param="lora",
            )
        hub_token = "hf_api_token" in request.extras or self._rules.hub_token_configured
        if "hf_output" in request.extras and not hub_token:
            raise InvalidRequest(
                "hf_output_repo_name needs a Hugging Face token: pass hf_api_token, or the admin sets "
                "TUNERY_PORTABILITY__HF_TOKEN.",
                param="hf_api_token",
            )
        self._check_quota(project_id)
        now = int(self._clock())
        job = Job(
            id=new_id("ftjob"),
            project_id=project_id,
            created_at=now,
            model=request.model,
            base_model=ref.base_model,
            parent_model=ref.name if ref.adapter_key else None,
            training_file=training.id,
            validation_file=validation.id if validation else None,
            method=request.method,
            hyperparameters=request.hyperparameters,
            seed=request.seed,
            status=JobStatus.PENDING,
            suffix=request.suffix,
            metadata=request.metadata,
            integrations=request.integrations,
            training_type=request.training_type,
            extras=request.extras,
        )
        if request.method is Method.REINFORCEMENT and self._create_eval is not None:
            eval_id = self._create_eval(project_id, job.id, request.extras["grader"])
            job = job.with_changes(extras={**job.extras, "eval_id": eval_id})
        self._files.copy_to(training, training_copy_key(job.id, "training"))
        if validation is not None:
            self._files.copy_to(validation, training_copy_key(job.id, "validation"))
        self._jobs.insert(job)
        self.log(job.id, f"Created fine-tuning job: {job.id}")
        return job

    # ----------------------------------------------------------------------------------------- reads
    def retrieve(self, project_id: str, job_id: str) -> Job:
        return self._jobs.get(project_id, job_id)

    def list(self, project_id: str, page: PageRequest, metadata: dict[str, str] | None = None) -> Page[Job]:
        return self._jobs.list(project_id, page, metadata=metadata)

    def list_events(self, project_id: str, job_id: str, page: PageRequest) -> Page[JobEvent]:
        self._jobs.get(project_id, job_id)
        return self._events.list(job_id, page)

    def list_checkpoints(self, project_id: str, job_id: str, page: PageRequest) -> Page[Checkpoint]:
        self._jobs.get(project_id, job_id)
        return self._checkpoints.list(job_id, page)

    def queue_position(self, job: Job) -> dict[str, int] | None:
        """For a job waiting to start (pending, queued, resuming): jobs a worker takes before it and jobs training
        now, across the server (counts only, no names). None once it has started."""
        if job.status not in CLAIMABLE:
            return None
        ahead, training = self._jobs.count_ahead(job.id)
        return {"ahead": ahead, "training": training}

    def list_metrics(self, project_id: str, job_id: str, *, after_step: int, limit: int) -> builtins.list[MetricRow]:
        """Every step's metrics after ``after_step`` (lowest first, at most ``limit``): the portal's live chart
        gets each step's training loss, not only the steps that have a metrics event."""
        self._jobs.get(project_id, job_id)
        if self._metrics is None:
            return []
        return self._metrics.list(job_id, after_step=after_step, limit=limit)

    # ----------------------------------------------------------------------------------------- control
    def cancel(self, project_id: str, job_id: str) -> Job:
        """Any non-terminal job can be cancelled; a running trainer stops within one optimizer step.

        The job can never resume, so its shared trainer state goes now: a paused (or not yet restarted) job has
        no trainer whose end would drop it. A running trainer's worker drops it again when the trainer exits,
        should it share one more save meanwhile. Its checkpoints and data stay (they are still deployable).
        """
        job = self._move(
            project_id, job_id, JobStatus.CANCELLED, "cancel", finished_at=int(self._clock()), estimated_finish=None
        )
        self.log(job.id, "Job cancelled.")
        if self._blobs is not None:
            drop_shared_state(self._blobs, job.id)
        return job

    def pause(self, project_id: str, job_id: str) -> Job:
        """Only a running job that has trained at least one step can pause (spec §3.2.6)."""
        job = self._jobs.get(project_id, job_id)
        if job.status is JobStatus.RUNNING and job.step < 1:
            raise Conflict(
                f"Cannot pause job {job.id} yet: it has not trained a step. Pause is allowed once a running "
                "job has trained at least one step.",
                param="fine_tuning_job_id",
                code="unexpectedEntityState",
            )
        job = self._move(project_id, job_id, JobStatus.PAUSING, "pause", expect={JobStatus.RUNNING})
        self.log(job.id, "Pause requested; the job pauses after the current step and saves a checkpoint.")
        return job

    def resume(self, project_id: str, job_id: str) -> Job:
        job = self._move(project_id, job_id, JobStatus.RESUMING, "resume", expect={JobStatus.PAUSED}, finished_at=None)
        self.log(job.id, "Job resume requested.")
        return job

    def delete(self, project_id: str, job_id: str) -> None:
        """Delete a finished or paused job, its fine-tuned model and checkpoints (Azure dated ``DELETE``), and
        its blobs under ``jobs/<id>/``: the shared trainer state a pause left and its copies of its data (the
        uploaded files it was made from stay).

        Raises:
            Conflict: the job is still active (cancel it first), or its model is deployed.
        """
        job = self._jobs.get(project_id, job_id)
        if job.status not in TERMINAL | {JobStatus.PAUSED}:
            raise Conflict(
                f"Cannot delete job {job.id} while it is {job.status.value}; cancel it first.",
                param="fine_tuning_job_id",
                code="unexpectedEntityState",
            )
        self._model_service.check_unused(project_id, job.id, job.fine_tuned_model or job.id)
        if job.fine_tuned_model and self._models.get(project_id, job.fine_tuned_model) is not None:
            self._model_service.delete(project_id, job.fine_tuned_model)
        self._jobs.delete(project_id, job_id)
        self._model_service.notify_deleted(project_id, None)  # its checkpoints are gone too
        if self._blobs is not None:  # a paused job's shared trainer state, and the job's own copies of its data
            drop_shared_state(self._blobs, job.id)
            try:
                for which in ("training", "validation"):
                    self._blobs.delete(training_copy_key(job.id, which))
            except Exception:  # the job is gone already; a store that fails now leaves two files, not a 5xx
                log.warning("job %s: could not delete its copies of its data", job.id, exc_info=True)

    # ----------------------------------------------------------------------------------------- helpers
    def log(
        self, job_id: str, message: str, *, level: EventLevel = EventLevel.INFO, data: dict[str, Any] | None = None
    ) -> None:
        """Append an event to the job (a ``metrics`` event when it carries ``data``)."""
        self._events.append(
            JobEvent(
                id=new_id("ftevent"), job_id=job_id, created_at=int(self._clock()), level=level, message=message,
                type=EventType.METRICS if data else EventType.MESSAGE, data=data,
            )
        )  # fmt: skip

    def _move(
        self,
        project_id: str,
        job_id: str,
        target: JobStatus,
        action: str,
        *,
        expect: set[JobStatus] | None = None,
        **changes: Any,
    ) -> Job:
        """Compare-and-set ``target``, re-reading when a worker changed the job in between."""
        for _ in range(CAS_ATTEMPTS):
            job = self._jobs.get(project_id, job_id)
            if expect is not None and job.status not in expect:
                allowed = " or ".join(sorted(s.value for s in expect))
                raise Conflict(
                    f"Cannot {action} job {job.id}: it is {job.status.value}; only a {allowed} job can {action}.",
                    param="fine_tuning_job_id",
                    code="unexpectedEntityState",
                )
            check_transition(job.id, job.status, target, action)
            updated = self._jobs.transition(job.id, target, expect={job.status}, **changes)
            if updated is not None:
                return updated
        raise Conflict(f"Job {job_id} is changing state; try again.", param="fine_tuning_job_id")

    def _usable_file(
        self, project_id: str, file_id: str, param: str, expected: DatasetFormat, request: JobRequest
    ) -> FileRecord:
        try:
            record = self._files.retrieve(project_id, file_id)
        except NotFound:
            raise InvalidRequest(f"{param} '{file_id}' does not exist in this project.", param=param) from None
        if record.purpose is not FilePurpose.FINE_TUNE:
            raise InvalidRequest(
                f"{param} '{file_id}' has purpose '{record.purpose.value}'; upload it with purpose 'fine-tune'.",
                param=param,
            )
        if record.status is FileStatus.ERROR:
            first = record.problems[0].describe() if record.problems else (record.status_details or "")
            raise InvalidRequest(
                f"{param} '{file_id}' failed validation ({record.problem_count} problem(s); first: {first}). "
                "Fix the file and upload it again.",
                param=param,
                code="invalid_training_file" if param == "training_file" else "invalid_validation_file",
            )
        if record.status is not FileStatus.PROCESSED:
            raise InvalidRequest(
                f"{param} '{file_id}' is still being checked (status {record.status.value}); wait until it is "
                "processed (client.files.wait_for_processing) and try again.",
                param=param,
                code="file_not_ready",
            )
        if record.format and record.format != expected.value:
            raise InvalidRequest(
                f"{param} '{file_id}' holds {record.format} data, but method '{request.method.value}' needs "
                f"{expected.value} data.",
                param=param,
            )
        return record

    def _check_grader_fields(self, project_id: str, request: JobRequest, files: dict[str, FileRecord]) -> None:
        """Every ``{{item.x}}`` of an RFT grader must name a field that every row of both files has, and the
        files must stay within RFT's row limits (400s naming the param)."""
        fields: set[str] | None = None
        for param, record in files.items():
            _, stream = self._files.content(project_id, record.id)
            rows = 0
            with stream:
                for raw in stream:
                    line = raw.strip()
                    if not line:
                        continue
                    rows += 1
                    if rows > RFT_MAX_ROWS[param]:
                        raise InvalidRequest(
                            f"{param} '{record.id}' has more than {RFT_MAX_ROWS[param]:,} rows, the most a "
                            "reinforcement job takes.",
                            param=param,
                        )
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue  # the file checks report it
                    if isinstance(row, dict):
                        keys = set(row) - RFT_RESERVED_KEYS
                        fields = keys if fields is None else fields & keys
        grader = parse_grader(request.extras["grader"], param=GRADER_PARAM)
        validate_grader(grader, item_fields=fields or set(), param=GRADER_PARAM)
        if self._check_judges is not None:
            self._check_judges(project_id, grader, GRADER_PARAM)

    def _check_quota(self, project_id: str) -> None:
        if self._jobs.count(project_id) >= self._rules.max_jobs_per_project:
            raise QuotaExceeded(
                f"This project already has {self._rules.max_jobs_per_project} fine-tuning jobs, the most allowed.",
                param="model",
            )
        waiting = self._jobs.count(project_id, {JobStatus.PENDING, JobStatus.QUEUED})
        if waiting >= self._rules.max_waiting_per_project:
            raise QuotaExceeded(
                f"This project already has {waiting} jobs waiting to run; wait for some to start.",
                param="model",
            )
