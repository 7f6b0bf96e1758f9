"""``/models``: base models and the project's fine-tuned models; delete a fine-tuned model (§3.3).

Tunery extensions under the model (README "Moving in and out"): ``GET /models/{model}/export`` streams the
model as a PEFT folder, a merged folder or GGUF with its length and sha256, and ``POST /models/import`` takes
an adapter trained elsewhere (an uploaded archive, or a folder the server's admin allows).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query, Request, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from tunery.api.deps import PrincipalDep, ServicesDep
from tunery.api.edge import bounded
from tunery.api.schemas.common import DeletedResponse, ListResponse
from tunery.api.schemas.models import Model
from tunery.domain.errors import InvalidRequest

router = APIRouter(tags=["models"], route_class=bounded("default"))
import_router = APIRouter(tags=["models"], route_class=bounded("import"))  # adapter archives are large
CHUNK_BYTES = 1024 * 1024


@router.get("/models", response_model=ListResponse[Model])
def list_models(services: ServicesDep, principal: PrincipalDep) -> ListResponse[Model]:
    data = [Model.from_domain(entry) for entry in services.models.list(principal.project_id)]
    return ListResponse[Model].of(data, False)


@import_router.post("/models/import", response_model=Model)
async def import_model(request: Request, services: ServicesDep, principal: PrincipalDep) -> Model:
    """Multipart (``file`` = .tar/.tar.gz/.zip of a PEFT folder) or JSON ``{"path": ...}``; both take
    optional ``base_model`` and ``suffix``."""
    from starlette.concurrency import run_in_threadpool

    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_part_size=CHUNK_BYTES * 1024 * 64)
        upload = form.get("file")
        if not isinstance(upload, UploadFile) and not hasattr(upload, "read"):
            raise InvalidRequest("Missing required parameter: 'file' (the adapter archive).", param="file")
        base, suffix = _text(form.get("base_model")), _text(form.get("suffix"))

        def chunks() -> Iterator[bytes]:
            while chunk := upload.file.read(CHUNK_BYTES):  # type: ignore[union-attr]
                yield chunk

        entry = await run_in_threadpool(
            services.imports.import_archive, principal.project_id, filename=upload.filename or "adapter",  # type: ignore[union-attr]
            chunks=chunks(), base_model=base, suffix=suffix,
        )  # fmt: skip
    else:
        try:
            body = await request.json()
        except ValueError:
            raise InvalidRequest("The request body is not valid JSON.") from None
        if not isinstance(body, dict) or not isinstance(body.get("path"), str):
            raise InvalidRequest(
                "Send the adapter as a multipart 'file' archive, or JSON with 'path' (a server folder).", param="path"
            )
        entry = await run_in_threadpool(
            services.imports.import_path, principal.project_id, path=body["path"],
            base_model=_text(body.get("base_model")), suffix=_text(body.get("suffix")),
        )  # fmt: skip
    return Model.from_domain(entry)


@router.get("/models/{model:path}/export")
def export_model(
    model: str,
    services: ServicesDep,
    principal: PrincipalDep,
    format: Annotated[str, Query()] = "peft",
    part: Annotated[str | None, Query()] = None,
) -> StreamingResponse:
    exported = services.exports.export(principal.project_id, model, format, part)

    def body() -> Iterator[bytes]:
        with exported.path.open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                yield chunk

    return StreamingResponse(
        body(),
        media_type=exported.media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{exported.filename}"',
            "Content-Length": str(exported.size),
            "X-Checksum-Sha256": exported.sha256,
            "Digest": f"sha-256={_b64(exported.sha256)}",
        },
    )


class PushBody(BaseModel):
    hf_output_repo_name: str = Field(min_length=3, description="The Hub repository, 'owner/name'")
    format: str = Field(default="peft", description="peft | merged | gguf")
    hf_token: str | None = Field(default=None, description="Hub token (write access); not stored")
    private: bool = True


@router.post("/models/{model:path}/push")
def push_model(model: str, body: PushBody, services: ServicesDep, principal: PrincipalDep) -> dict[str, str]:
    return services.exports.push_to_hub(
        principal.project_id, model, body.format, repo_id=body.hf_output_repo_name, token=body.hf_token,
        private=body.private,
    )  # fmt: skip


@router.get("/models/{model:path}", response_model=Model)
def retrieve_model(model: str, services: ServicesDep, principal: PrincipalDep) -> Model:
    return Model.from_domain(services.models.retrieve(principal.project_id, model))


@router.delete("/models/{model:path}", response_model=DeletedResponse)
def delete_model(model: str, services: ServicesDep, principal: PrincipalDep) -> DeletedResponse:
    deleted = services.models.delete(principal.project_id, model)
    return DeletedResponse(id=deleted, object="model")


def _text(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _b64(hex_digest: str) -> str:
    import base64

    return base64.b64encode(bytes.fromhex(hex_digest)).decode()
