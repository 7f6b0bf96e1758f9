"""Migrate fine-tuning jobs from another OpenAI-compatible service (OpenAI, Azure OpenAI, another Tunery).

Drives the source through the official ``openai`` client: lists its fine-tuning jobs, downloads each job's
training and validation files, uploads them here, and recreates the job with the same method,
hyperparameters, seed, suffix and metadata on the chosen base model. Every source job gets one row in
``migrated_jobs`` (moved, or not moved with the reason), so a second run moves nothing twice and retries
only what failed; the source job's fine-tuned model id becomes an alias of the new job's model. The report
also sets old and new answers side by side on a few held-out prompts wherever the old model still answers
and the new job has finished. Training happens on the worker as for any job; this service only creates.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import openai

from tunery.domain.errors import Conflict, InvalidRequest, NotFound, ServiceError
from tunery.domain.files import FileStatus
from tunery.services.chat import ChatRequest, ChatService, Completion
from tunery.services.files import FileService
from tunery.services.job_requests import parse_job_request
from tunery.services.jobs import JobService
from tunery.services.models import ModelService
from tunery.storage.portability import MigratedJob, MigrationStore

MOVABLE = frozenset({"succeeded", "running", "queued", "validating_files", "pending", "paused"})
PROMPTS_PER_JOB = 3
FILE_CHECK_TIMEOUT_S = 600.0
ClientFactory = Callable[[str, str], openai.OpenAI]


@dataclass(frozen=True, slots=True)
class MigrationRequest:
    source_url: str
    api_key: str
    base_model: str | None = None
    compare: bool = True
    max_tokens: int = 48
    dry_run: bool = False  # list what would move (and what would not, and why); create nothing


@dataclass(slots=True)
class ReportEntry:
    source_job_id: str
    source_model: str | None
    status: str  # moved | already_moved | not_moved | would_move (a dry run)
    job_id: str | None = None
    reason: str | None = None
    fine_tuned_model: str | None = None
    comparisons: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_job_id": self.source_job_id, "source_model": self.source_model, "status": self.status,
            "job_id": self.job_id, "reason": self.reason, "fine_tuned_model": self.fine_tuned_model,
            "comparisons": self.comparisons,
        }  # fmt: skip


def default_client(url: str, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=api_key, max_retries=1, timeout=60.0)


class MigrationService:
    def __init__(
        self,
        store: MigrationStore,
        files: FileService,
        jobs: JobService,
        models: ModelService,
        chat: ChatService,
        *,
        client_factory: ClientFactory = default_client,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._store = store
        self._files = files
        self._jobs = jobs
        self._models = models
        self._chat = chat
        self._client_factory = client_factory
        self._clock = clock
        self._sleep = sleep

    def migrate(self, project_id: str, request: MigrationRequest) -> dict[str, Any]:
        """Move every source job not moved yet; return the report (``moved``, ``not_moved``, ``entries``).

        Raises:
            InvalidRequest: the source cannot be reached or refuses the key (code ``source_unreachable`` /
                ``source_unauthorized``), or the base model is unknown.
        """
        url = request.source_url.rstrip("/")
        base = request.base_model or self._models.catalog.default.name
        try:
            self._models.catalog.get(base)
        except NotFound as exc:
            raise InvalidRequest(exc.message, param="base_model") from None
        try:
            client = self._client_factory(url, request.api_key)
            source_jobs = list(client.fine_tuning.jobs.list(limit=100))
        except openai.AuthenticationError:
            raise InvalidRequest(
                f"The source {url} refused the API key (401 Unauthorized).", param="api_key",
                code="source_unauthorized",
            ) from None  # fmt: skip
        except openai.APIConnectionError as exc:
            raise InvalidRequest(
                f"Cannot reach the source {url}: {exc.__cause__ or exc}.", param="source_url", code="source_unreachable"
            ) from None
        except openai.APIStatusError as exc:
            raise InvalidRequest(
                f"The source {url} answered {exc.status_code} when listing fine-tuning jobs: {exc.message}",
                param="source_url", code="source_unreachable",
            ) from None  # fmt: skip
        except Exception as exc:  # the boundary with a remote service: e.g. a URL its HTTP client cannot parse
            raise InvalidRequest(
                f"Cannot use the source URL {url!r}: {exc}.", param="source_url", code="source_unreachable"
            ) from None
        if request.dry_run:
            entries = [self._preview(project_id, url, job) for job in reversed(source_jobs)]
        else:
            entries = [self._one(project_id, url, client, job, base) for job in reversed(source_jobs)]
        if request.compare and not request.dry_run:
            for entry in entries:
                self._compare(project_id, url, client, entry, request.max_tokens)
        return {
            "object": "migration.report",
            "source_url": url,
            "base_model": base,
            "dry_run": request.dry_run,
            "moved": sum(e.status == "moved" for e in entries),
            "already_moved": sum(e.status == "already_moved" for e in entries),
            "not_moved": sum(e.status == "not_moved" for e in entries),
            "would_move": sum(e.status == "would_move" for e in entries),
            "entries": [e.to_dict() for e in entries],
        }

    def list(self, project_id: str) -> builtins.list[MigratedJob]:
        return self._store.list(project_id)

    # ----------------------------------------------------------------------------------------- one job
    def _preview(self, project_id: str, url: str, job: Any) -> ReportEntry:
        """What a run would do with this source job, without downloading or creating anything."""
        known = self._store.get(project_id, url, job.id)
        if known is not None and known.status == "moved":
            return ReportEntry(job.id, known.source_model, "already_moved", job_id=known.job_id,
                               fine_tuned_model=self._new_model(project_id, known.job_id))  # fmt: skip
        if job.status not in MOVABLE:
            reason = _not_movable(job.status)
            return ReportEntry(job.id, job.fine_tuned_model, "not_moved", reason=reason)
        return ReportEntry(job.id, job.fine_tuned_model, "would_move")

    def _one(self, project_id: str, url: str, client: openai.OpenAI, job: Any, base: str) -> ReportEntry:
        known = self._store.get(project_id, url, job.id)
        if known is not None and known.status == "moved":
            return ReportEntry(job.id, known.source_model, "already_moved", job_id=known.job_id,
                               fine_tuned_model=self._new_model(project_id, known.job_id))  # fmt: skip
        if known is not None:
            self._store.delete(project_id, url, job.id)  # not moved last time: try again
        try:
            new_job_id, details = self._recreate(project_id, client, job, base)
        except (ServiceError, openai.OpenAIError) as exc:
            reason = exc.message if isinstance(exc, ServiceError) else f"source error: {exc}"
            self._record(project_id, url, job, None, "not_moved", reason, {})
            return ReportEntry(job.id, job.fine_tuned_model, "not_moved", reason=reason)
        try:
            self._record(project_id, url, job, new_job_id, "moved", None, details)
        except Conflict:  # another run moved it meanwhile; ours is a duplicate: cancel it
            self._jobs.cancel(project_id, new_job_id)
            known = self._store.get(project_id, url, job.id)
            return ReportEntry(job.id, job.fine_tuned_model, "already_moved", job_id=known.job_id if known else None)
        return ReportEntry(job.id, job.fine_tuned_model, "moved", job_id=new_job_id)

    def _recreate(self, project_id: str, client: openai.OpenAI, job: Any, base: str) -> tuple[str, dict[str, Any]]:
        if job.status not in MOVABLE:
            raise InvalidRequest(_not_movable(job.status))
        training, prompts = self._copy_file(project_id, client, job.training_file, "training_file")
        validation = None
        if job.validation_file:
            validation, held_out = self._copy_file(project_id, client, job.validation_file, "validation_file")
            prompts = held_out or prompts
        body: dict[str, Any] = {"model": base, "training_file": training}
        if validation:
            body["validation_file"] = validation
        method = job.method.model_dump(exclude_none=True) if job.method is not None else None
        if method:
            body["method"] = method
        elif job.hyperparameters is not None:
            body["hyperparameters"] = job.hyperparameters.model_dump(exclude_none=True)
        if job.seed is not None:
            body["seed"] = job.seed
        suffix = getattr(job, "user_provided_suffix", None) or (job.model_extra or {}).get("suffix")
        if suffix:
            body["suffix"] = suffix
        metadata = dict(job.metadata or {})
        metadata.setdefault("migrated_from", job.id)
        body["metadata"] = dict(list(metadata.items())[:16])
        created = self._jobs.create(project_id, parse_job_request(body))
        details = {"training_file": training, "validation_file": validation, "base_model": base,
                   "prompts": prompts, "source_base_model": job.model}  # fmt: skip
        return created.id, details

    def _copy_file(
        self, project_id: str, client: openai.OpenAI, file_id: str, param: str
    ) -> tuple[str, builtins.list[Any]]:
        """Download a source file, upload it here, wait for its checks; return its id and held-out prompts."""
        source = client.files.retrieve(file_id)
        data = client.files.content(file_id).read()
        record = self._files.create(
            project_id, filename=source.filename or f"{file_id}.jsonl", purpose="fine-tune", chunks=[data]
        )
        deadline = self._clock() + FILE_CHECK_TIMEOUT_S
        while record.status not in (FileStatus.PROCESSED, FileStatus.ERROR) and self._clock() < deadline:
            self._sleep(0.2)
            record = self._files.retrieve(project_id, record.id)
        if record.status is not FileStatus.PROCESSED:
            first = record.problems[0].describe() if record.problems else (record.status_details or record.status)
            raise InvalidRequest(f"the {param} {file_id} is not usable here: {first}")
        return record.id, _prompts(data)

    def _record(
        self, project_id: str, url: str, job: Any, new_job: str | None, status: str, reason: str | None,
        details: dict[str, Any],
    ) -> None:  # fmt: skip
        self._store.record(
            MigratedJob(project_id=project_id, source_url=url, source_job_id=job.id, source_model=job.fine_tuned_model,
                        job_id=new_job, status=status, reason=reason, created_at=int(self._clock()), details=details)
        )  # fmt: skip

    def _new_model(self, project_id: str, job_id: str | None) -> str | None:
        return self._jobs.retrieve(project_id, job_id).fine_tuned_model if job_id else None

    # ----------------------------------------------------------------------------------------- compare
    def _compare(self, project_id: str, url: str, client: openai.OpenAI, entry: ReportEntry, max_tokens: int) -> None:
        """Old and new answers side by side, where the new job has a model and the old model still answers."""
        if entry.job_id is None or entry.source_model is None:
            return
        entry.fine_tuned_model = self._new_model(project_id, entry.job_id)
        known = self._store.get(project_id, url, entry.source_job_id)
        if entry.fine_tuned_model is None or known is None:
            return
        for messages in known.details.get("prompts", [])[:PROMPTS_PER_JOB]:
            row: dict[str, Any] = {"messages": messages}
            try:
                old = client.chat.completions.create(
                    model=entry.source_model, messages=messages, temperature=0, max_tokens=max_tokens
                )
                row["old"] = old.choices[0].message.content
            except openai.OpenAIError as exc:
                row["old"] = None
                row["old_error"] = str(exc)
            request = ChatRequest(
                model=entry.fine_tuned_model, messages=messages, temperature=0.0, top_p=1.0, max_tokens=max_tokens,
                n=1, stop=(), seed=None, stream=False, include_usage=False,
            )  # fmt: skip
            answer = self._chat.create(project_id, request)
            row["new"] = answer.texts[0] if isinstance(answer, Completion) else None
            entry.comparisons.append(row)


def _not_movable(status: str) -> str:
    return f"the source job is {status}; only jobs that ran or will run are moved"


def _prompts(data: bytes) -> list[Any]:
    """Up to three conversations from a chat JSONL file, cut before their last assistant turn."""
    prompts: list[Any] = []
    for line in data.decode("utf-8", errors="replace").splitlines()[-PROMPTS_PER_JOB:]:
        try:
            messages = json.loads(line).get("messages")
        except (ValueError, AttributeError):
            continue
        if not isinstance(messages, list):
            continue
        last = max((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "assistant"),
                   default=None)  # fmt: skip
        if last:
            prompts.append([{"role": m["role"], "content": m.get("content")} for m in messages[:last]])
    return prompts
