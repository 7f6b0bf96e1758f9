"""Builds the FastAPI application: every layout mounted over one set of handlers.

``create_app`` receives ready-made services; it builds nothing itself and reads no settings object.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable

from fastapi import Depends, FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute

from tunery import __version__
from tunery.api import errors
from tunery.api.dialects import LAYOUTS, bind
from tunery.api.edge import BODY_LIMITS
from tunery.api.routes import (
    chat,
    deployments,
    evals,
    files,
    fine_tuning,
    graders,
    health,
    migrations,
    models,
    permissions,
    uploads,
    webhooks,
)
from tunery.services.container import Services

DATA_PLANE_ROUTERS = (
    uploads.parts_router,
    uploads.router,
    files.router,
    permissions.router,
    fine_tuning.router,
    graders.router,
    models.import_router,  # before models.router: /models/import is not a model name
    models.router,
    chat.router,
    deployments.data_router,
    evals.router,
    migrations.router,
    webhooks.router,
)
# Multipart overhead allowed on top of the file-size limit before the body is even read.
UPLOAD_SLACK_BYTES = 1024 * 1024
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def create_app(
    services: Services,
    *,
    max_upload_bytes: int,
    max_import_bytes: int = BODY_LIMITS["import"],
    max_part_bytes: int = BODY_LIMITS["part"],
    cors_origins: list[str] | None = None,
) -> FastAPI:
    app = FastAPI(
        title="Tunery",
        version=__version__,
        description="Self-hosted fine-tuning with the Azure OpenAI / OpenAI API.",
    )
    app.state.services = services
    app.state.body_limits = {
        **BODY_LIMITS,
        "upload": max_upload_bytes + UPLOAD_SLACK_BYTES,
        "import": max_import_bytes + UPLOAD_SLACK_BYTES,
        "part": max_part_bytes + UPLOAD_SLACK_BYTES,
    }
    errors.install(app)
    app.include_router(health.router)
    app.include_router(deployments.arm_router, generate_unique_id_function=_operation_id("arm"))
    for prefix, dialect in LAYOUTS:
        for router in DATA_PLANE_ROUTERS:
            app.include_router(
                router,
                prefix=prefix,
                dependencies=[Depends(bind(dialect))],
                generate_unique_id_function=_operation_id(dialect.value),
            )

    @app.middleware("http")
    async def request_ids(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request_id = request.headers.get("x-request-id") or ""
        if not REQUEST_ID_RE.fullmatch(request_id):  # echo a client's id only when it is short and plain
            request_id = uuid.uuid4().hex
        request.state.request_id = request_id
        response = await call_next(request)  # bodies are bounded per route: api/edge.py
        response.headers["x-request-id"] = request_id
        response.headers["apim-request-id"] = request_id
        return response

    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["*"], allow_headers=["*"])
    return app


def _operation_id(prefix: str) -> Callable[[APIRoute], str]:
    def make(route: APIRoute) -> str:
        return f"{prefix}_{route.name}"

    return make
