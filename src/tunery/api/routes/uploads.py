"""``/uploads`` (OpenAI's Uploads API, as ``client.uploads.upload_file_chunked`` calls it) and Azure's
``/files/import``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Form, Request, Response, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from tunery.api.deps import DialectDep, PrincipalDep, ServicesDep
from tunery.api.dialects import Dialect
from tunery.api.edge import bounded
from tunery.api.schemas.files import FileObject
from tunery.domain.files import FileRecord
from tunery.domain.uploads import Upload, UploadPart

router = APIRouter(tags=["uploads"], route_class=bounded("default"))  # small JSON bodies
parts_router = APIRouter(tags=["uploads"], route_class=bounded("part"))  # a part: up to the configured part size
CHUNK_BYTES = 1024 * 1024


class UploadObject(BaseModel):
    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: str
    file: FileObject | None = None

    @classmethod
    def from_domain(cls, upload: Upload, file: FileRecord | None, dialect: Dialect) -> UploadObject:
        return cls(
            id=upload.id,
            bytes=upload.bytes,
            created_at=upload.created_at,
            expires_at=upload.expires_at,
            filename=upload.filename,
            purpose=upload.purpose,
            status=upload.status.value,
            file=FileObject.from_domain(file, dialect) if file is not None else None,
        )


class UploadPartObject(BaseModel):
    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str

    @classmethod
    def from_domain(cls, part: UploadPart) -> UploadPartObject:
        return cls(id=part.id, created_at=part.created_at, upload_id=part.upload_id)


def _chunks(upload: UploadFile) -> Iterator[bytes]:
    while chunk := upload.file.read(CHUNK_BYTES):
        yield chunk


@router.post("/uploads", response_model=UploadObject)
def create_upload(
    services: ServicesDep, principal: PrincipalDep, dialect: DialectDep, body: Annotated[dict[str, Any], Body()]
) -> UploadObject:
    return UploadObject.from_domain(services.uploads.create(principal.project_id, body), None, dialect)


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
    body: Annotated[dict[str, Any], Body()],
) -> UploadObject:
    md5 = body.get("md5")
    upload, record = services.uploads.complete(
        principal.project_id, upload_id, body.get("part_ids"), md5 if isinstance(md5, str) else None
    )
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
    body: Annotated[dict[str, Any], Body()],
) -> Response:
    record = services.uploads.import_url(principal.project_id, body, admin=principal.is_admin)
    headers = {}
    if dialect.created_status == 201:
        headers["Location"] = f"{str(request.base_url).rstrip('/')}/openai/files/{record.id}"
    body_out = FileObject.from_domain(record, dialect).model_dump(mode="json")
    return JSONResponse(body_out, status_code=dialect.created_status, headers=headers)
