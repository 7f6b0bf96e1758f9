"""An in-process Tunery app (FastAPI TestClient) on real stores: SQLite, and PostgreSQL when configured."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tunery.api.app import create_app
from tunery.catalog.chat_tokenizer import ChatTokenizer
from tunery.services.container import Services
from tunery.services.files import FileRules, FileService
from tunery.services.keys import KeyService
from tunery.storage import ApiKeyStore, FileStore, LocalBlobStore, ProjectStore
from tunery.testing.databases import POSTGRES_URL_VARIABLE, fresh_database

MAX_UPLOAD_BYTES = 64 * 1024


@dataclass
class Api:
    client: TestClient
    services: Services
    key: str
    other_key: str
    store: FileStore
    blobs: LocalBlobStore

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def api(request: pytest.FixtureRequest, tmp_path: Path, tiny_model_dir: Path) -> Iterator[Api]:
    url = None
    if request.param == "postgres":
        url = os.environ.get(POSTGRES_URL_VARIABLE)
        if not url:
            pytest.skip(f"{POSTGRES_URL_VARIABLE} is not set (scripts/postgres.sh starts a local server)")
    tokenizer = ChatTokenizer.from_dir(tiny_model_dir, name="tiny-llama", context_length=256)
    with fresh_database(tmp_path, url) as db:
        store, blobs = FileStore(db), LocalBlobStore(tmp_path / "blobs")
        files = FileService(
            store,
            blobs,
            FileRules(max_upload_bytes=MAX_UPLOAD_BYTES, max_files_per_project=8),
            lambda: tokenizer,
            background=False,
        )
        services = Services(keys=KeyService(ProjectStore(db), ApiKeyStore(db)), files=files)
        key = services.keys.create("team").secret
        other_key = services.keys.create("intruder").secret
        app = create_app(services, max_upload_bytes=MAX_UPLOAD_BYTES)
        with TestClient(app) as client:
            yield Api(client=client, services=services, key=key, other_key=other_key, store=store, blobs=blobs)
        services.close()
