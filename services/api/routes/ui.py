"""GET /: one self-contained upload page (no build step, nothing fetched from a CDN)."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["ui"])


@lru_cache(maxsize=1)
def page() -> str:
    """The page's HTML, read once from the package."""
    return files("services.api").joinpath("static/index.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    """The upload page."""
    # The page's inline script is the only one it runs; say so, so an injected one cannot.
    csp = (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' blob: data:; base-uri 'none'; form-action 'none'"
    )
    return HTMLResponse(page(), headers={"Content-Security-Policy": csp})
