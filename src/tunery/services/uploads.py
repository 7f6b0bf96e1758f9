"""The Uploads API (``/uploads``, parts, complete, cancel) and Azure's ``/files/import``.

An upload declares its size; each part streams to the blob store as it arrives (never held in memory);
``complete`` takes the parts in the order given, checks that they exist, belong to the upload, hold exactly
the declared bytes and (when given) match the md5, then streams them into one file that is validated like
any other upload. ``import_url`` fetches an http(s) URL (or, for admin keys, a file under an allowed local
folder) the same way; an http(s) URL must be one the server may call (``services/outbound.py``: by default
no loopback, private, link-local or metadata address, checked again at every connection, redirects included).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tunery.domain.errors import Conflict, Forbidden, InvalidRequest, PayloadTooLarge
from tunery.domain.files import FileRecord
from tunery.domain.ids import new_id
from tunery.domain.uploads import Upload, UploadPart, UploadStatus
from tunery.services.files import FileService
from tunery.services.outbound import UrlPolicy, check_url, guarded_client
from tunery.storage.blobs import BlobStore
from tunery.storage.uploads import UploadStore

CHUNK_BYTES = 1024 * 1024
UPLOAD_LIFETIME_S = 3600
IMPORT_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class UploadRules:
    max_upload_bytes: int = 8 * 1024**3  # an upload's declared size (OpenAI: 8 GB)
    max_part_bytes: int = 64 * 1024**2  # one part (OpenAI: 64 MB)
    import_dirs: tuple[Path, ...] = ()  # local folders admin keys may import from
    urls: UrlPolicy = field(default_factory=UrlPolicy)  # where http(s) imports may fetch from: public hosts only


class UploadService:
    def __init__(
        self,
        store: UploadStore,
        blobs: BlobStore,
        files: FileService,
        rules: UploadRules,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._files = files
        self._rules = rules
        self._clock = clock

    def create(self, project_id: str, *, filename: str, purpose: str, size: int, mime_type: str) -> Upload:
        """A pending upload of ``size`` bytes that becomes the file ``filename`` once its parts are complete."""
        if size <= 0:
            raise InvalidRequest("bytes must be a positive integer: the size of the whole file.", param="bytes")
        if size > self._rules.max_upload_bytes:
            raise PayloadTooLarge(
                f"bytes is {size}; an upload may hold at most {self._rules.max_upload_bytes} bytes.", param="bytes"
            )
        for name, value in (("filename", filename), ("mime_type", mime_type), ("purpose", purpose)):
            if not value:
                raise InvalidRequest(f"{name} is required.", param=name)
        self._files.check_upload_purpose(purpose)
        now = int(self._clock())
        upload = Upload(
            id=new_id("upload"),
            project_id=project_id,
            filename=filename,
            purpose=purpose,
            bytes=size,
            mime_type=mime_type,
            status=UploadStatus.PENDING,
            created_at=now,
            expires_at=now + UPLOAD_LIFETIME_S,
        )
        self._store.insert(upload)
        return upload

    def retrieve(self, project_id: str, upload_id: str) -> Upload:
        upload = self._store.get(project_id, upload_id)
        if upload.status is UploadStatus.PENDING and self._clock() >= upload.expires_at:
            if self._store.set_status(upload.id, UploadStatus.EXPIRED, expect=UploadStatus.PENDING):
                self._drop_parts(upload.id)
            upload = self._store.get(project_id, upload_id)
        return upload

    def add_part(self, project_id: str, upload_id: str, chunks: Iterable[bytes]) -> UploadPart:
        upload = self._pending(project_id, upload_id)
        part_id = new_id("part")
        key = f"uploads/{project_id}/{upload.id}/{part_id}"
        limit = min(self._rules.max_part_bytes, upload.bytes)
        try:
            size = self._blobs.write(key, chunks, max_bytes=limit)
        except PayloadTooLarge:
            raise PayloadTooLarge(
                f"A part may hold at most {limit} bytes (the smaller of the part limit and the upload's size).",
                param="data",
            ) from None
        part = UploadPart(id=part_id, upload_id=upload.id, created_at=int(self._clock()), bytes=size, blob_key=key)
        self._store.add_part(part)
        return part

    def complete(
        self, project_id: str, upload_id: str, part_ids: Sequence[str], md5: str | None
    ) -> tuple[Upload, FileRecord]:
        """Assemble the parts, in ``part_ids`` order, into the upload's file in one streaming pass: each part
        is read once, in chunks of ``CHUNK_BYTES``, straight into the file's blob while its md5 is computed;
        nothing is spooled and no second copy is made. The parts are dropped once the file exists."""
        upload = self._pending(project_id, upload_id)
        if isinstance(part_ids, str) or not part_ids:
            raise InvalidRequest(
                "part_ids must be the non-empty, ordered list of the upload's part ids.", param="part_ids"
            )
        known = {part.id: part for part in self._store.parts(upload.id)}
        if len(set(part_ids)) != len(part_ids):
            raise InvalidRequest("part_ids names a part more than once.", param="part_ids")
        for index, part_id in enumerate(part_ids):
            if part_id not in known:
                raise InvalidRequest(f"part_ids[{index}] '{part_id}' is not a part of {upload.id}.", param="part_ids")
        ordered = [known[p] for p in part_ids]
        total = sum(p.bytes for p in ordered)
        if total != upload.bytes:
            raise InvalidRequest(
                f"The parts listed hold {total} bytes but the upload was created for {upload.bytes} bytes; "
                "a part is missing or of the wrong size.",
                param="part_ids",
                code="upload_size_mismatch",
            )
        digest = hashlib.md5(usedforsecurity=False)

        def chunks() -> Iterator[bytes]:
            for part in ordered:
                with self._blobs.open(part.blob_key) as stream:
                    while chunk := stream.read(CHUNK_BYTES):
                        digest.update(chunk)
                        yield chunk

        def verify(size: int) -> None:
            if size != upload.bytes:
                raise InvalidRequest(f"The parts now hold {size} bytes, not {upload.bytes}.", param="part_ids")
            if md5 and digest.hexdigest() != md5.lower():
                raise InvalidRequest(
                    f"md5 {md5} does not match the uploaded bytes (their md5 is {digest.hexdigest()}).",
                    param="md5",
                    code="checksum_mismatch",
                )

        record = self._files.create(
            project_id, filename=upload.filename, purpose=upload.purpose, chunks=chunks(),
            max_bytes=upload.bytes, verify=verify,
        )  # fmt: skip
        if not self._store.set_status(
            upload.id, UploadStatus.COMPLETED, expect=UploadStatus.PENDING, file_id=record.id
        ):
            self._files.delete(project_id, record.id)
            raise Conflict(f"Upload {upload.id} was completed or cancelled meanwhile.", param="upload_id")
        self._drop_parts(upload.id)
        return self._store.get(project_id, upload.id), record

    def cancel(self, project_id: str, upload_id: str) -> Upload:
        upload = self._pending(project_id, upload_id)
        if self._store.set_status(upload.id, UploadStatus.CANCELLED, expect=UploadStatus.PENDING):
            self._drop_parts(upload.id)
        return self._store.get(project_id, upload.id)

    def import_url(self, project_id: str, url: str, *, filename: str, purpose: str, admin: bool) -> FileRecord:
        """Azure's ``/files/import``: a file from an http(s) URL, or (admin keys) from an allowed local folder."""
        if not url:
            raise InvalidRequest("content_url is required.", param="content_url")
        if not filename:
            raise InvalidRequest("filename is required.", param="filename")
        parts = urlsplit(url)
        if parts.scheme in {"http", "https"}:
            check_url(url, self._rules.urls, param="content_url")
            chunks: Iterable[bytes] = _http_chunks(url, self._rules.urls)
        elif parts.scheme == "file":
            chunks = self._local_chunks(Path(parts.path), admin=admin)
        else:
            raise InvalidRequest(
                "content_url must be an http(s):// URL (or file:// for admin keys).", param="content_url"
            )
        return self._files.create(
            project_id, filename=filename, purpose=purpose, chunks=chunks, max_bytes=self._rules.max_upload_bytes
        )

    def _local_chunks(self, path: Path, *, admin: bool) -> Iterator[bytes]:
        if not admin:
            raise Forbidden("Only an admin key may import from a local folder.", param="content_url")
        resolved = path.resolve()
        if not any(resolved.is_relative_to(d.resolve()) for d in self._rules.import_dirs):
            raise InvalidRequest(
                f"{resolved} is not under a folder the server allows imports from (TUNERY_FILES__IMPORT_DIRS).",
                param="content_url",
            )
        if not resolved.is_file():
            raise InvalidRequest(f"{resolved} is not a file.", param="content_url", code="fileImportFailed")
        return _file_chunks(resolved)

    def _pending(self, project_id: str, upload_id: str) -> Upload:
        upload = self.retrieve(project_id, upload_id)
        if upload.status is not UploadStatus.PENDING:
            raise Conflict(
                f"Upload {upload.id} is {upload.status.value}; only a pending upload takes this.", param="upload_id"
            )
        return upload

    def _drop_parts(self, upload_id: str) -> None:
        for part in self._store.parts(upload_id):
            self._blobs.delete(part.blob_key)
        self._store.delete_parts(upload_id)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            yield chunk


def _http_chunks(url: str, urls: UrlPolicy) -> Iterator[bytes]:
    """The body of ``url``, streamed; redirects are followed, each connection vetted by ``urls``."""
    client = guarded_client(urls, timeout=IMPORT_TIMEOUT_S, headers={}, follow_redirects=True)
    try:
        with client, client.stream("GET", url) as response:
            if response.status_code != 200:
                raise InvalidRequest(
                    f"Fetching content_url answered HTTP {response.status_code}.",
                    param="content_url",
                    code="fileImportFailed",
                )
            yield from response.iter_bytes(CHUNK_BYTES)
    except httpx.HTTPError as exc:
        raise InvalidRequest(
            f"Could not fetch content_url: {exc}.", param="content_url", code="fileImportFailed"
        ) from None
