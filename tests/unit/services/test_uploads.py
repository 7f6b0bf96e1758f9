"""UploadService rules that need a clock or the blob store: expiry, part limits, cleanup."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tunery.domain.errors import Conflict, PayloadTooLarge
from tunery.domain.uploads import UploadStatus
from tunery.services.files import FileRules, FileService
from tunery.services.uploads import UPLOAD_LIFETIME_S, UploadRules, UploadService
from tunery.storage import Database, LocalBlobStore, ProjectStore
from tunery.storage.files import FileStore
from tunery.storage.uploads import UploadStore
from tunery.testing.databases import fresh_database

BODY = {"filename": "t.jsonl", "mime_type": "application/jsonl", "purpose": "fine-tune"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[UploadService, LocalBlobStore, Clock, str, Database]]:
    with fresh_database(tmp_path, None) as db:
        blobs = LocalBlobStore(tmp_path / "blobs")
        files = FileService(FileStore(db), blobs, FileRules(max_upload_bytes=10), lambda: None, background=False)
        clock = Clock()
        service = UploadService(UploadStore(db), blobs, files, UploadRules(max_part_bytes=8), clock=clock)
        yield service, blobs, clock, ProjectStore(db).create("p").id, db
        files.close()


def test_an_upload_expires_after_an_hour_and_drops_its_parts(setup) -> None:  # type: ignore[no-untyped-def]
    service, blobs, clock, project, _ = setup
    upload = service.create(project, {**BODY, "bytes": 12})
    part = service.add_part(project, upload.id, [b"12345678"])
    assert blobs.exists(part.blob_key)
    with pytest.raises(PayloadTooLarge):
        service.add_part(project, upload.id, [b"123456789"])  # over the 8-byte part limit
    clock.now += UPLOAD_LIFETIME_S
    assert service.retrieve(project, upload.id).status is UploadStatus.EXPIRED
    assert not blobs.exists(part.blob_key)
    with pytest.raises(Conflict):
        service.add_part(project, upload.id, [b"1"])


def test_cancel_drops_the_parts(setup) -> None:  # type: ignore[no-untyped-def]
    service, blobs, _, project, _ = setup
    upload = service.create(project, {**BODY, "bytes": 4})
    part = service.add_part(project, upload.id, [b"ab"])
    assert service.cancel(project, upload.id).status is UploadStatus.CANCELLED
    assert not blobs.exists(part.blob_key)
    with pytest.raises(Conflict):
        service.complete(project, upload.id, [part.id], None)
