"""An in-process Tunery app (FastAPI TestClient) built by ``bootstrap`` on real stores: SQLite, and
PostgreSQL when TUNERY_TEST_DATABASE_URL is set. File checks run inline so tests need not wait."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tunery.api.app import create_app
from tunery.bootstrap import build_services
from tunery.config import FilesSettings, ModelsSettings, Settings, StorageSettings, WebhooksSettings
from tunery.services.container import Services
from tunery.storage import Database, FileStore, LocalBlobStore
from tunery.testing.databases import POSTGRES_URL_VARIABLE, fresh_database
from tunery.testing.fakes import FakeEngine

MAX_UPLOAD_BYTES = 64 * 1024


@dataclass
class Api:
    client: TestClient
    services: Services
    settings: Settings
    key: str
    other_key: str
    db: Database
    engine: FakeEngine

    @property
    def store(self) -> FileStore:
        return FileStore(self.db)

    @property
    def blobs(self) -> LocalBlobStore:
        return LocalBlobStore(self.settings.data_dir / "blobs")

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    @property
    def project_id(self) -> str:
        return self.services.keys.authenticate(self.key).project_id


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def api(request: pytest.FixtureRequest, tmp_path: Path, tiny_model_dir: Path) -> Iterator[Api]:
    url = None
    if request.param == "postgres":
        url = os.environ.get(POSTGRES_URL_VARIABLE)
        if not url:
            pytest.skip(f"{POSTGRES_URL_VARIABLE} is not set (scripts/postgres.sh starts a local server)")
    with fresh_database(tmp_path, url) as db:
        settings = Settings(
            data_dir=tmp_path / "data",
            storage=StorageSettings(database_url=db.url.render_as_string(hide_password=False)),
            files=FilesSettings(max_upload_bytes=MAX_UPLOAD_BYTES, max_files_per_project=8),
            models=ModelsSettings(base_models=[f"tiny-llama={tiny_model_dir}"]),
            webhooks=WebhooksSettings(allowed_hosts=["127.0.0.1"]),  # test receivers; other private hosts refused
        )
        engine = FakeEngine()
        services = build_services(settings, background_checks=False, engine=lambda: engine)
        key = services.keys.create("team").secret
        other_key = services.keys.create("intruder").secret
        app = create_app(services, max_upload_bytes=MAX_UPLOAD_BYTES)
        with TestClient(app) as client:
            yield Api(
                client=client, services=services, settings=settings, key=key, other_key=other_key, db=db, engine=engine
            )
        services.close()
