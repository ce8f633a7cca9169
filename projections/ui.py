"""The dashboard at ``/ui/`` (issue #15), served by the projection workers.

The projection workers serve it, not the enforcement workers: the page is read-mostly and its
files and polling must not compete with the write path on the enforcement workers' event loop.

What is served here is a static shell (``projections/ui/``: HTML, an ES-module app, CSS and the
vendored uPlot) and ``/ui/config.json``, which tells the page where the enforcement API is. No
tenant data comes from here: the page reads every figure from the public API with the user's own
bearer token, so ``streams.auth`` lets ``/ui/`` and what is under it through without credentials
(``OPEN_PREFIXES``). Files are read from the package directory only; a path that leaves it, or
names no file, is a 404.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import mimetypes
from pathlib import Path
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from novaquota.streams.settings import Settings

__all__ = ["UI_DIR", "add_ui_routes", "ui_config"]

UI_DIR = Path(__file__).with_name("ui")

_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".json": "application/json",
    ".txt": "text/plain",
}


def ui_config(settings: Settings, request: web.Request) -> dict[str, str]:
    """What the page needs to know and cannot guess: the enforcement API's base URL (the
    setting ``NOVAQUOTA_UI_API_URL``, else the host the page came from on ``web_port``) and the
    WebSocket URL derived from it. No secrets."""
    api = settings.ui_api_url
    if not api:
        host = request.url.host or "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 literal
        api = f"http://{host}:{settings.web_port}"
    api = api.rstrip("/")
    parts = urlsplit(api)
    ws_scheme = "wss" if parts.scheme == "https" else "ws"
    return {"api_url": api, "live_url": f"{ws_scheme}://{parts.netloc}{parts.path}"}


@functools.cache
def report_style_source() -> str:
    """The CSP source of the reports' one inline stylesheet (``templates/_base.html``), by hash.

    The Audit page opens the replay report as a ``blob:`` URL (a link cannot carry the token),
    and a ``blob:`` document inherits the policy of the page that made it: without this source
    the report would show unstyled. Only that exact stylesheet is allowed; no inline script."""
    text = Path(__file__).with_name("templates").joinpath("_base.html").read_text("utf-8")
    css = text.split("<style>", 1)[1].split("</style>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    return f"'sha256-{digest}'"


def _headers(settings: Settings, request: web.Request) -> dict[str, str]:
    """The page may talk to this origin and to the enforcement API, nothing else; no inline
    script, no framing; inline style only the replay report's (by hash)."""
    config = ui_config(settings, request)
    connect = f"'self' {config['api_url']} {config['live_url']}"
    return {
        "Content-Security-Policy": (
            "default-src 'self'; script-src 'self'; "
            f"style-src 'self' {report_style_source()}; img-src 'self' data:; "
            f"connect-src {connect}; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


def add_ui_routes(router: web.UrlDispatcher, settings: Settings) -> None:
    root = UI_DIR.resolve()

    async def index(request: web.Request) -> web.StreamResponse:
        return _file(request, root / "index.html")

    async def config(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=orjson.dumps(ui_config(settings, request)),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def asset(request: web.Request) -> web.StreamResponse:
        relative = request.match_info["path"]
        path = (root / relative).resolve()
        if not path.is_relative_to(root) or not path.is_file() or path.suffix not in _TYPES:
            raise web.HTTPNotFound()
        return _file(request, path)

    def _file(request: web.Request, path: Path) -> web.StreamResponse:
        content_type = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
        return web.Response(
            body=path.read_bytes(),
            content_type=content_type or "application/octet-stream",
            charset="utf-8" if path.suffix not in (".png",) else None,
            headers=_headers(settings, request),
        )

    router.add_get("/ui/", index)
    router.add_get("/ui/config.json", config)
    router.add_get("/ui/{path:.+}", asset)
