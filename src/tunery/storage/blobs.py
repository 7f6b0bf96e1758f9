"""Blob storage: the bytes of uploaded files (and later adapters), by key, on local disk or in S3.

Keys are relative, slash-separated paths such as ``files/<project-id>/<file-id>``; each part starts with a
letter, digit, ``_`` or ``-`` and holds only those and ``.``, so a key can never climb out of the store's
root (no ``..``, no absolute paths) nor collide with the store's own temporary files. A bad key is a bug in
the caller and raises ``ValueError``. A missing blob raises ``NotFound``. Writes are all-or-nothing: a
reader sees the old blob or the whole new one, never part of one, even if the writer crashes.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from tunery.domain.errors import NotFound, PayloadTooLarge
from tunery.storage.disk import disk_full, is_disk_full

_KEY_PART = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
S3_PART_BYTES = 8 * 1024 * 1024  # S3 wants at least 5 MiB in every part but the last


class BlobStore(Protocol):
    """Where file contents live; ``LocalBlobStore`` on the embedded default, ``S3BlobStore`` at scale."""

    def write(self, key: str, chunks: Iterable[bytes], *, max_bytes: int | None = None) -> int:
        """Store the chunks under ``key`` (replacing any blob there) and return the number of bytes.

        Raises:
            PayloadTooLarge: more than ``max_bytes`` arrived; nothing is stored under ``key``.
        """
        ...

    def open(self, key: str) -> BinaryIO:
        """A binary reader over the blob (iterating it yields lines). Raises NotFound."""
        ...

    def path(self, key: str) -> Path:
        """A local file holding the blob, for subprocesses that read from disk. Raises NotFound."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob; nothing happens if there is none."""
        ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int:
        """The blob's size in bytes. Raises NotFound."""
        ...

    def listing(self, prefix: str) -> Iterator[tuple[str, float]]:
        """``(key, last modified time)`` of every blob whose key starts with ``prefix`` (start-up sweeps)."""
        ...

    def remove_temporaries(self, older_than: float) -> int:
        """Delete half-written temporary files last touched before ``older_than`` (a crash mid-write left
        them); returns how many. Stores without temporaries return 0."""
        ...


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid blob key; raise ``ValueError`` otherwise."""
    parts = key.split("/")
    if not key or not all(_KEY_PART.match(part) for part in parts):
        raise ValueError(f"invalid blob key {key!r}: want slash-separated names like 'files/proj-1/file-2'")
    return key


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The file is larger than the limit of {max_bytes} bytes.", param="file")


def _missing(key: str) -> NotFound:
    return NotFound(f"No stored content for '{key}' was found.")


def _limited(chunks: Iterable[bytes], max_bytes: int | None) -> Iterator[bytes]:
    """Pass the chunks on, raising PayloadTooLarge as soon as the total goes over ``max_bytes``."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if max_bytes is not None and total > max_bytes:
            raise _too_large(max_bytes)
        yield chunk


