"""Projects and API keys: every object belongs to one project, and every key to one project."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum


class KeyRole(StrEnum):
    """What a key may do in its project. Admin: everything, including sharing checkpoints with other
    projects and importing from the server's local folders. Member: everything else."""

    ADMIN = "admin"
    MEMBER = "member"


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    name: str
    created_at: int


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key: only the SHA-256 of the secret is kept, plus a short prefix to recognise it."""

    id: str
    project_id: str
    key_hash: str
    prefix: str
    created_at: int
    role: KeyRole = KeyRole.MEMBER


def hash_api_key(secret: str) -> str:
    """Keys are 256-bit random tokens, so a plain SHA-256 is enough to store them safely."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()
