"""The URL layouts Tunery serves and how each one spells the same objects.

One set of handlers serves every layout; the differences (status names, ``-1`` vs ``"auto"``, 201 +
``Location``) are translated here and in the wire schemas, nowhere else.
"""

from __future__ import annotations

import re
from enum import StrEnum

from fastapi import Request

from tunery.domain.errors import InvalidRequest

API_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
V1_API_VERSIONS = frozenset({"v1", "preview"})


class Dialect(StrEnum):
    OPENAI = "openai"  # /v1/...
    AZURE_V1 = "azure_v1"  # /openai/v1/...  (api-version optional: v1 | preview)
    AZURE_DATED = "azure_dated"  # /openai/...?api-version=YYYY-MM-DD[-preview] (required)

    @property
    def is_azure(self) -> bool:
        return self is not Dialect.OPENAI

    @property
    def created_status(self) -> int:
        """Azure's dated API answers creates with 201 + Location; the others with 200."""
        return 201 if self is Dialect.AZURE_DATED else 200


LAYOUTS: tuple[tuple[str, Dialect], ...] = (
    ("/v1", Dialect.OPENAI),
    ("/openai/v1", Dialect.AZURE_V1),
    ("/openai", Dialect.AZURE_DATED),
)


def bind(dialect: Dialect):  # type: ignore[no-untyped-def]
    """A dependency that records the layout a request came in on and checks its ``api-version``."""

    def _bind(request: Request) -> None:
        version = request.query_params.get("api-version")
        if dialect is Dialect.AZURE_DATED:
            if not version:
                raise InvalidRequest(
                    "Missing required query parameter 'api-version' (for example api-version=2024-10-21). "
                    "Use the /openai/v1/ paths to call Tunery without an api-version.",
                    param="api-version",
                    code="MissingApiVersionParameter",
                )
            if not API_VERSION_RE.match(version):
                raise InvalidRequest(
                    f"api-version {version!r} is not a date such as 2024-10-21 or 2025-04-01-preview.",
                    param="api-version",
                    code="InvalidApiVersionParameter",
                )
        elif dialect is Dialect.AZURE_V1 and version and version not in V1_API_VERSIONS:
            raise InvalidRequest(
                f"api-version {version!r} is not supported on /openai/v1; use 'v1' or 'preview' or leave it out.",
                param="api-version",
                code="InvalidApiVersionParameter",
            )
        request.state.dialect = dialect

    return _bind


def dialect_of(request: Request) -> Dialect:
    return getattr(request.state, "dialect", Dialect.OPENAI)
