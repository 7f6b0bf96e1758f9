"""``/evals``: evals, their runs and the runs' output items (spec §2), on every layout.

Bodies are parsed here into the typed requests of ``services.eval_requests`` (FastAPI turns a bad body into a
400 naming the parameter path). Lists default to ascending order, as OpenAI's do; pages carry
``first_id``/``last_id``. Cancel answers on both ``POST …/runs/{id}/cancel`` (the SDK) and
``POST …/runs/{id}`` (the OpenAPI document and Azure).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tunery.api.deps import PrincipalDep, ServicesDep
from tunery.api.edge import bounded
from tunery.api.schemas.common import ListResponse
from tunery.api.schemas.evals import (
    EvalDeleted,
    EvalObject,
    EvalRunDeleted,
    EvalRunObject,
    EvalRunOutputItemObject,
)
from tunery.domain.evals import EvalRun
from tunery.domain.pagination import Order, PageRequest
from tunery.services.container import Services
from tunery.services.eval_requests import CreateEvalRequest, CreateEvalRunRequest, UpdateEvalRequest

router = APIRouter(tags=["evals"], route_class=bounded("evals"))


def _page(limit: int | None, after: str | None, order: str | None) -> PageRequest:
    return PageRequest.build(limit=limit, after=after, order=order, default_limit=20, max_limit=100,
                             default_order=Order.ASC)  # fmt: skip


def _run(services: Services, request: Request, run: EvalRun) -> EvalRunObject:
    base = str(request.base_url).rstrip("/")
    return EvalRunObject.from_domain(run, f"{base}/#/evals/{run.eval_id}/runs/{run.id}")


@router.post("/evals", response_model=EvalObject, status_code=201)
def create_eval(body: CreateEvalRequest, services: ServicesDep, principal: PrincipalDep) -> JSONResponse:
    ev = services.evals.create(principal.project_id, body)
    return JSONResponse(EvalObject.from_domain(ev).model_dump(mode="json"), status_code=201)


@router.get("/evals", response_model=ListResponse[EvalObject])
def list_evals(
    services: ServicesDep, principal: PrincipalDep, limit: int | None = None, after: str | None = None,
    order: str | None = None, order_by: str | None = None,
) -> ListResponse[EvalObject]:  # fmt: skip
    page = services.evals.list(principal.project_id, _page(limit, after, order))
    return ListResponse[EvalObject].of([EvalObject.from_domain(e) for e in page.data], page.has_more, ids=True)


@router.get("/evals/{eval_id}", response_model=EvalObject)
def retrieve_eval(eval_id: str, services: ServicesDep, principal: PrincipalDep) -> EvalObject:
    return EvalObject.from_domain(services.evals.retrieve(principal.project_id, eval_id))


@router.post("/evals/{eval_id}", response_model=EvalObject)
def update_eval(eval_id: str, body: UpdateEvalRequest, services: ServicesDep, principal: PrincipalDep) -> EvalObject:
    return EvalObject.from_domain(services.evals.update(principal.project_id, eval_id, body))


@router.delete("/evals/{eval_id}", response_model=EvalDeleted)
def delete_eval(eval_id: str, services: ServicesDep, principal: PrincipalDep) -> EvalDeleted:
    services.evals.delete(principal.project_id, eval_id)
    return EvalDeleted(eval_id=eval_id)


@router.post("/evals/{eval_id}/runs", response_model=EvalRunObject, status_code=201)
def create_run(
    eval_id: str, body: CreateEvalRunRequest, request: Request, services: ServicesDep, principal: PrincipalDep
) -> JSONResponse:
    run = services.evals.create_run(principal.project_id, eval_id, body)
    return JSONResponse(_run(services, request, run).model_dump(mode="json"), status_code=201)


@router.get("/evals/{eval_id}/runs", response_model=ListResponse[EvalRunObject])
def list_runs(
    eval_id: str, request: Request, services: ServicesDep, principal: PrincipalDep, limit: int | None = None,
    after: str | None = None, order: str | None = None, status: str | None = None,
) -> ListResponse[EvalRunObject]:  # fmt: skip
    page = services.evals.list_runs(principal.project_id, eval_id, _page(limit, after, order), status)
    data = [_run(services, request, run) for run in page.data]
    return ListResponse[EvalRunObject].of(data, page.has_more, ids=True)


@router.get("/evals/{eval_id}/runs/{run_id}", response_model=EvalRunObject)
def retrieve_run(
    eval_id: str, run_id: str, request: Request, services: ServicesDep, principal: PrincipalDep
) -> EvalRunObject:
    return _run(services, request, services.evals.retrieve_run(principal.project_id, eval_id, run_id))


@router.post("/evals/{eval_id}/runs/{run_id}/cancel", response_model=EvalRunObject)
@router.post("/evals/{eval_id}/runs/{run_id}", response_model=EvalRunObject, name="cancel_run_by_post")
def cancel_run(
    eval_id: str, run_id: str, request: Request, services: ServicesDep, principal: PrincipalDep
) -> EvalRunObject:
    return _run(services, request, services.evals.cancel_run(principal.project_id, eval_id, run_id))


@router.delete("/evals/{eval_id}/runs/{run_id}", response_model=EvalRunDeleted)
def delete_run(eval_id: str, run_id: str, services: ServicesDep, principal: PrincipalDep) -> EvalRunDeleted:
    services.evals.delete_run(principal.project_id, eval_id, run_id)
    return EvalRunDeleted(run_id=run_id)


@router.get("/evals/{eval_id}/runs/{run_id}/output_items", response_model=ListResponse[EvalRunOutputItemObject])
def list_output_items(
    eval_id: str, run_id: str, services: ServicesDep, principal: PrincipalDep, limit: int | None = None,
    after: str | None = None, order: str | None = None, status: str | None = None,
) -> ListResponse[EvalRunOutputItemObject]:  # fmt: skip
    page = services.evals.list_items(principal.project_id, eval_id, run_id, _page(limit, after, order), status)
    data = [EvalRunOutputItemObject.from_domain(item) for item in page.data]
    return ListResponse[EvalRunOutputItemObject].of(data, page.has_more, ids=True)


@router.get("/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}", response_model=EvalRunOutputItemObject)
def retrieve_output_item(
    eval_id: str, run_id: str, output_item_id: str, services: ServicesDep, principal: PrincipalDep
) -> EvalRunOutputItemObject:
    item = services.evals.retrieve_item(principal.project_id, eval_id, run_id, output_item_id)
    return EvalRunOutputItemObject.from_domain(item)
