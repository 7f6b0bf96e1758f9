"""Fine-tuning wire objects: ``FineTuningJob``, ``FineTuningJobEvent``, ``FineTuningJobCheckpoint``.

Named and shaped as in ``openai.types.fine_tuning``; the dialect decides status names, ``"auto"`` vs
Azure's ``-1``, and the event level spelling (spec §4.2, §12).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

from tunery.api.dialects import Dialect
from tunery.api.schemas.common import Loose, one_of
from tunery.domain.checkpoints import Checkpoint
from tunery.domain.events import EventLevel, JobEvent
from tunery.domain.jobs import Hyperparameters, Job, JobStatus, Method
from tunery.services.job_requests import JobRequest, parse_job_request


def _json(value: Any) -> Any:
    return value  # checked, with the param named, by parse_job_request (method shapes vary by client)


_AUTO_OR_NUMBER = {"anyOf": [{"type": "string", "enum": ["auto"]}, {"type": "number"}]}
_HYPERPARAMETERS = {
    "type": "object",
    "properties": dict.fromkeys(("n_epochs", "batch_size", "learning_rate_multiplier", "beta"), _AUTO_OR_NUMBER),
}
_METHOD = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["supervised", "dpo"]},
        "supervised": {"type": "object", "properties": {"hyperparameters": _HYPERPARAMETERS}},
        "dpo": {"type": "object", "properties": {"hyperparameters": _HYPERPARAMETERS}},
    },
    "required": ["type"],
}


_TRAINING_TYPE = {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]}


class FineTuningJobCreate(Loose):
    """``POST /fine_tuning/jobs`` (OpenAI's ``CreateFineTuningJobRequest`` plus Azure's ``trainingType``).

    JSON types are checked here; the rules that depend on several fields (method sections, ``-1``/"auto",
    DPO's ``beta`` placement, limits) in ``parse_job_request``, once, before the service sees a typed
    ``JobRequest``."""

    model: Annotated[str, Field(min_length=1)]
    training_file: Annotated[str, Field(min_length=1)]
    validation_file: str | None = None
    method: Annotated[Any, *one_of(_json, {"anyOf": [_METHOD, {"type": "null"}]})] = None
    hyperparameters: Annotated[Any, *one_of(_json, {"anyOf": [_HYPERPARAMETERS, {"type": "null"}]})] = None
    seed: int | None = None
    suffix: str | None = None
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None
    trainingType: Annotated[Any, *one_of(_json, _TRAINING_TYPE)] = None
    training_type: Annotated[Any, *one_of(_json, _TRAINING_TYPE)] = None

    def to_domain(self) -> JobRequest:
        return parse_job_request(self.model_dump(exclude_unset=True))


# The OpenAI layout speaks OpenAI's status vocabulary (spec §4.2); Azure layouts show Azure's.
OPENAI_STATUS = {
    JobStatus.PENDING: "validating_files",
    JobStatus.PAUSING: "running",
    JobStatus.RESUMING: "queued",
}


def status_for(status: JobStatus, dialect: Dialect) -> str:
    if dialect is Dialect.OPENAI:
        return OPENAI_STATUS.get(status, status.value)
    return status.value


def hyperparameters_for(values: Hyperparameters, dialect: Dialect, method: Method) -> dict[str, Any]:
    """Numbers once resolved; before that ``"auto"`` (OpenAI, Azure v1) or ``-1`` (Azure dated)."""
    auto: Any = -1 if dialect is Dialect.AZURE_DATED else "auto"
    shown = {
        "n_epochs": values.n_epochs if values.n_epochs is not None else auto,
        "batch_size": values.batch_size if values.batch_size is not None else auto,
        "learning_rate_multiplier": (
            values.learning_rate_multiplier if values.learning_rate_multiplier is not None else auto
        ),
    }
    if method is Method.DPO:
        shown["beta"] = values.beta if values.beta is not None else auto
    if method is Method.REINFORCEMENT:
        for name in ("eval_interval", "eval_samples", "compute_multiplier"):
            value = getattr(values, name)
            shown[name] = value if value is not None else auto
        shown["reasoning_effort"] = values.reasoning_effort or "default"
    return shown


TOP_LEVEL_HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")


class JobErrorObject(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobProgress(BaseModel):
    """Tunery extension: how far a job has got (null before it starts)."""

    step: int
    total_steps: int | None
    trained_tokens: int | None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    model: str
    """The model the job fine-tunes: a base model, or a fine-tuned model / checkpoint (continuous)."""
    status: str
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    seed: int
    fine_tuned_model: str | None
    finished_at: int | None
    trained_tokens: int | None
    result_files: list[str]
    error: JobErrorObject | None
    estimated_finish: int | None
    organization_id: str | None
    integrations: list[dict[str, Any]] | None
    metadata: dict[str, str] | None
    suffix: str | None
    """Azure's name for the suffix; OpenAI's is ``user_provided_suffix``."""
    user_provided_suffix: str | None
    trainingType: str | None = None
    prompt_loss_weight: float | None = None
    progress: JobProgress | None = None
    """Tunery extension: step, total steps and tokens so far, once the job has started."""
    early_stopping: dict[str, float] | None = None
    """Tunery extension: the early-stopping rule in force ({patience, min_delta}); absent when off."""
    evals: list[dict[str, Any]] | None = None
    """Tunery extension: the evals run on every checkpoint, as requested."""
    distributed: dict[str, int] | None = None
    """Tunery extension: data-parallel training processes, as requested ({processes}); absent: the worker's."""
    lora: dict[str, Any] | None = None
    """Tunery extension: the job's LoRA settings ({rank, alpha, target_modules}), as requested; absent: the
    worker's (``GET /fine_tuning/rules`` shows them)."""
    max_seq_len: int | None = None
    """Tunery extension: tokens in a packed training row, as requested; absent: the worker's."""
    warmup_ratio: float | None = None
    """Tunery extension: the share of steps the learning rate warms up over, as requested; absent: the worker's."""
    hf_output_repo_name: str | None = None
    """Together's field: the Hugging Face Hub repository the model is pushed to on success (the token is never
    echoed); ``hf_output_format`` says which export (peft, merged, gguf)."""
    hf_output_format: str | None = None
    eval_results: list[dict[str, Any]] | None = None
    """Tunery extension: one entry per per-checkpoint eval run (step 0 = the base model)."""
    best_checkpoint: dict[str, Any] | None = None
    """Tunery extension: the checkpoint with the highest mean pass rate; deploy it as ``<model>:best``."""
    eval_id: str | None = None
    """Reinforcement jobs: the eval holding one run per validation evaluation (OpenAI's ``eval_id``)."""
    queue: dict[str, int] | None = None
    """Tunery extension, while a job waits to start: {ahead: jobs a worker takes first, training: jobs training now}."""

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        optional = ("trainingType", "prompt_loss_weight", "early_stopping", "distributed", "evals", "eval_results",
                    "lora", "max_seq_len", "warmup_ratio",
                    "hf_output_repo_name", "hf_output_format", "eval_id")  # fmt: skip
        for key in (*optional, "best_checkpoint", "queue"):
            if data.get(key) is None:
                data.pop(key, None)
        return data

    @classmethod
    def from_domain(cls, job: Job, dialect: Dialect) -> FineTuningJob:
        values = job.resolved or job.hyperparameters
        hyper = hyperparameters_for(values, dialect, job.method)
        section: dict[str, Any] = {"hyperparameters": dict(hyper)}
        if job.method is Method.DPO and "l2_multiplier" in job.extras:
            section["l2_multiplier"] = job.extras["l2_multiplier"]
        if job.method is Method.REINFORCEMENT:
            section["grader"] = job.extras.get("grader")
            section["response_format"] = job.extras.get("response_format")
        return cls(
            id=job.id,
            created_at=job.created_at,
            model=job.model,
            status=status_for(job.status, dialect),
            training_file=job.training_file,
            validation_file=job.validation_file,
            hyperparameters={k: v for k, v in hyper.items() if k in TOP_LEVEL_HYPERPARAMETERS},
            method={"type": job.method.value, job.method.value: section},
            seed=job.seed,
            fine_tuned_model=job.fine_tuned_model,
            finished_at=job.finished_at,
            trained_tokens=job.trained_tokens if job.status.terminal else None,  # "null while running"
            result_files=list(job.result_files),
            error=JobErrorObject(code=job.error.code, message=job.error.message, param=job.error.param)
            if job.error
            else None,
            estimated_finish=job.estimated_finish if job.status in (JobStatus.RUNNING, JobStatus.PAUSING) else None,
            organization_id=None if dialect is Dialect.AZURE_DATED else job.project_id,
            integrations=job.integrations,
            metadata=job.metadata,
            suffix=job.suffix,
            user_provided_suffix=job.suffix,
            trainingType=job.training_type if dialect.is_azure else None,
            prompt_loss_weight=job.extras.get("prompt_loss_weight"),
            early_stopping=job.extras.get("early_stopping"),
            distributed=job.extras.get("distributed"),
            lora=job.extras.get("lora"),
            max_seq_len=job.extras.get("max_seq_len"),
            warmup_ratio=job.extras.get("warmup_ratio"),
            eval_id=job.extras.get("eval_id"),
            hf_output_repo_name=(job.extras.get("hf_output") or {}).get("repo_id"),
            hf_output_format=(job.extras.get("hf_output") or {}).get("format"),
            progress=JobProgress(step=job.step, total_steps=job.total_steps, trained_tokens=job.trained_tokens)
            if job.started_at
            else None,
        )


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    """``info`` | ``warn`` | ``error`` (Azure's dated layout says ``warning``)."""
    message: str
    type: str
    data: dict[str, Any] | None = None

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("data") is None:
            data.pop("data", None)
        return data

    @classmethod
    def from_domain(cls, event: JobEvent, dialect: Dialect) -> FineTuningJobEvent:
        level = event.level.value
        if event.level is EventLevel.WARN and dialect is Dialect.AZURE_DATED:
            level = "warning"
        return cls(
            id=event.id,
            created_at=event.created_at,
            level=level,
            message=event.message,
            type=event.type.value,
            data=event.data,
        )


class FineTuningJobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, float]
    saved_at_pause: bool | None = None
    """Tunery extension: true for a checkpoint saved when the job paused (retention always keeps it)."""

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if not data.get("saved_at_pause"):
            data.pop("saved_at_pause", None)
        return data

    @classmethod
    def from_domain(cls, checkpoint: Checkpoint) -> FineTuningJobCheckpoint:
        return cls(
            saved_at_pause=checkpoint.pinned or None,
            id=checkpoint.id,
            created_at=checkpoint.created_at,
            fine_tuned_model_checkpoint=checkpoint.fine_tuned_model_checkpoint,
            fine_tuning_job_id=checkpoint.job_id,
            step_number=checkpoint.step_number,
            metrics=checkpoint.metrics,
        )


class JobMetricRow(BaseModel):
    """Tunery extension: one optimizer step's metrics (a ``results.csv`` row) while the job trains."""

    object: Literal["fine_tuning.job.metrics"] = "fine_tuning.job.metrics"
    step: int
    metrics: dict[str, float]
