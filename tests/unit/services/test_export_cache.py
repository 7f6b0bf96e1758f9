"""The export cache under DATA_DIR/exports stays bounded: deleted models, old exports and the least recently
used (past the size bound) are removed; what was just used stays. Jobs are driven by scripted trainer records.
Run: ``.venv/bin/pytest tests/unit/services/test_export_cache.py``
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.services.test_hub_push import succeeded_job
from tunery.bootstrap import build_services
from tunery.config import ModelsSettings, PortabilitySettings, Settings
from tunery.domain.pagination import PageRequest
from tunery.services.container import Services
from tunery.services.portability import DONE_FILE


def make_services(tmp_path: Path, tiny_model_dir: Path, **cache: float) -> Services:
    settings = Settings(
        data_dir=tmp_path / "data",
        models=ModelsSettings(base_models=[f"tiny-llama={tiny_model_dir}"]),
        portability=PortabilitySettings(**cache),
    )
    return build_services(settings, background_checks=False)


@pytest.fixture
def services(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Services]:
    built = make_services(tmp_path, tiny_model_dir)
    yield built
    built.close()


def exports(services: Services, tmp_path: Path) -> set[str]:
    """The finished exports on disk, as 'model name/format'."""
    root = tmp_path / "data" / "exports"
    found = set()
    for done in root.glob(f"*/*/{DONE_FILE}"):
        owner = json.loads((done.parent.parent / "owner.json").read_text())
        found.add(f"{owner['name']}/{done.parent.name}")
    return found


def age(services: Services, tmp_path: Path, seconds: float) -> None:
    """Make every export look last used ``seconds`` ago."""
    then = time.time() - seconds
    for done in (tmp_path / "data" / "exports").glob(f"*/*/{DONE_FILE}"):
        os.utime(done, (then, then))


def test_deleting_a_model_or_its_job_removes_its_exports(services: Services, tmp_path: Path) -> None:
    job = succeeded_job(services, tmp_path)
    model = job.fine_tuned_model
    assert model
    services.exports.export(job.project_id, model, "peft")
    assert exports(services, tmp_path) == {f"{model}/peft"}
    services.models.delete(job.project_id, model)
    assert exports(services, tmp_path) == set()

    other = succeeded_job(services, tmp_path / "other")
    checkpoint = services.jobs.list_checkpoints(other.project_id, other.id, page=PageRequest(limit=10)).data[0]
    services.exports.export(other.project_id, checkpoint.id, "peft")
    assert len(exports(services, tmp_path)) == 1
    services.jobs.delete(other.project_id, other.id)
    assert exports(services, tmp_path) == set()


def test_old_exports_go_and_the_cache_keeps_to_its_size(tmp_path: Path, tiny_model_dir: Path) -> None:
    services = make_services(tmp_path, tiny_model_dir, export_cache_max_bytes=1, export_cache_max_age_s=3600)
    try:
        first = succeeded_job(services, tmp_path / "a")
        second = succeeded_job(services, tmp_path / "b")
        assert first.fine_tuned_model
        assert second.fine_tuned_model
        services.exports.export(first.project_id, first.fine_tuned_model, "peft")
        assert len(exports(services, tmp_path)) == 1  # over the size bound, but just used: kept
        age(services, tmp_path, 1200)  # past the grace period, within the age limit
        services.exports.export(second.project_id, second.fine_tuned_model, "peft")
        assert exports(services, tmp_path) == {f"{second.fine_tuned_model}/peft"}  # the least recently used went
        services.exports.export(second.project_id, second.fine_tuned_model, "peft")  # a cache hit: nothing goes
        assert exports(services, tmp_path) == {f"{second.fine_tuned_model}/peft"}

        age(services, tmp_path, 7200)  # past the age limit
        assert services.exports.prune() == 1
        assert exports(services, tmp_path) == set()
        again = services.exports.export(second.project_id, second.fine_tuned_model, "peft")  # rebuilt on demand
        assert again.path.is_file()
    finally:
        services.close()
