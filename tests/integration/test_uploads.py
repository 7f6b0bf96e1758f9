"""Large files through the Uploads API and Azure's ``/files/import``, on a real server with the official client.

The single-upload limit is set small, so the file sent with ``client.uploads.upload_file_chunked`` is
larger than any one ``/files`` upload may be; it still becomes a processed file.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.harness import tunery
from tests.integration.test_fine_tuning import colour_jsonl

pytestmark = pytest.mark.integration

SINGLE_LIMIT = 2048
PART = 1024


@pytest.fixture
def upload_server(tmp_path: Path, tiny_model_dir: Path, start_server: Callable) -> tuple[str, dict[str, str]]:
    imports = tmp_path / "imports"
    imports.mkdir()
    env = {
        **os.environ,
        "TUNERY_DATA_DIR": str(tmp_path / "data"),
        "TUNERY_MODELS__BASE_MODELS": f'["tiny-llama={tiny_model_dir}"]',
        "TUNERY_FILES__MAX_UPLOAD_BYTES": str(SINGLE_LIMIT),
        "TUNERY_FILES__MAX_PART_BYTES": str(PART),
        "TUNERY_FILES__IMPORT_DIRS": f'["{imports}"]',
        "TUNERY_FILES__IMPORT_ALLOW_PRIVATE_URLS": "true",  # the test serves the file from 127.0.0.1
        "TUNERY_WORKER__ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("TUNERY_STORAGE__DATABASE_URL", None)
    env["MEMBER_KEY"] = tunery(env, "keys", "create", "--project", "up")
    env["ADMIN_KEY"] = tunery(env, "keys", "create", "--project", "up", "--admin")
    env["IMPORTS"] = str(imports)
    _, url = start_server(env, tmp_path / "server.log")
    return url, env


def test_a_file_over_the_single_upload_limit_becomes_processed(
    upload_server: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, env = upload_server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=env["MEMBER_KEY"], max_retries=0)
    data = colour_jsonl(40)
    assert len(data) > 2 * SINGLE_LIMIT
    with pytest.raises(openai.APIStatusError) as too_big:
        client.files.create(file=("big.jsonl", data), purpose="fine-tune")
    assert too_big.value.status_code == 413

    path = tmp_path / "big.jsonl"
    path.write_bytes(data)
    upload = client.uploads.upload_file_chunked(
        file=path, mime_type="application/jsonl", purpose="fine-tune", part_size=PART,
        md5=hashlib.md5(data).hexdigest(),
    )  # fmt: skip
    assert upload.status == "completed"
    assert upload.file is not None
    done = client.files.wait_for_processing(upload.file.id, poll_interval=0.2, max_wait_seconds=120)
    assert done.status == "processed", done.status_details
    assert done.bytes == len(data)
    assert client.files.content(done.id).content == data


def test_a_lost_part_or_a_wrong_checksum_is_refused(upload_server: tuple[str, dict[str, str]]) -> None:
    url, env = upload_server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=env["MEMBER_KEY"], max_retries=0)
    data = colour_jsonl(20)
    pieces = [data[i : i + PART] for i in range(0, len(data), PART)]
    upload = client.uploads.create(bytes=len(data), filename="t.jsonl", mime_type="application/jsonl",
                                   purpose="fine-tune")  # fmt: skip
    parts = [client.uploads.parts.create(upload.id, data=piece).id for piece in pieces]

    with pytest.raises(openai.BadRequestError) as lost:
        client.uploads.complete(upload.id, part_ids=parts[:-1])
    assert "missing" in lost.value.message
    assert str(len(data)) in lost.value.message
    with pytest.raises(openai.BadRequestError) as unknown:
        client.uploads.complete(upload.id, part_ids=[*parts[:-1], "part-" + "0" * 32])
    assert "is not a part of" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as checksum:
        client.uploads.complete(upload.id, part_ids=parts, md5=hashlib.md5(b"other").hexdigest())
    assert "md5" in checksum.value.message
    assert client.files.list().data == [], "a refused completion leaves no file behind"

    done = client.uploads.complete(upload.id, part_ids=parts, md5=hashlib.md5(data).hexdigest())
    assert done.status == "completed"
    with pytest.raises(openai.ConflictError):
        client.uploads.parts.create(upload.id, data=b"more")
    cancelled = client.uploads.cancel(
        client.uploads.create(bytes=10, filename="x.jsonl", mime_type="application/jsonl", purpose="fine-tune").id
    )
    assert cancelled.status == "cancelled"
    other = openai.OpenAI(
        base_url=f"{url}/v1", api_key=tunery(env, "keys", "create", "--project", "other"), max_retries=0
    )
    with pytest.raises(openai.NotFoundError):
        other.uploads.cancel(upload.id)


def test_import_from_a_url_and_for_admins_from_a_local_folder(upload_server: tuple[str, dict[str, str]]) -> None:
    url, env = upload_server
    data = colour_jsonl(30)
    served = Path(env["IMPORTS"])
    (served / "train.jsonl").write_bytes(data)
    web = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(served)))
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        member = {"api-key": env["MEMBER_KEY"]}
        body = {"purpose": "fine-tune", "filename": "imported.jsonl",
                "content_url": f"http://127.0.0.1:{web.server_address[1]}/train.jsonl"}  # fmt: skip
        answer = httpx.post(f"{url}/openai/files/import?api-version=2024-10-21", json=body, headers=member)
        assert answer.status_code == 201, answer.text
        assert answer.headers["Location"].endswith(answer.json()["id"])
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=env["MEMBER_KEY"], max_retries=0)
        done = client.files.wait_for_processing(answer.json()["id"], poll_interval=0.2, max_wait_seconds=120)
        assert (done.status, done.bytes) == ("processed", len(data))

        missing = httpx.post(f"{url}/v1/files/import", json={**body, "content_url": body["content_url"] + "x"},
                             headers=member)  # fmt: skip
        assert missing.status_code == 400
        assert missing.json()["error"]["code"] == "fileImportFailed"

        local = {**body, "content_url": f"file://{served / 'train.jsonl'}"}
        refused = httpx.post(f"{url}/v1/files/import", json=local, headers=member)
        assert refused.status_code == 403
        admin = {"api-key": env["ADMIN_KEY"]}
        assert httpx.post(f"{url}/v1/files/import", json=local, headers=admin).status_code == 200
        outside = httpx.post(f"{url}/v1/files/import", json={**local, "content_url": "file:///etc/passwd"},
                             headers=admin)  # fmt: skip
        assert outside.status_code == 400
        assert "not under a folder" in outside.json()["error"]["message"]
    finally:
        web.shutdown()
