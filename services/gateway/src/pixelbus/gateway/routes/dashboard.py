"""``GET /dashboard``: a small web page (plain HTML, CSS and JavaScript, no build step)
with the recent tasks, a face-swap form and task details, all through the public API."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import RedirectResponse, Response

router = APIRouter(include_in_schema=False)

_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


def _read(name: str) -> bytes:
    return resources.files("pixelbus.gateway.dashboard").joinpath(name).read_bytes()


@router.get("/dashboard")
async def dashboard_root() -> RedirectResponse:
    return RedirectResponse("/dashboard/")


@router.get("/dashboard/")
async def dashboard_index() -> Response:
    return Response(_read("index.html"), media_type=_FILES["index.html"])


@router.get("/dashboard/{name}")
async def dashboard_file(name: str) -> Response:
    if name not in _FILES:
        raise HTTPException(404, "not found")
    return Response(_read(name), media_type=_FILES[name], headers={"Cache-Control": "no-cache"})
