"""Request-scoped dependencies: the services, the caller's principal, the dialect, paging."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from tunery.api.dialects import Dialect, dialect_of
from tunery.services.container import Services
from tunery.services.keys import Principal


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_principal(
    request: Request,
    api_key: Annotated[str | None, Header(alias="api-key")] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    """Accept the key as ``api-key: <key>`` (Azure) or ``Authorization: Bearer <key>`` (OpenAI)."""
    secret = api_key
    if not secret and authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer":
            secret = token.strip()
    principal = get_services(request).keys.authenticate(secret)
    request.state.principal = principal
    return principal


ServicesDep = Annotated[Services, Depends(get_services)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
DialectDep = Annotated[Dialect, Depends(dialect_of)]
