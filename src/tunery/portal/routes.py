"""Serves the portal's page (``/``) and its static files (``/static/...``); nothing else.

The pages are a client of the public REST API (see ``static/api.js``): this router reads no services, no
settings and no database, and answers no API request. Paths never collide with the API's (``/v1``,
``/openai``, ``/subscriptions``, ``/health``).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from tunery import __version__

HERE = Path(__file__).parent
STATIC_DIR = (HERE / "static").resolve()
# Module scripts must be served as JavaScript; some systems' mime tables lack .mjs or say text/plain.
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".html": "text/html"}
# The page is tiny and changes with each release: let the browser revalidate instead of guessing.
NO_CACHE = {"Cache-Control": "no-cache"}

MAX_STATIC_PATH = 255
router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=HERE / "templates")


@router.get("/", response_class=HTMLResponse)
def index(request: Request) -> Response:
    """The single page; the hash part of the URL (``#/jobs/...``) picks what it shows."""
    return templates.TemplateResponse(request, "index.html", {"version": __version__}, headers=NO_CACHE)


@router.get("/static/{path:path}")
def static(path: str) -> Response:
    """A file under ``static/``; anything outside it (``..``, absolute paths, NUL bytes, names longer than
    any file there) is a 404."""
    if "\x00" in path or len(path) > MAX_STATIC_PATH:
        return Response(status_code=404)
    try:
        target = (STATIC_DIR / path).resolve()
        found = target.is_file() and target.is_relative_to(STATIC_DIR)
    except (OSError, ValueError):  # a name the file system refuses
        found = False
    if not found:
        return Response(status_code=404)
    media_type = MEDIA_TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    return FileResponse(target, media_type=media_type, headers=NO_CACHE)
