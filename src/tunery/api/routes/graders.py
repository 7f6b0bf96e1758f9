"""``/fine_tuning/alpha/graders/validate`` and ``/run`` (spec §1.10–1.11), on every layout.

A bad grader is a 400 naming ``param``; a grading failure is a 200 with ``metadata.errors`` set.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body

from tunery.api.deps import PrincipalDep, ServicesDep
from tunery.api.edge import bounded
from tunery.domain.errors import InvalidRequest

router = APIRouter(tags=["graders"], route_class=bounded("evals"))


def _grader(body: dict[str, Any]) -> Any:
    if "grader" not in body:
        raise InvalidRequest("Missing required parameter: 'grader'.", param="grader")
    return body["grader"]


@router.post("/fine_tuning/alpha/graders/validate")
def validate_grader(
    services: ServicesDep, principal: PrincipalDep, body: Annotated[dict[str, Any], Body()]
) -> dict[str, Any]:
    grader = services.graders.validate(principal.project_id, _grader(body))
    return {"grader": grader.model_dump(mode="json", exclude_unset=True)}


@router.post("/fine_tuning/alpha/graders/run")
def run_grader(
    services: ServicesDep, principal: PrincipalDep, body: Annotated[dict[str, Any], Body()]
) -> dict[str, Any]:
    if "model_sample" not in body:
        raise InvalidRequest("Missing required parameter: 'model_sample'.", param="model_sample")
    # A plain (sync) handler: FastAPI runs it in its thread pool, so a slow grading blocks no other request.
    result = services.graders.run(
        principal.project_id, _grader(body), model_sample=body["model_sample"], item=body.get("item")
    )
    return result.model_dump(mode="json")
