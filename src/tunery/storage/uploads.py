"""Uploads and their parts: rows in ``uploads`` / ``upload_parts`` <-> ``Upload`` / ``UploadPart``."""

from __future__ import annotations

import builtins
from typing import Any

from sqlalchemy import delete, select

from tunery.domain.errors import NotFound
from tunery.domain.uploads import Upload, UploadPart, UploadStatus
from tunery.storage.db import Database
from tunery.storage.tables import upload_parts, uploads


class UploadStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def insert(self, upload: Upload) -> None:
        with self._db.transaction() as conn:
            conn.execute(uploads.insert().values(_to_row(upload)))

    def get(self, project_id: str, upload_id: str) -> Upload:
        """Raises NotFound: no such upload in this project."""
        query = select(uploads).where(uploads.c.id == upload_id, uploads.c.project_id == project_id)
        with self._db.read() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            raise NotFound(f"No upload with id '{upload_id}' was found.", param="upload_id")
        return _from_row(row)

    def set_status(
        self, upload_id: str, status: UploadStatus, *, expect: UploadStatus, file_id: str | None = None
    ) -> bool:
        """Compare-and-set the status; False when the upload was no longer ``expect``."""
        with self._db.transaction() as conn:
            result = conn.execute(
                uploads.update()
                .where(uploads.c.id == upload_id, uploads.c.status == expect.value)
                .values(status=status.value, file_id=file_id)
            )
        return result.rowcount == 1

    def add_part(self, part: UploadPart) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                upload_parts.insert().values(
                    id=part.id,
                    upload_id=part.upload_id,
                    created_at=part.created_at,
                    bytes=part.bytes,
                    blob_key=part.blob_key,
                )
            )

    def parts(self, upload_id: str) -> builtins.list[UploadPart]:
        query = select(upload_parts).where(upload_parts.c.upload_id == upload_id).order_by(upload_parts.c.seq)
        with self._db.read() as conn:
            return [
                UploadPart(
                    id=r["id"],
                    upload_id=r["upload_id"],
                    created_at=r["created_at"],
                    bytes=r["bytes"],
                    blob_key=r["blob_key"],
                )
                for r in conn.execute(query).mappings()
            ]

    def delete_parts(self, upload_id: str) -> None:
        with self._db.transaction() as conn:
            conn.execute(delete(upload_parts).where(upload_parts.c.upload_id == upload_id))


def _to_row(upload: Upload) -> dict[str, Any]:
    return {
        "id": upload.id,
        "project_id": upload.project_id,
        "filename": upload.filename,
        "purpose": upload.purpose,
        "bytes": upload.bytes,
        "mime_type": upload.mime_type,
        "status": upload.status.value,
        "created_at": upload.created_at,
        "expires_at": upload.expires_at,
        "file_id": upload.file_id,
    }


def _from_row(row: Any) -> Upload:
    return Upload(
        id=row["id"],
        project_id=row["project_id"],
        filename=row["filename"],
        purpose=row["purpose"],
        bytes=row["bytes"],
        mime_type=row["mime_type"],
        status=UploadStatus(row["status"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        file_id=row["file_id"],
    )
