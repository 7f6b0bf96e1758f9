"""Creates and parses every identifier Tunery hands out.

IDs follow Azure OpenAI's shape (``file-<32 hex>``, ``ftjob-<32 hex>``, ...). Fine-tuned model names are
``<base>.ft-<job hex>[-<suffix>]`` and checkpoints ``<model>:ckpt-step-<N>``. No I/O here.
"""

from __future__ import annotations

import re
import secrets
import uuid

PREFIXES = frozenset(
    {"file", "ftjob", "ftevent", "ftchkpt", "proj", "key", "deploy", "whep", "whdl", "upload", "part", "cp"}
)
_ID_RE = re.compile(r"^(?P<prefix>[a-z]+)-(?P<hex>[0-9a-f]{32})$")


def new_id(prefix: str) -> str:
    """Return a fresh ``<prefix>-<32 hex>`` identifier."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    return f"{prefix}-{uuid.uuid4().hex}"


def has_prefix(value: str, prefix: str) -> bool:
    """True when ``value`` is a well-formed id with this prefix."""
    match = _ID_RE.match(value)
    return bool(match and match.group("prefix") == prefix)


def id_hex(value: str) -> str:
    """The 32-hex part of an id such as ``ftjob-<hex>``."""
    match = _ID_RE.match(value)
    if not match:
        raise ValueError(f"not a Tunery id: {value!r}")
    return match.group("hex")


def new_api_key() -> str:
    """A new secret API key; only its hash is ever stored."""
    return "tny-" + secrets.token_urlsafe(32)
