"""``/health``: unauthenticated liveness for load balancers and test harnesses."""

from __future__ import annotations

from fastapi import APIRouter

from tunery import __version__

router = APIRouter(tags=["health"])


@router.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok", "version": __version__}
