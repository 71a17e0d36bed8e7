"""The chat page at `/`: a few static files shipped inside the package, served with a strict policy."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import Response

from .protocol import ApiError

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "markdown.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

# Model output is untrusted: even if some text reached the DOM as markup, no inline script, no
# foreign origin and no plugin could run. The page needs nothing but this server.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def _read_assets() -> dict[str, bytes]:
    folder = resources.files("ovchat.server") / "web"
    return {name: (folder / name).read_bytes() for name in ASSETS}


def add_page(app: FastAPI) -> None:
    """Routes `/` and `/ui/{name}` on `app`. The files are read once, at start-up."""
    files = _read_assets()

    def asset(name: str) -> Response:
        return Response(files[name], media_type=ASSETS[name], headers=SECURITY_HEADERS)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index():
        return asset("index.html")

    @app.api_route("/ui/{name}", methods=["GET", "HEAD"], include_in_schema=False)
    async def ui_file(name: str):
        if name not in files or name == "index.html":
            raise ApiError(404, f"no file /ui/{name}", code="not_found")
        return asset(name)
