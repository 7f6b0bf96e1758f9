"""Builds the FastAPI application: every layout mounted over one set of handlers.

``create_app`` receives ready-made services; it builds nothing itself and reads no settings object.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from fastapi import Depends, FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from tunery import __version__
from tunery.api import errors
from tunery.api.dialects import LAYOUTS, bind
from tunery.api.routes import chat, deployments, files, fine_tuning, health, models, permissions, uploads, webhooks
from tunery.services.container import Services

DATA_PLANE_ROUTERS = (
    uploads.router,
    files.router,
    permissions.router,
    fine_tuning.router,
    models.router,
    chat.router,
    deployments.data_router,
    webhooks.router,
)
# Multipart overhead allowed on top of the file-size limit before the body is even read.
UPLOAD_SLACK_BYTES = 1024 * 1024


def create_app(
    services: Services,
    *,
    max_upload_bytes: int,
    cors_origins: list[str] | None = None,
    max_part_bytes: int | None = None,
) -> FastAPI:
    app = FastAPI(
        title="Tunery",
        version=__version__,
        description="Self-hosted fine-tuning with the Azure OpenAI / OpenAI API.",
    )
    app.state.services = services
    errors.install(app)
    app.include_router(health.router)
    app.include_router(deployments.arm_router)
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
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = request_id
        declared = request.headers.get("content-length")
        limit = max_upload_bytes
        if max_part_bytes is not None and request.url.path.endswith("/parts"):
            limit = max_part_bytes  # an Uploads API part has its own limit
        if declared and declared.isdigit() and int(declared) > limit + UPLOAD_SLACK_BYTES:
            response: Response = JSONResponse(
                errors.error_body(
                    f"The request body is {int(declared)} bytes; uploads may be at most {limit} bytes.",
                    type_="invalid_request_error",
                    param="file",
                    code="fileTooLarge",
                ),
                413,
            )
        else:
            response = await call_next(request)
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
