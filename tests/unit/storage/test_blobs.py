"""Blob stores: one contract run against the local store and against a real S3 server over HTTP.

Run: ``pytest tests/unit/storage/test_blobs.py``. The S3 half talks to moto in server mode, started as a
separate process by the ``s3_endpoint`` fixture (tests/conftest.py); it needs ``moto[server]`` (dev
dependencies) and is skipped without it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunery.domain.errors import NotFound, PayloadTooLarge
from tunery.storage import BlobStore, LocalBlobStore, S3BlobStore

BUCKET = "tunery-test"
KEY = "files/proj-1/file-2"


class Boom(Exception):
    """Stands for a client that disconnects in the middle of an upload."""


@pytest.fixture
def s3_client(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    """A boto3 client of the session's S3 server (a separate process, over HTTP) with an empty ``BUCKET``."""
    from tunery.testing.s3_server import s3_client as make_client

    # Never read the developer's ~/.aws.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    client = make_client(s3_endpoint)
    if any(b["Name"] == BUCKET for b in client.list_buckets().get("Buckets", [])):
        for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
        for upload in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []):
            client.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])
    else:
        client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    client = request.getfixturevalue("s3_client")
    return S3BlobStore(BUCKET, "tunery", client, cache_dir=tmp_path / "cache")


def failing_after(*chunks: bytes) -> Iterator[bytes]:
    yield from chunks
    raise Boom


def test_write_then_read_back(store: BlobStore) -> None:
    assert not store.exists(KEY)
    assert store.write(KEY, [b'{"a": 1}\n', b"", b'{"b": 2}\n']) == 18
    assert store.exists(KEY)
    assert store.size(KEY) == 18
    with store.open(KEY) as reader:
        assert list(reader) == [b'{"a": 1}\n', b'{"b": 2}\n']
    assert store.path(KEY).read_bytes() == b'{"a": 1}\n{"b": 2}\n'


def test_write_replaces_the_previous_blob(store: BlobStore) -> None:
    store.write(KEY, [b"old content"])
    store.path(KEY)  # S3: fills the local cache, which the next write must drop
    store.write(KEY, [b"new"])
    assert store.path(KEY).read_bytes() == b"new"
    assert store.size(KEY) == 3


def test_empty_blob(store: BlobStore) -> None:
    assert store.write(KEY, []) == 0
    assert store.size(KEY) == 0
    with store.open(KEY) as reader:
        assert reader.read() == b""


def test_delete_is_idempotent(store: BlobStore) -> None:
    store.write(KEY, [b"x"])
    store.path(KEY)
    store.delete(KEY)
    store.delete(KEY)
    assert not store.exists(KEY)
    with pytest.raises(NotFound):
        store.path(KEY)


def test_missing_blob_is_not_found(store: BlobStore) -> None:
    with pytest.raises(NotFound):
        store.open(KEY)
    with pytest.raises(NotFound):
        store.size(KEY)
    with pytest.raises(NotFound):
        store.path(KEY)


def test_a_write_that_fails_midway_leaves_nothing(store: BlobStore, tmp_path: Path) -> None:
    with pytest.raises(Boom):
        store.write(KEY, failing_after(b"half ", b"a file"))
    assert not store.exists(KEY)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no temporary file left either


def test_a_failed_rewrite_keeps_the_old_blob(store: BlobStore) -> None:
    store.write(KEY, [b"complete"])
    with pytest.raises(Boom):
        store.write(KEY, failing_after(b"partial"))
    with store.open(KEY) as reader:
        assert reader.read() == b"complete"


def test_max_bytes_allows_exactly_the_limit(store: BlobStore) -> None:
    assert store.write(KEY, [b"12345", b"67890"], max_bytes=10) == 10


def test_max_bytes_stops_reading_as_soon_as_it_is_passed(store: BlobStore, tmp_path: Path) -> None:
    consumed: list[int] = []

    def chunks() -> Iterator[bytes]:
        for i in range(100):
            consumed.append(i)
            yield b"x" * 4

    with pytest.raises(PayloadTooLarge) as caught:
        store.write(KEY, chunks(), max_bytes=10)
    assert consumed == [0, 1, 2]
    assert "10 bytes" in caught.value.message
    assert not store.exists(KEY)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


INVALID_KEYS = [
    "",
    "/etc/passwd",
    "../x",
    "files/../../x",
    "files//x",
    "files/./x",
    "files/x/",
    ".hidden",
    "files/.x.tmp",  # the shape of the local store's temporary files
    "files\\x",
    "files/x y",
    "files/\x00",
]


def test_invalid_keys_are_refused(store: BlobStore) -> None:
    for key in INVALID_KEYS:
        with pytest.raises(ValueError, match="invalid blob key"):
            store.write(key, [b"x"])
        for method in (store.open, store.path, store.delete, store.exists, store.size):
            with pytest.raises(ValueError, match="invalid blob key"):
                method(key)


def test_local_blobs_live_under_the_root(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    store.write(KEY, [b"x"])
    assert store.path(KEY) == tmp_path.resolve() / "files" / "proj-1" / "file-2"


def test_large_s3_uploads_go_in_parts(s3_client: object, tmp_path: Path) -> None:
    store = S3BlobStore(BUCKET, "tunery/", s3_client, cache_dir=tmp_path, part_bytes=5 * 1024 * 1024)
    chunk = bytes(range(256)) * 4096  # 1 MiB
    assert store.write(KEY, [chunk] * 11) == 11 * len(chunk)
    head = s3_client.head_object(Bucket=BUCKET, Key=f"tunery/{KEY}")  # type: ignore[attr-defined]
    assert head["ContentLength"] == 11 * len(chunk)
    assert head["ETag"].endswith('-3"')  # a multipart object made of three parts
    assert store.path(KEY).read_bytes() == chunk * 11


def test_a_failed_s3_multipart_upload_is_aborted(s3_client: object, tmp_path: Path) -> None:
    store = S3BlobStore(BUCKET, "tunery", s3_client, cache_dir=tmp_path, part_bytes=5 * 1024 * 1024)
    with pytest.raises(PayloadTooLarge):
        store.write(KEY, [b"x" * 1024 * 1024] * 7, max_bytes=6 * 1024 * 1024)
    assert not store.exists(KEY)
    uploads = s3_client.list_multipart_uploads(Bucket=BUCKET)  # type: ignore[attr-defined]
    assert uploads.get("Uploads", []) == []


def test_the_s3_cache_keeps_the_recently_used_copies_within_its_bound(s3_client: object, tmp_path: Path) -> None:
    store = S3BlobStore(BUCKET, "tunery", s3_client, cache_dir=tmp_path / "cache", cache_max_bytes=2500)
    keys = [f"files/proj-1/file-{i}" for i in range(3)]
    for key in keys:
        store.write(key, [key.encode() * 100])  # ~1.7 KB each
    first = store.path(keys[0])
    os.utime(first, (1, 1))  # long unused
    second = store.path(keys[1])  # the bound is passed: the least recently used copy goes
    assert second.is_file()
    assert not first.exists()
    assert store.path(keys[0]).read_bytes() == keys[0].encode() * 100, "fetched again when gone"
    assert not second.exists(), "now the least recently used"
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in cached) <= 2500
