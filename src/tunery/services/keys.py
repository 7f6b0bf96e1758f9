"""API keys and projects: create a key for a project, and turn a presented key into a principal.

Keys are random 256-bit secrets; only their SHA-256 is stored. Every object in Tunery belongs to the
project of the key that created it, so a key from another project sees a 404.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunery.domain.errors import NotFound, Unauthorized
from tunery.domain.ids import new_api_key
from tunery.domain.projects import ApiKey, KeyRole, Project, hash_api_key
from tunery.storage.projects import ApiKeyStore, ProjectStore

UNAUTHORIZED_MESSAGE = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
    "in the 'api-key' header or as 'Authorization: Bearer <key>'."
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the project every object they touch must belong to."""

    project_id: str
    key_id: str
    role: KeyRole = KeyRole.MEMBER

    @property
    def is_admin(self) -> bool:
        return self.role is KeyRole.ADMIN


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A freshly created key. ``secret`` is shown once and never stored."""

    secret: str
    key: ApiKey
    project: Project


class KeyService:
    def __init__(self, projects: ProjectStore, keys: ApiKeyStore) -> None:
        self._projects = projects
        self._keys = keys

    def create(self, project_name: str, *, admin: bool = False) -> IssuedKey:
        """Create a key for ``project_name``, creating the project on first use (a member key unless
        ``admin``)."""
        project = self._projects.get_by_name(project_name) or self._projects.create(project_name)
        secret = new_api_key()
        role = KeyRole.ADMIN if admin else KeyRole.MEMBER
        key = self._keys.create(project.id, hash_api_key(secret), prefix=secret[:8], role=role)
        return IssuedKey(secret=secret, key=key, project=project)

    def has_keys(self) -> bool:
        return self._keys.count() > 0

    def authenticate(self, secret: str | None) -> Principal:
        """Raises:
        Unauthorized: no key, or a key Tunery never issued.
        """
        if not secret:
            raise Unauthorized(UNAUTHORIZED_MESSAGE)
        key = self._keys.find_by_hash(hash_api_key(secret))
        if key is None:
            raise Unauthorized(UNAUTHORIZED_MESSAGE)
        return Principal(project_id=key.project_id, key_id=key.id, role=key.role)

    def project(self, project_id: str) -> Project:
        return self._projects.get(project_id)

    def find_project(self, id_or_name: str) -> Project | None:
        """A project by id or by name (sharing names the project it shares with)."""
        by_name = self._projects.get_by_name(id_or_name)
        if by_name is not None:
            return by_name
        try:
            return self._projects.get(id_or_name)
        except NotFound:
            return None
