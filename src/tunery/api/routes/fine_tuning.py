"""``/fine_tuning/jobs``: create, list, retrieve, cancel, pause, resume, delete, events, checkpoints (§3.2)."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from tunery.api.deps import DialectDep, PrincipalDep, ServicesDep
from tunery.api.dialects import Dialect
from tunery.api.edge import bounded
from tunery.api.schemas.common import ListResponse
from tunery.api.schemas.fine_tuning import (
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobCreate,
    FineTuningJobEvent,
    JobMetricRow,
)
from tunery.domain.errors import InvalidRequest, NotFound, ServiceError
from tunery.domain.jobs import Job
from tunery.domain.pagination import Order, PageRequest
from tunery.services.container import Services
from tunery.services.job_requests import request_rules

router = APIRouter(tags=["fine-tuning"], route_class=bounded("jobs"))

METADATA_QUERY = re.compile(r"^metadata\[(?P<key>[^\]]+)\]$")
JOBS_PAGE = {"default_limit": 20, "max_limit": 100}
EVENTS_PAGE = {"default_limit": 20, "max_limit": 1000}
CHECKPOINTS_PAGE = {"default_limit": 10, "max_limit": 100}
METRICS_MAX_LIMIT = 10000


def _model_known(services: Services, project_id: str, model: object) -> bool:
    if not isinstance(model, str) or not model:
        return False
    try:
        services.models.resolve(project_id, model)
    except ServiceError:
        return False
    return True


def _job(services: Services, job: Job, dialect: Dialect) -> FineTuningJob:
    """The wire job, with the per-checkpoint eval extension fields when the job has evals."""
    shown = FineTuningJob.from_domain(job, dialect)
    extension = services.checkpoint_evals.results(job)
    queue = services.jobs.queue_position(job)
    if queue is not None:
        extension = {**(extension or {}), "queue": queue}
    if extension:
        shown = shown.model_copy(update=extension)
    return shown


def _page(limit: int | None, after: str | None, bounds: dict[str, int]) -> PageRequest:
    return PageRequest.build(limit=limit, after=after, order=None, default_order=Order.DESC, **bounds)


@router.post("/fine_tuning/jobs", response_model=FineTuningJob)
def create_job(
    request: Request,
    services: ServicesDep,
    principal: PrincipalDep,
    dialect: DialectDep,
    body: FineTuningJobCreate,
) -> Response:
    extensions = body.model_extra or {}
    if extensions.get("evals") is not None and _model_known(services, principal.project_id, body.model):
        checked = services.checkpoint_evals.check(principal.project_id, extensions["evals"], body.model)
        body = body.model_copy(update={"evals": checked})
    job = services.jobs.create(principal.project_id, body.to_domain())
    services.checkpoint_evals.start(job)
    headers = {}
    if dialect.created_status == 201:
        headers["Location"] = f"{str(request.base_url).rstrip('/')}/openai/fine_tuning/jobs/{job.id}"
    payload = _job(services, job, dialect).model_dump(mode="json")
    return JSONResponse(payload, status_code=dialect.created_status, headers=headers)


@router.get("/fine_tuning/jobs", response_model=ListResponse[FineTuningJob])
def list_jobs(
    request: Request,
    services: ServicesDep,
    principal: PrincipalDep,
    dialect: DialectDep,
    limit: int | None = None,
    after: str | None = None,
) -> ListResponse[FineTuningJob]:
    metadata = {
        match.group("key"): value
        for name, value in request.query_params.items()
        if (match := METADATA_QUERY.match(name))
    }
    result = services.jobs.list(principal.project_id, _page(limit, after, JOBS_PAGE), metadata or None)
    data = [_job(services, job, dialect) for job in result.data]
    return ListResponse[FineTuningJob].of(data, result.has_more)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}", response_model=FineTuningJob)
def retrieve_job(
    fine_tuning_job_id: str, services: ServicesDep, principal: PrincipalDep, dialect: DialectDep
) -> FineTuningJob:
    return _job(services, services.jobs.retrieve(principal.project_id, fine_tuning_job_id), dialect)


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/cancel", response_model=FineTuningJob)
def cancel_job(
    fine_tuning_job_id: str, services: ServicesDep, principal: PrincipalDep, dialect: DialectDep
) -> FineTuningJob:
    return FineTuningJob.from_domain(services.jobs.cancel(principal.project_id, fine_tuning_job_id), dialect)


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/pause", response_model=FineTuningJob)
def pause_job(
    fine_tuning_job_id: str, services: ServicesDep, principal: PrincipalDep, dialect: DialectDep
) -> FineTuningJob:
    return FineTuningJob.from_domain(services.jobs.pause(principal.project_id, fine_tuning_job_id), dialect)


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/resume", response_model=FineTuningJob)
def resume_job(
    fine_tuning_job_id: str, services: ServicesDep, principal: PrincipalDep, dialect: DialectDep
) -> FineTuningJob:
    return FineTuningJob.from_domain(services.jobs.resume(principal.project_id, fine_tuning_job_id), dialect)


@router.delete("/fine_tuning/jobs/{fine_tuning_job_id}", status_code=204)
def delete_job(
    fine_tuning_job_id: str, services: ServicesDep, principal: PrincipalDep, dialect: DialectDep
) -> Response:
    if dialect is not Dialect.AZURE_DATED:
        raise NotFound(
            "Deleting a job is part of Azure's dated API (/openai/fine_tuning/jobs/{id}?api-version=...); "
            "on this layout delete the fine-tuned model with DELETE /models/{model}.",
            param="fine_tuning_job_id",
        )
    services.jobs.delete(principal.project_id, fine_tuning_job_id)
    return Response(status_code=204)


# The Azure REST how-to shows POST for events and checkpoints (a docs bug; GET is right): accept both.
@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/events", response_model=ListResponse[FineTuningJobEvent])
@router.post(
    "/fine_tuning/jobs/{fine_tuning_job_id}/events",
    response_model=ListResponse[FineTuningJobEvent],
    name="list_events_by_post",
)
def list_events(
    fine_tuning_job_id: str,
    services: ServicesDep,
    principal: PrincipalDep,
    dialect: DialectDep,
    limit: int | None = None,
    after: str | None = None,
) -> ListResponse[FineTuningJobEvent]:
    page = services.jobs.list_events(principal.project_id, fine_tuning_job_id, _page(limit, after, EVENTS_PAGE))
    data = [FineTuningJobEvent.from_domain(event, dialect) for event in page.data]
    return ListResponse[FineTuningJobEvent].of(data, page.has_more)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints", response_model=ListResponse[FineTuningJobCheckpoint])
@router.post(
    "/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
    response_model=ListResponse[FineTuningJobCheckpoint],
    name="list_checkpoints_by_post",
)
def list_checkpoints(
    fine_tuning_job_id: str,
    services: ServicesDep,
    principal: PrincipalDep,
    limit: int | None = None,
    after: str | None = None,
) -> ListResponse[FineTuningJobCheckpoint]:
    page = services.jobs.list_checkpoints(
        principal.project_id, fine_tuning_job_id, _page(limit, after, CHECKPOINTS_PAGE)
    )
    job = services.jobs.retrieve(principal.project_id, fine_tuning_job_id)
    data = []
    for checkpoint in page.data:
        shown = FineTuningJobCheckpoint.from_domain(checkpoint)
        shown.metrics = {**shown.metrics, **services.checkpoint_evals.metrics(job, checkpoint)}
        data.append(shown)
    return ListResponse[FineTuningJobCheckpoint].of(data, page.has_more, ids=True)


@router.get("/fine_tuning/rules")
def job_rules(services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    """Tunery extension: the limits a create request is checked against (hyperparameter ranges, seed, suffix,
    the fewest training examples; the training extensions' ranges with this server's defaults), so the portal
    checks values as they are typed with the API's own rules; and how many checkpoints a job keeps."""
    rules = request_rules()
    defaults = services.runs.training_defaults()
    for name, rule in rules["advanced"].items():
        rule["default"] = defaults[name]
    return {
        "object": "fine_tuning.rules",
        **rules,
        "min_training_examples": services.files.min_training_examples,
        "checkpoints_kept": defaults["checkpoints_kept"],
    }


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/metrics", response_model=ListResponse[JobMetricRow])
def list_metrics(
    fine_tuning_job_id: str,
    services: ServicesDep,
    principal: PrincipalDep,
    after_step: int = -1,
    limit: int = 1000,
) -> ListResponse[JobMetricRow]:
    """Tunery extension: each optimizer step's metrics after ``after_step``, lowest step first."""
    if not 1 <= limit <= METRICS_MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {METRICS_MAX_LIMIT}.", param="limit")
    rows = services.jobs.list_metrics(principal.project_id, fine_tuning_job_id, after_step=after_step, limit=limit + 1)
    data = [JobMetricRow(step=row.step, metrics=dict(row.values)) for row in rows[:limit]]
    return ListResponse[JobMetricRow].of(data, len(rows) > limit)
