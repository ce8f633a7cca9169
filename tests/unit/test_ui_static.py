"""The dashboard's shell on the projection worker (projections.ui): served without a token, no
data in it, nothing outside its directory, and the API next to it still closed."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from novaquota.projections.config import ProjectionSettings
from novaquota.projections.cost import load_catalogue
from novaquota.projections.http import build_app
from novaquota.projections.metrics import ProjectionMetrics
from novaquota.projections.store import MemoryStore
from novaquota.projections.ui import UI_DIR, report_style_source
from novaquota.projections.worker import ProjectionWorker
from novaquota.streams.auth import Access, BearerAuth
from novaquota.streams.settings import Settings


def _worker(**settings: Any) -> ProjectionWorker:
    return ProjectionWorker(
        Settings(topic_prefix="unit.", **settings),
        ProjectionSettings(emit=False),
        store=MemoryStore(),
        metrics=ProjectionMetrics(),
        catalogue=load_catalogue(data={"prices": {"cpu": 1.0}}),
    )


async def _fetch(
    paths: list[str], headers: dict[str, str] | None = None, **settings: Any
) -> list[tuple[int, str, bytes, Any]]:
    # BearerAuth without tokens: every request needing credentials is refused (401)
    app = build_app(_worker(**settings), Access(BearerAuth()))
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        out = []
        for p in paths:
            resp = await client.get(p, headers=headers, allow_redirects=False)
            out.append((resp.status, resp.content_type, await resp.read(), resp.headers))
        return out
    finally:
        await client.close()


def fetch(*paths: str, headers: dict[str, str] | None = None, **settings: Any) -> Any:
    return asyncio.run(_fetch(list(paths), headers, **settings))


def test_the_shell_and_its_assets_need_no_token_and_the_api_still_does() -> None:
    page, script, chart, style, api = fetch(
        "/ui/",
        "/ui/app.js",
        "/ui/vendor/uplot-1.6.32/uPlot.esm.js",
        "/ui/app.css",
        "/api/v1/pricing",
    )
    assert page[0] == 200 and page[1] == "text/html"
    assert b'<script type="module" src="/ui/app.js">' in page[2]
    assert script[0] == 200 and script[1] == "text/javascript"
    assert chart[0] == 200 and b"uPlot" in chart[2]
    assert style[0] == 200 and style[1] == "text/css"
    assert api[0] == 401
    csp = page[3]["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self' http://" in csp
    # inline style: the replay report's stylesheet only (by hash: the Audit page opens the
    # report as a blob: document, which inherits this policy)
    assert "unsafe-inline" not in csp
    assert f"style-src 'self' {report_style_source()};" in csp
    assert report_style_source().startswith("'sha256-")
    assert page[3]["X-Content-Type-Options"] == "nosniff"


def test_only_files_of_the_ui_directory_are_served() -> None:
    answers = fetch(
        "/ui/../http.py",
        "/ui/%2e%2e/http.py",
        "/ui/..%2fui.py",
        "/ui/nothing.js",
        "/ui/vendor/",
        "/ui/vendor/uplot-1.6.32/LICENSE",  # no type we serve; the file is kept in the package
    )
    # a path with ".." is normalized to one outside /ui/ (then it needs a token: 401)
    assert [a[0] for a in answers] == [401, 401, 404, 404, 404, 404], [a[:2] for a in answers]
    assert not any(b"import" in a[2] for a in answers)


def test_config_names_the_enforcement_api_and_no_secret() -> None:
    ((status, ctype, body, _),) = fetch("/ui/config.json", headers={"Host": "dash.example:6067"})
    assert status == 200 and ctype == "application/json"
    assert body == b'{"api_url":"http://dash.example:6066","live_url":"ws://dash.example:6066"}'
    ((_, _, body, headers),) = fetch(
        "/ui/config.json", ui_api_url="https://quota.example/", internal_secret="s3cret"
    )
    assert body == b'{"api_url":"https://quota.example","live_url":"wss://quota.example"}'
    assert headers["Cache-Control"] == "no-store"
    ((_, _, _, headers),) = fetch("/ui/", ui_api_url="https://quota.example/")
    assert (
        "connect-src 'self' https://quota.example wss://quota.example"
        in (headers["Content-Security-Policy"])
    )


def test_the_vendored_chart_library_is_pinned_with_its_license() -> None:
    vendor = UI_DIR / "vendor" / "uplot-1.6.32"
    assert "(v1.6.32)" in (vendor / "uPlot.esm.js").read_text()[:400]
    assert "MIT" in (vendor / "LICENSE").read_text()
    # the page loads nothing from another origin: every src and href is local
    html = (UI_DIR / "index.html").read_text()
    assert re.findall(r'(?:src|href)="(?!/ui/|#)', html) == []
    for js in UI_DIR.glob("*.js"):
        assert "http://" not in js.read_text() and "https://" not in js.read_text(), js
