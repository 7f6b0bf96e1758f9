"""``/health``: unauthenticated liveness for load balancers and test harnesses, with the engine's state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from tunery import __version__
from tunery.api.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/health")
def health(services: ServicesDep) -> dict[str, Any]:
    """``engine``: not started, or its isolation, state, pid, resident and peak memory, limit and restarts."""
    return {"status": "ok", "version": __version__, "engine": services.chat.engine_status()}
