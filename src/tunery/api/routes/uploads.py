"""``/uploads`` (OpenAI's Uploads API, as ``client.uploads.upload_file_chunked`` calls it) and Azure's
``/files/import``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response, UploadFile
from fastapi.responses import JSONResponse

from tunery.api.deps import DialectDep, PrincipalDep, ServicesDep
from tunery.api.edge import bounded
from tunery.api.schemas.files import FileObject
from tunery.api.schemas.uploads import FileImport, UploadComplete, UploadCreate, UploadObject, UploadPartObject

router = APIRouter(tags=["uploads"], route_class=bounded("default"))  # small JSON bodies
parts_router = APIRouter(tags=["uploads"], route_class=bounded("part"))  # a part: up to the configured part size
CHUNK_BYTES = 1024 * 1024


def _chunks(upload: UploadFile) -> Iterator[bytes]:
    while chunk := upload.file.read(CHUNK_BYTES):
        yield chunk


@router.post("/uploads", response_model=UploadObject)
def create_upload(
    services: ServicesDep, principal: PrincipalDep, dialect: DialectDep, body: UploadCreate
) -> UploadObject:
    upload = services.uploads.create(
        principal.project_id, filename=body.filename, purpose=body.purpose, size=body.bytes, mime_type=body.mime_type
    )
    return UploadObject.from_domain(upload, None, dialect)


@parts_router.post("/uploads/{upload_id}/parts", response_model=UploadPartObject)
def add_upload_part(
    upload_id: str, services: ServicesDep, principal: PrincipalDep, data: Annotated[UploadFile, Form()]
) -> UploadPartObject:
    return UploadPartObject.from_domain(services.uploads.add_part(principal.project_id, upload_id, _chunks(data)))


@router.post("/uploads/{upload_id}/complete", response_model=UploadObject)
def complete_upload(
    upload_id: str,
    services: ServicesDep,
    principal: PrincipalDep,
    dialect: DialectDep,
    body: UploadComplete,
) -> UploadObject:
    upload, record = services.uploads.complete(principal.project_id, upload_id, body.part_ids, body.md5)
    return UploadObject.from_domain(upload, record, dialect)


@router.post("/uploads/{upload_id}/cancel", response_model=UploadObject)
def cancel_upload(upload_id: str, services: ServicesDep, principal: PrincipalDep, dialect: DialectDep) -> UploadObject:
    return UploadObject.from_domain(services.uploads.cancel(principal.project_id, upload_id), None, dialect)


@router.post("/files/import", response_model=FileObject)
def import_file(
    request: Request,
    services: ServicesDep,
    principal: PrincipalDep,
    dialect: DialectDep,
    body: FileImport,
) -> Response:
    record = services.uploads.import_url(
        principal.project_id, body.content_url, filename=body.filename, purpose=body.purpose or "",
        admin=principal.is_admin,
    )  # fmt: skip
    headers = {}
    if dialect.created_status == 201:
        headers["Location"] = f"{str(request.base_url).rstrip('/')}/openai/files/{record.id}"
    body_out = FileObject.from_domain(record, dialect).model_dump(mode="json")
    return JSONResponse(body_out, status_code=dialect.created_status, headers=headers)
