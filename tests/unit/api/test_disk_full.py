"""A full disk: the data directory on a small tmpfs, filled up through the API and then to the last byte.

Uploads get a clear 507 (no internals), deleting (a file, a webhook endpoint) still works at 0 bytes free (the
space reserve), and no file
stays ``pending``/``running``. Needs root to mount the tmpfs; skipped with the reason elsewhere.
A failed base-model preparation is remembered instead of re-run on every request (no root needed).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.unit.api.test_fine_tuning_api import chat_jsonl
from tunery.api.app import create_app
from tunery.bootstrap import BaseWeights, build_catalog, build_services
from tunery.config import FilesSettings, ModelsSettings, Settings
from tunery.domain.errors import InsufficientStorage, Unavailable
from tunery.testing.fakes import FakeEngine

TMPFS_BYTES = 16 * 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; this test fills a real file system")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Take every byte left on the file system (raw writes, so no buffer is left to flush)."""
    filler = directory / "filler"
    try:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError:
        return filler  # not even an inode is left
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def upload(client: TestClient, key: str, data: bytes) -> Any:
    return client.post(
        "/v1/files",
        headers={"api-key": key},
        files={"file": ("d.jsonl", data)},
        data={"purpose": "fine-tune"},
    )


def test_a_full_disk_is_a_clear_507_and_deletes_still_work(small_disk: Path, tiny_model_dir: Path) -> None:
    settings = Settings(
        data_dir=small_disk,
        files=FilesSettings(max_upload_bytes=8 * 1024 * 1024, max_files_per_project=1000),
        models=ModelsSettings(base_models=[f"tiny-llama={tiny_model_dir}"]),
    )
    engine = FakeEngine()
    services = build_services(settings, background_checks=False, engine=lambda: engine)
    assert services.files.reserve_space()
    key = services.keys.create("p").secret
    client = TestClient(create_app(services, max_upload_bytes=settings.files.max_upload_bytes))
    data = chat_jsonl(20) * 300  # ~0.5 MB
    accepted: list[str] = []
    for _ in range(100):
        response = upload(client, key, data)
        if response.status_code != 200:
            break
        accepted.append(response.json()["id"])
    else:
        pytest.fail("the disk never filled up")
    assert accepted, "some uploads fit before the disk filled"
    assert response.status_code == 507, response.text
    error = response.json()["error"]
    assert error["code"] == "insufficientStorage"
    assert "out of disk space" in error["message"]
    assert "Errno" not in error["message"]
    assert "Traceback" not in error["message"]

    # Not only files: any delete runs at 0 bytes free (the edge gives back the reserve and retries once).
    hook = client.post("/v1/webhook_endpoints", headers={"api-key": key}, json={
        "name": "h", "url": "https://93.184.216.34/hook", "event_types": ["fine_tuning.job.failed"]})  # fmt: skip
    assert hook.status_code == 200, hook.text
    filler = fill(small_disk)  # now not one byte is free
    gone = client.delete(f"/v1/webhook_endpoints/{hook.json()['id']}", headers={"api-key": key})
    assert gone.status_code == 200, gone.text
    assert client.get(f"/v1/webhook_endpoints/{hook.json()['id']}", headers={"api-key": key}).status_code == 404
    filler.unlink()
    assert services.files.reserve_space(), "the reserve is set aside again once there is room"

    filler = fill(small_disk)  # now not one byte is free
    deleted = client.delete(f"/v1/files/{accepted[0]}", headers={"api-key": key})
    assert deleted.status_code == 200, deleted.text
    assert client.get(f"/v1/files/{accepted[0]}", headers={"api-key": key}).status_code == 404

    listed = client.get("/v1/files", headers={"api-key": key}).json()["data"]
    assert {f["status"] for f in listed} <= {"processed", "error"}, "no file is left pending or running"
    filler.unlink(missing_ok=True)
    services.close()


def test_a_failed_base_model_preparation_is_not_rerun_on_every_request(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path, models=ModelsSettings(base_models=[f"tiny-llama={tiny_model_dir}"]))
    calls: list[list[str]] = []

    def failing_run(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        return subprocess.CompletedProcess(command, 1, "", "OSError: [Errno 28] No space left on device: '/x'")

    monkeypatch.setattr("tunery.bootstrap.subprocess.run", failing_run)
    monkeypatch.setattr("tunery.bootstrap.Catalog.is_prepared", lambda *_args: False)
    catalog = build_catalog(settings)
    weights = BaseWeights(settings, catalog)
    for _ in range(3):
        with pytest.raises(InsufficientStorage) as raised:
            weights("tiny-llama")
        assert "out of disk space" in raised.value.message
        assert "python" not in raised.value.message
        assert "Command" not in raised.value.message
    assert len(calls) == 1, "the preparation ran once; the failure is remembered"

    other = BaseWeights(settings, catalog, retry_after_s=0.0)
    monkeypatch.setattr(
        "tunery.bootstrap.subprocess.run",
        lambda command, **_: subprocess.CompletedProcess(command, 1, "", "ValueError: bad weights"),
    )
    with pytest.raises(Unavailable, match="Preparing base model 'tiny-llama' failed; the server log says why"):
        other("tiny-llama")
