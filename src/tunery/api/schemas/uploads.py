"""Uploads API wire shapes (OpenAI's ``Upload``, ``UploadPart``) and the request bodies of ``/uploads`` and
Azure's ``/files/import``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from tunery.api.dialects import Dialect
from tunery.api.schemas.common import INT64_MAX, Loose
from tunery.api.schemas.files import FileObject
from tunery.domain.files import FileRecord
from tunery.domain.uploads import Upload, UploadPart

MAX_PARTS = 10_000  # far above 8 GB in 64 MB parts; bounds the work of one complete
Text = Annotated[str, Field(min_length=1, max_length=1024)]


class UploadCreate(Loose):
    """``client.uploads.create(bytes=..., filename=..., mime_type=..., purpose=...)``."""

    bytes: Annotated[int, Field(gt=0, le=INT64_MAX, description="The size of the whole file")]
    filename: Text
    mime_type: Text
    purpose: Text


class UploadComplete(Loose):
    """``client.uploads.complete(upload_id, part_ids=[...], md5=...)``."""

    part_ids: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=128)]], Field(min_length=1, max_length=MAX_PARTS)
    ] = Field(description="The upload's parts, in the order their bytes make the file")
    md5: Annotated[str, Field(max_length=64)] | None = None


class FileImport(Loose):
    """Azure's ``/files/import``: a file fetched from ``content_url``."""

    content_url: Annotated[str, Field(min_length=1, max_length=4096)]
    filename: Text
    purpose: Annotated[str, Field(max_length=64)] | None = None


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
