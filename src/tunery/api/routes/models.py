"""``/models``: base models and the project's fine-tuned models; delete a fine-tuned model (§3.3)."""

from __future__ import annotations

from fastapi import APIRouter

from tunery.api.deps import PrincipalDep, ServicesDep
from tunery.api.edge import bounded
from tunery.api.schemas.common import DeletedResponse, ListResponse
from tunery.api.schemas.models import Model

router = APIRouter(tags=["models"], route_class=bounded("default"))


@router.get("/models", response_model=ListResponse[Model])
def list_models(services: ServicesDep, principal: PrincipalDep) -> ListResponse[Model]:
    data = [Model.from_domain(entry) for entry in services.models.list(principal.project_id)]
    return ListResponse[Model].of(data, False)


@router.get("/models/{model:path}", response_model=Model)
def retrieve_model(model: str, services: ServicesDep, principal: PrincipalDep) -> Model:
    return Model.from_domain(services.models.retrieve(principal.project_id, model))


@router.delete("/models/{model:path}", response_model=DeletedResponse)
def delete_model(model: str, services: ServicesDep, principal: PrincipalDep) -> DeletedResponse:
    deleted = services.models.delete(principal.project_id, model)
    return DeletedResponse(id=deleted.id, object="model")