def _write_atomically(target: Path, chunks: Iterable[bytes], max_bytes: int | None) -> int:
    """Write to a temporary file beside ``target``, fsync it, then rename it over ``target``."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full("storing the data") from exc
        raise
    try:
        total = 0
        with os.fdopen(fd, "wb") as out:
            for chunk in _limited(chunks, max_bytes):
                out.write(chunk)
                total += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, target)
    except BaseException as exc:
        with suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if is_disk_full(exc):
            raise disk_full("storing the data") from exc
        raise
    _fsync_dir(target.parent)
    return total


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX keeps it in the directory entry)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobStore:
    """Blobs as files under ``root`` (``<data_dir>/blobs`` on the embedded default)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    def _file(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def write(self, key: str, chunks: Iterable[bytes], *, max_bytes: int | None = None) -> int:
        return _write_atomically(self._file(key), chunks, max_bytes)

    def open(self, key: str) -> BinaryIO:
        try:
            return self._file(key).open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise _missing(key) from None

    def path(self, key: str) -> Path:
        path = self._file(key)
        if not path.is_file():
            raise _missing(key)
        return path

    def delete(self, key: str) -> None:
        self._file(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._file(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._file(key).stat().st_size
        except FileNotFoundError:
            raise _missing(key) from None

    def listing(self, prefix: str) -> Iterator[tuple[str, float]]:
        for path in sorted(self.root.rglob("*")):
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix) and path.is_file() and not path.name.startswith("."):
                with suppress(FileNotFoundError):
                    yield key, path.stat().st_mtime

    def remove_temporaries(self, older_than: float) -> int:
        removed = 0
        for path in self.root.rglob(".*.tmp"):
            with suppress(FileNotFoundError):
                if path.is_file() and path.stat().st_mtime < older_than:
                    path.unlink()
                    removed += 1
        return removed


class S3BlobStore:
    """Blobs as objects ``<prefix><key>`` in an S3 (or S3-compatible) bucket.

    ``path()`` downloads into ``cache_dir`` and reuses that copy afterwards: it assumes a key's content
    does not change once written, which holds for file ids (``write`` and ``delete`` through this store
    drop the cached copy). boto3 is imported only when this class is used (the ``s3`` extra).
    With ``cache_max_bytes`` the cache is bounded: after each download the least recently used copies
    (by modification time, refreshed on every ``path()`` hit) are deleted until the cache fits, never the
    copy just fetched; a copy that is gone is fetched again on its next ``path()``.

    Args:
        bucket: the bucket name.
        prefix: prepended to every key (``"tunery/"``); a trailing slash is added if missing.
        client: a boto3 S3 client; by default ``boto3.client("s3", endpoint_url=endpoint_url)``.
        cache_dir: where ``path()`` puts downloads; by default a folder in the system temp dir.
        endpoint_url: an S3-compatible endpoint (MinIO, Ceph...), used only when ``client`` is None.
        cache_max_bytes: the most bytes the cache keeps (None: unbounded).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        client: Any = None,
        *,
        cache_dir: Path | None = None,
        endpoint_url: str | None = None,
        part_bytes: int = S3_PART_BYTES,
        cache_max_bytes: int | None = None,
    ) -> None:
        # Imported here: boto3 is an optional dependency (the "s3" extra).
        import boto3
        from botocore.exceptions import ClientError

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._client = client if client is not None else boto3.client("s3", endpoint_url=endpoint_url)
        self._client_error = ClientError
        self._part_bytes = part_bytes
        self._cache_max_bytes = cache_max_bytes
        self._cache_dir = Path(cache_dir or Path(tempfile.gettempdir()) / "tunery-s3-cache").resolve()

    def __repr__(self) -> str:
        return f"S3BlobStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def _object_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _cached(self, key: str) -> Path:
        return self._cache_dir.joinpath(self.bucket, *self._object_key(key).split("/"))

    def _is_missing(self, error: Exception) -> bool:
        code = cast(Any, error).response.get("Error", {}).get("Code")
        return code in {"404", "NoSuchKey", "NotFound"}

    def write(self, key: str, chunks: Iterable[bytes], *, max_bytes: int | None = None) -> int:
        object_key = self._object_key(key)
        self._cached(key).unlink(missing_ok=True)
        buffer = bytearray()
        total = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            for chunk in _limited(chunks, max_bytes):
                buffer += chunk
                total += len(chunk)
                while len(buffer) >= self._part_bytes:
                    if upload_id is None:
                        upload_id = self._client.create_multipart_upload(Bucket=self.bucket, Key=object_key)["UploadId"]
                    parts.append(self._upload_part(object_key, upload_id, len(parts) + 1, buffer))
                    del buffer[: self._part_bytes]
            if upload_id is None:
                # Small enough for one request: the object appears whole or not at all.
                self._client.put_object(Bucket=self.bucket, Key=object_key, Body=bytes(buffer))
                return total
            if buffer:
                parts.append(self._upload_part(object_key, upload_id, len(parts) + 1, buffer))
            self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=object_key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            # Until complete_multipart_upload the object does not exist; aborting frees the parts.
            if upload_id is not None:
                with suppress(self._client_error):
                    self._client.abort_multipart_upload(Bucket=self.bucket, Key=object_key, UploadId=upload_id)
            raise
        return total

    def _upload_part(self, object_key: str, upload_id: str, number: int, buffer: bytearray) -> dict[str, Any]:
        body = bytes(buffer[: self._part_bytes])
        response = self._client.upload_part(
            Bucket=self.bucket, Key=object_key, UploadId=upload_id, PartNumber=number, Body=body
        )
        return {"PartNumber": number, "ETag": response["ETag"]}

    def open(self, key: str) -> BinaryIO:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._object_key(key))
        except self._client_error as error:
            if self._is_missing(error):
                raise _missing(key) from None
            raise
        # A buffered reader gives the file API (readline, iteration by line) over the streaming body.
        return cast(BinaryIO, io.BufferedReader(_StreamingBodyReader(response["Body"])))

    def path(self, key: str) -> Path:
        cached = self._cached(key)
        if cached.is_file():
            with suppress(OSError):  # evicted in the meantime: fetched again below
                os.utime(cached)  # recently used
                return cached
        with self.open(key) as body:
            _write_atomically(cached, iter(lambda: body.read(1024 * 1024), b""), None)
        self._evict(keep=cached)
        return cached

    def _evict(self, keep: Path) -> None:
        """Delete the least recently used cached copies until the cache fits ``cache_max_bytes``."""
        if self._cache_max_bytes is None:
            return
        copies: list[tuple[float, int, Path]] = []
        for path in self._cache_dir.rglob("*"):
            with suppress(OSError):
                if path.is_file() and not path.name.startswith("."):  # "." files: downloads in progress
                    stat = path.stat()
                    copies.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in copies)
        for _, size, path in sorted(copies):
            if total <= self._cache_max_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            total -= size

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._object_key(key))
        self._cached(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except NotFound:
            return False
        return True

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def listing(self, prefix: str) -> Iterator[tuple[str, float]]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            for item in page.get("Contents", []):
                yield str(item["Key"])[len(self.prefix) :], float(item["LastModified"].timestamp())

    def remove_temporaries(self, older_than: float) -> int:
        return 0  # S3 writes are atomic; an aborted multipart upload is dropped by the write that started it

    def _head(self, key: str) -> dict[str, Any]:
        try:
            return cast(dict[str, Any], self._client.head_object(Bucket=self.bucket, Key=self._object_key(key)))
        except self._client_error as error:
            if self._is_missing(error):
                raise _missing(key) from None
            raise


class _StreamingBodyReader(io.RawIOBase):
    """Adapts botocore's ``StreamingBody`` to ``io.RawIOBase`` so it can be wrapped in a BufferedReader."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()
