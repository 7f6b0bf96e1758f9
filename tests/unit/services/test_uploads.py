"""UploadService rules that need a clock or the blob store: expiry, part limits, cleanup."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from tunery.domain.errors import Conflict, PayloadTooLarge
from tunery.domain.uploads import UploadStatus
from tunery.services.files import FileRules, FileService
from tunery.services.uploads import CHUNK_BYTES, UPLOAD_LIFETIME_S, UploadRules, UploadService
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
    upload = service.create(project, **BODY, size=12)
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
    upload = service.create(project, **BODY, size=4)
    part = service.add_part(project, upload.id, [b"ab"])
    assert service.cancel(project, upload.id).status is UploadStatus.CANCELLED
    assert not blobs.exists(part.blob_key)
    with pytest.raises(Conflict):
        service.complete(project, upload.id, [part.id], None)


class CountingBlobs(LocalBlobStore):
    """Local blobs that record every write (bytes, largest chunk) and every open, by key."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.written: dict[str, int] = {}
        self.largest_chunk = 0
        self.opened: list[str] = []

    def write(self, key: str, chunks: Iterable[bytes], *, max_bytes: int | None = None) -> int:
        def counted() -> Iterator[bytes]:
            for chunk in chunks:
                self.largest_chunk = max(self.largest_chunk, len(chunk))
                yield chunk

        size = super().write(key, counted(), max_bytes=max_bytes)
        self.written[key] = self.written.get(key, 0) + size
        return size

    def open(self, key: str) -> BinaryIO:
        self.opened.append(key)
        return super().open(key)


def test_complete_assembles_the_file_in_one_streaming_pass(tmp_path: Path) -> None:
    """Each part is read once, the file's blob is written once with exactly the upload's bytes, in chunks of
    at most CHUNK_BYTES (memory stays bounded whatever the part size), and the parts are gone after."""
    line = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    data = line * (5 * CHUNK_BYTES // len(line))  # ~5 MB in three parts of ~1.7 MB
    third = len(data) // 3
    pieces = [data[:third], data[third : 2 * third], data[2 * third :]]
    with fresh_database(tmp_path, None) as db:
        blobs = CountingBlobs(tmp_path / "blobs")
        files = FileService(FileStore(db), blobs, FileRules(max_upload_bytes=10), lambda: None, background=True)
        service = UploadService(UploadStore(db), blobs, files, UploadRules())
        project = ProjectStore(db).create("p").id
        upload = service.create(project, **BODY, size=len(data))
        parts = [service.add_part(project, upload.id, [piece]) for piece in pieces]
        blobs.written.clear()
        blobs.largest_chunk = 0
        done, record = service.complete(project, upload.id, [p.id for p in parts], hashlib.md5(data).hexdigest())
        files.close()  # any background check has finished
        assert done.status is UploadStatus.COMPLETED
        assert blobs.written == {f"files/{project}/{record.id}": len(data)}, "one blob written, once"
        assert blobs.largest_chunk <= CHUNK_BYTES
        part_reads = [key for key in blobs.opened if "/uploads/" in f"/{key}"]
        assert sorted(part_reads) == sorted(p.blob_key for p in parts), "each part read exactly once"
        with blobs.open(f"files/{project}/{record.id}") as stream:
            assert stream.read() == data
        assert not any(blobs.exists(p.blob_key) for p in parts)


def test_an_import_cannot_reach_a_private_address_directly_or_by_redirect(tmp_path: Path) -> None:
    """``/files/import`` fetches only from addresses the server may call: a metadata URL is refused before any
    request, and a public-looking (here: allowed) host that redirects to one is refused at that hop."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tunery.domain.errors import InvalidRequest
    from tunery.services.outbound import UrlPolicy

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("location", "http://169.254.169.254/latest/meta-data/iam/")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with fresh_database(tmp_path, None) as db:
            blobs = LocalBlobStore(tmp_path / "blobs")
            files = FileService(FileStore(db), blobs, FileRules(max_upload_bytes=10), lambda: None, background=False)
            rules = UploadRules(urls=UrlPolicy(allowed_hosts=("127.0.0.1",)))
            service = UploadService(UploadStore(db), blobs, files, rules)
            project = ProjectStore(db).create("p").id
            with pytest.raises(InvalidRequest) as direct:
                service.import_url(project, "http://169.254.169.254/x", filename="t.jsonl", purpose="fine-tune",
                                   admin=True)  # fmt: skip
            assert direct.value.param == "content_url"
            assert "link-local" in direct.value.message
            redirected = f"http://127.0.0.1:{server.server_address[1]}/train.jsonl"
            with pytest.raises(InvalidRequest) as hop:
                service.import_url(project, redirected, filename="t.jsonl", purpose="fine-tune", admin=True)
            assert hop.value.param == "content_url"
            assert "169.254.169.254" in hop.value.message
            assert "link-local" in hop.value.message
            assert FileStore(db).count(project) == 0
            files.close()
    finally:
        server.shutdown()
