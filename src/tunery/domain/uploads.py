"""Multipart uploads (OpenAI's Uploads API): an upload collects parts, then becomes one file."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class UploadStatus(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Upload:
    id: str
    project_id: str
    filename: str
    purpose: str
    bytes: int
    mime_type: str
    status: UploadStatus
    created_at: int
    expires_at: int
    file_id: str | None = None

    def with_changes(self, **changes: object) -> Upload:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class UploadPart:
    id: str
    upload_id: str
    created_at: int
    bytes: int
    blob_key: str
