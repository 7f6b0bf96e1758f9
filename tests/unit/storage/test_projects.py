"""ProjectStore and ApiKeyStore: creation, lookups, the unique project name, keys found by hash.

Run: ``pytest tests/unit/storage/test_projects.py`` (add TUNERY_TEST_DATABASE_URL for PostgreSQL too).
"""

from __future__ import annotations

import time

import pytest

from tunery.domain.errors import Conflict, NotFound
from tunery.domain.ids import has_prefix, new_api_key
from tunery.domain.projects import Project, hash_api_key
from tunery.storage import ApiKeyStore, Database, ProjectStore


def test_create_then_get_by_id_and_by_name(db: Database) -> None:
    store = ProjectStore(db)
    before = int(time.time())
    project = store.create("research")
    assert has_prefix(project.id, "proj")
    assert project.name == "research"
    assert before <= project.created_at <= int(time.time())
    assert store.get(project.id) == project
    assert store.get_by_name("research") == project
    assert store.get_by_name("nope") is None


def test_list_returns_every_project(db: Database) -> None:
    store = ProjectStore(db)
    created = [store.create(name) for name in ("b", "a", "c")]
    assert sorted(store.list(), key=lambda p: p.id) == sorted(created, key=lambda p: p.id)


def test_name_is_unique(db: Database, project: Project) -> None:
    with pytest.raises(Conflict) as caught:
        ProjectStore(db).create(project.name)
    assert caught.value.param == "name"
    assert project.name in caught.value.message
    assert ProjectStore(db).list() == [project]


def test_get_unknown_project(db: Database) -> None:
    with pytest.raises(NotFound) as caught:
        ProjectStore(db).get("proj-missing")
    assert caught.value.message == "No project with id 'proj-missing' was found."
    assert caught.value.param == "project_id"


def test_api_key_is_found_by_its_hash(db: Database, project: Project) -> None:
    keys = ApiKeyStore(db)
    secret = new_api_key()
    key = keys.create(project.id, hash_api_key(secret), prefix=secret[:8])
    assert has_prefix(key.id, "key")
    assert (key.project_id, key.key_hash, key.prefix) == (project.id, hash_api_key(secret), secret[:8])
    assert keys.find_by_hash(hash_api_key(secret)) == key
    assert keys.find_by_hash(hash_api_key(new_api_key())) is None


def test_api_keys_count_and_list_per_project(db: Database, project: Project, other_project: Project) -> None:
    keys = ApiKeyStore(db)
    assert keys.count() == 0
    mine = [keys.create(project.id, hash_api_key(new_api_key()), "tny-a") for _ in range(2)]
    theirs = keys.create(other_project.id, hash_api_key(new_api_key()), "tny-b")
    assert keys.count() == 3
    assert sorted(keys.list(project.id), key=lambda k: k.id) == sorted(mine, key=lambda k: k.id)
    assert keys.list(other_project.id) == [theirs]
    assert keys.list("proj-missing") == []
