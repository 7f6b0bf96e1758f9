"""``/files``: upload, list, retrieve, delete and download training data (spec §3.1)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request, Response, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse

from tunery.api.deps import DialectDep, PrincipalDep, ServicesDep
from tunery.api.edge import bounded
from tunery.api.schemas.common import DeletedResponse, ListResponse
from tunery.api.schemas.files import FileObject
from tunery.domain.pagination import Order, PageRequest

router = APIRouter(tags=["files"], route_class=bounded("upload"))

CHUNK_BYTES = 1024 * 1024
MAX_LIST_LIMIT = 10_000


def _chunks(upload: UploadFile) -> Iterator[bytes]:
    while chunk := upload.file.read(CHUNK_BYTES):
        yield chunk


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII ``filename`` fallback and the exact name as RFC 6266 / 5987 ``filename*``."""
    fallback = "".join(c if " " <= c < "\x7f" and c not in '"\\' else "_" for c in filename) or "download"
    return (
        f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename.encode('utf-8', 'replace'), safe='')}"
    )


@router.post("/files", response_model=FileObject)
def create_file(
    request: Request,
    services: ServicesDep,
    principal: PrincipalDep,
    dialect: DialectDep,
    file: Annotated[UploadFile, Form()],
    purpose: Annotated[str, Form()],
    expires_anchor: Annotated[str | None, Form(alias="expires_after[anchor]")] = None,
    expires_seconds: Annotated[int | None, Form(alias="expires_after[seconds]")] = None,
    expires_anchor_dotted: Annotated[str | None, Form(alias="expires_after.anchor")] = None,
    expires_seconds_dotted: Annotated[int | None, Form(alias="expires_after.seconds")] = None,
) -> Response:
    # The openai SDK writes nested form keys with brackets; Azure's dated spec names them with dots.
    record = services.files.create(
        principal.project_id,
        filename=file.filename or "",
        purpose=purpose,
        chunks=_chunks(file),
        expires_after=(expires_anchor or expires_anchor_dotted, expires_seconds or expires_seconds_dotted),
    )
    body = FileObject.from_domain(record, dialect).model_dump(mode="json")
    headers = {}
    if dialect.created_status == 201:
        headers["Location"] = f"{str(request.base_url).rstrip('/')}/openai/files/{record.id}"
    return JSONResponse(body, status_code=dialect.created_status, headers=headers)


@router.get("/files", response_model=ListResponse[FileObject])
def list_files(
    services: ServicesDep,
    principal: PrincipalDep,
    dialect: DialectDep,
    purpose: str | None = None,
    limit: Annotated[int | None, Query()] = None,
    after: str | None = None,
    order: str | None = None,
) -> ListResponse[FileObject]:
    page = PageRequest.build(
        limit=limit,
        after=after,
        order=order,
        default_limit=MAX_LIST_LIMIT,
        max_limit=MAX_LIST_LIMIT,
        default_order=Order.DESC,
    )
    result = services.files.list(principal.project_id, page, purpose)
    data = [FileObject.from_domain(r, dialect) for r in result.data]
    return ListResponse[FileObject].of(data, result.has_more, ids=True)


@router.get("/files/{file_id}", response_model=FileObject)
def retrieve_file(file_id: str, services: ServicesDep, principal: PrincipalDep, dialect: DialectDep) -> FileObject:
    return FileObject.from_domain(services.files.retrieve(principal.project_id, file_id), dialect)


@router.delete("/files/{file_id}", response_model=DeletedResponse)
def delete_file(file_id: str, services: ServicesDep, principal: PrincipalDep) -> DeletedResponse:
    record = services.files.delete(principal.project_id, file_id)
    return DeletedResponse(id=record.id, object="file")


@router.get("/files/{file_id}/content")
def file_content(file_id: str, services: ServicesDep, principal: PrincipalDep) -> StreamingResponse:
    record, stream = services.files.content(principal.project_id, file_id)

    def body() -> Iterator[bytes]:
        with stream:
            while chunk := stream.read(CHUNK_BYTES):
                yield chunk

    return StreamingResponse(
        body(),
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": content_disposition(record.filename),
            "Content-Length": str(record.bytes),
        },
    )
