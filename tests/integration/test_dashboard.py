"""The dashboard (``/ui/`` on the projection worker) in headless Chromium, end to end: a real
enforcement worker and a real projection worker on the broker, events published to it, and the
page reading the public API and the live WebSocket with the user's token (issue #15).

Chromium is Debian's (``make browser`` installs it); Playwright for Python drives it, and no
browser is downloaded. Screenshots go to a temporary directory, or to ``$NOVAQUOTA_UI_SCREENSHOTS``
(``make screenshots`` sets it to ``docs/img``)."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from novaquota.ops.topics import create_topics
from novaquota.schemas.templates import BUILTIN_TEMPLATES
from tests.integration.conftest import Stack
from tests.support.events import command, vm_created, vm_deleted
from tests.support.worker import ProjectionProcess, WorkerProcess, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path(os.environ.get("NOVAQUOTA_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",  # required as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HOUR = timedelta(hours=1)


@dataclass
class Deployment:
    stack: Stack
    enforcement: WorkerProcess
    projections: str
    admin: str
    acme_admin: str
    acme_viewer: str
    globex_admin: str
    shots: Path

    def api(self, base: str, path: str, token: str) -> tuple[int, Any]:
        req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


def _seed(stack: Stack) -> None:
    """Three tenants. acme grows one core every five hours for 30 hours (a history with a
    trend, so a forecast), globex and initech sit higher in utilization."""
    now = datetime.now(UTC)
    quotas = [
        ("acme", "cpu", {"limit": 16, "burst_limit": 20}),
        ("acme", "memory", {"limit": 65536}),
        ("globex", "cpu", {"limit": 4}),
        ("initech", "cpu", {"limit": 10}),
    ]
    stack.produce(
        "quota-commands",
        [
            command(
                "quota.set",
                {"level": "tenant", "entity_id": t, "resource_type": r, **q},
                t=now - 40 * HOUR,
            )
            for t, r, q in quotas
        ],
    )
    events = [
        vm_created("acme", f"acme-{i}", cpu=1, memory=1024, project_id="web", t=now - h * HOUR)
        for i, h in enumerate((30, 25, 20, 15, 10, 5))
    ]
    events += [vm_created("globex", "globex-1", cpu=3, memory=1024, t=now - 2 * HOUR)]
    events += [vm_created("initech", "initech-1", cpu=9, memory=1024, t=now - HOUR)]
    stack.produce("resource-events", events)
    stack.produce(
        "quota-commands",
        [
            command(
                "quota.set",
                {
                    "level": "project",
                    "tenant_id": "acme",
                    "entity_id": "web",
                    "resource_type": "cpu",
                    "limit": 12,
                },
                t=now - 39 * HOUR,
            )
        ],
    )


@pytest.fixture(scope="module")
def dep(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    import asyncio

    tmp = tmp_path_factory.mktemp("dashboard")
    stack = Stack(kafka_bootstrap, f"t{uuid.uuid4().hex[:10]}.", 2, tmp)
    asyncio.run(create_topics(stack.settings))
    port = free_port()
    projections = f"http://127.0.0.1:{port}"
    _seed(stack)
    enforcement = stack.start_worker(NOVAQUOTA_CORS_ORIGINS=projections)
    process = ProjectionProcess(
        bootstrap=stack.bootstrap,
        topic_prefix=stack.prefix,
        data_dir=tmp,
        credentials=enforcement.credentials,
        partitions=2,
        env={"NOVAQUOTA_UI_API_URL": enforcement.url},
        port=port,
    ).start()
    creds = enforcement.credentials
    shots = Path(os.environ.get("NOVAQUOTA_UI_SCREENSHOTS") or tmp / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    d = Deployment(
        stack,
        enforcement,
        projections,
        creds.admin_token,
        creds.token("acme-admin", "tenant-admin", "acme"),
        creds.token("acme-viewer", "viewer", "acme"),
        creds.token("globex-admin", "tenant-admin", "globex"),
        shots,
    )
    try:
        stack.wait_for(process.ready, timeout=90)
        # the seed is in force on both sides
        stack.wait_for(
            lambda: _used(d, "acme", "cpu") == 6 and _used(d, "initech", "cpu") == 9, timeout=60
        )
        stack.wait_for(lambda: _history_points(d, "acme") >= 3, timeout=60)
        yield d
    finally:
        process.stop()
        stack.stop()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _used(d: Deployment, tenant: str, resource: str) -> float | None:
    status, body = d.api(
        d.enforcement.url, f"/api/v1/quotas/utilization?entity_id={tenant}", d.admin
    )
    if status != 200:
        return None
    rows = [r for r in body["resources"] if r["resource_type"] == resource]
    return float(rows[0]["used"]) if rows else None


def _history_points(d: Deployment, tenant: str) -> int:
    path = f"/api/v1/quotas/usage/{tenant}/history?resource_type=cpu&step=hour"
    status, body = d.api(d.projections, path, d.admin)
    if status != 200 or not body["series"]:
        return 0
    return sum(1 for p in body["series"][0]["points"] if p["used"] is not None)


# --- the browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 860},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    p = browser.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.set_default_timeout(20_000)
    yield p
    p.close()
    assert not errors, errors  # an uncaught exception in the page's scripts is a failure


def login(page: Any, d: Deployment, token: str) -> None:
    page.goto(d.projections + "/ui/")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_selector("#role")


def shot(page: Any, d: Deployment, name: str, full: bool = True) -> None:
    page.screenshot(path=str(d.shots / f"dashboard-{name}.png"), full_page=full)


A11Y = """() => {
  const problems = [];
  if (!document.documentElement.lang) problems.push("no lang on <html>");
  if (document.querySelectorAll("h1").length !== 1) problems.push("not exactly one h1");
  for (const el of document.querySelectorAll("input, select, textarea")) {
    if (!el.labels || !el.labels.length) problems.push(`no label: ${el.outerHTML.slice(0, 80)}`);
  }
  for (const el of document.querySelectorAll("button, a[href]")) {
    const name = (el.getAttribute("aria-label") || el.textContent || "").trim();
    if (!name) problems.push(`no accessible name: ${el.outerHTML.slice(0, 80)}`);
  }
  for (const el of document.querySelectorAll("[role=img]")) {
    if (!el.getAttribute("aria-label")) problems.push(`role=img without a label: ${el.className}`);
  }
  for (const t of document.querySelectorAll("table")) {
    if (!t.querySelector("th")) problems.push(`table without headers: ${t.id}`);
  }
  return problems;
}"""
"""What a screen reader needs of every page, checked in the page as rendered: a language, one
h1, a label for every control, a name for every button and link, a text for every bar and
chart, headers in tables."""


def accessible(page: Any) -> None:
    assert page.evaluate(A11Y) == []


def publish(d: Deployment, events: list[dict[str, Any]]) -> None:
    """Resource events to the broker, from another thread: Playwright's sync API keeps an event
    loop running in this one."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(d.stack.produce, "resource-events", events).result()


def bar_used(page: Any, key: str) -> str | None:
    return page.evaluate(
        'k => { const m = document.querySelector(`[data-key="${k}"] .meter`); '
        "return m ? m.dataset.used : null; }",
        key,
    )


# --- tests that need only this change ------------------------------------------------------


def test_the_shell_loads_without_a_token_and_refuses_a_wrong_one(
    dep: Deployment, page: Any
) -> None:
    page.goto(dep.projections + "/ui/")
    token = page.get_by_label("API token")
    assert token.get_attribute("type") == "password"
    config = json.loads(page.evaluate("fetch('/ui/config.json').then(r => r.text())"))
    assert config == {
        "api_url": dep.enforcement.url,
        "live_url": dep.enforcement.url.replace("http://", "ws://"),
    }
    # the keyboard alone logs in: the field has the focus, Enter submits
    page.keyboard.type("nq_0000_not-a-token")
    page.keyboard.press("Enter")
    status = page.locator("#login-status")
    status.filter(has_text="This token is not valid.").wait_for()
    assert page.evaluate("sessionStorage.length") == 0
    accessible(page)
    shot(page, dep, "login", full=False)
    # the API next to the shell still wants a token
    assert _status(dep.projections + "/api/v1/projections/status") == 401


def test_a_tenant_token_reads_only_its_tenant_through_the_urls(dep: Deployment) -> None:
    """What the page would call, with acme's token: acme answers, globex is 404 on both servers."""
    for base, path in [
        (dep.enforcement.url, "/api/v1/quotas/utilization?entity_id={t}"),
        (dep.enforcement.url, "/api/v1/quotas?tenant_id={t}"),
        (dep.projections, "/api/v1/quotas/overview?entity_id={t}"),
        (dep.projections, "/api/v1/quotas/usage/{t}/history"),
        (dep.projections, "/api/v1/quotas/cost/{t}"),
    ]:
        assert dep.api(base, path.format(t="acme"), dep.acme_viewer)[0] == 200, path
        status, body = dep.api(base, path.format(t="globex"), dep.acme_viewer)
        assert (status, body["error"]["code"]) == (404, "not_found"), path


# --- tests that need the dashboard's API (branch dashapi) -----------------------------------


def test_operator_overview(dep: Deployment, page: Any) -> None:
    started = time.monotonic()
    login(page, dep, dep.admin)
    page.locator("#tenants tbody tr").first.wait_for()
    print(f"\noverview: first tenants {time.monotonic() - started:.2f} s after logging in")
    assert page.url.endswith("#/overview")
    assert page.locator("#role").inner_text().startswith("admin")
    rows = page.locator("#tenants tbody tr")
    rows.first.wait_for()
    order = rows.evaluate_all("rs => rs.map(r => r.dataset.tenant)")
    assert order[:3] == ["initech", "globex", "acme"], order  # highest utilization first
    page.locator("#workers tbody tr").first.wait_for()
    assert page.locator("#violations-by-kind").count() == 1
    # the list is searched on the server, not filtered in the page
    page.get_by_label("Find a tenant").fill("glob")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#tenants tbody tr')].map(r => r.dataset.tenant)"
        ".join() === 'globex'"
    )
    page.get_by_label("Find a tenant").fill("")
    rows.nth(2).wait_for()
    accessible(page)
    shot(page, dep, "overview")


def test_tenant_page_follows_usage_and_violations_live(dep: Deployment, page: Any) -> None:
    login(page, dep, dep.acme_viewer)
    assert page.url.endswith("#/tenant/acme")
    page.locator("#live-state", has_text="open").wait_for()
    page.locator("[data-key='project|web|cpu'] .meter").wait_for()
    assert bar_used(page, "tenant|acme|cpu") == "6"
    assert bar_used(page, "project|web|cpu") == "6"
    page.locator("#history-chart canvas").wait_for()
    page.locator("#cost-mtd").wait_for()
    accessible(page)

    started = time.monotonic()
    publish(dep, [vm_created("acme", "acme-live", cpu=3, memory=1024)])
    page.wait_for_function(
        "() => document.querySelector('[data-key=\"tenant|acme|cpu\"] .meter')"
        "?.dataset.used === '9'",
        timeout=15_000,
    )
    elapsed = time.monotonic() - started
    print(f"\nutilization bar updated {elapsed:.2f} s after the event was published")

    # over the memory quota (no burst): a violation opens, then resolves
    publish(dep, [vm_created("acme", "acme-big", cpu=1, memory=70000)])
    item = page.locator("#violations li[data-kind='over_limit']")
    item.wait_for(timeout=15_000)
    assert "memory" in item.inner_text()
    # memory went from 11 % to 118 %: the threshold alert arrives in the live feed
    alert = page.locator("#tenant-alerts li[data-kind='threshold']").first
    alert.wait_for(timeout=15_000)
    assert "memory" in alert.inner_text()
    page.wait_for_function(  # the bar follows (usage updates are coalesced up to a second)
        "() => document.querySelector('[data-key=\"tenant|acme|memory\"] .meter')"
        "?.dataset.used === '77168'",
        timeout=15_000,
    )
    shot(page, dep, "tenant")
    publish(dep, [vm_deleted("acme", "acme-big")])
    item.wait_for(state="detached", timeout=15_000)
    page.locator("#violations li.none").wait_for()
    page.wait_for_function(
        "() => document.querySelector('[data-key=\"tenant|acme|memory\"] .meter')"
        "?.dataset.used === '7168'",
        timeout=15_000,
    )

    # a phone's width: the same page, one column
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, dep, "tenant-phone")
    page.set_viewport_size({"width": 1280, "height": 860})


def test_apply_a_template_in_the_editor_and_see_the_new_limits(dep: Deployment, page: Any) -> None:
    login(page, dep, dep.acme_admin)
    assert "tenant-admin" in page.locator("#role").inner_text()
    page.get_by_role("link", name="Quota editor").click()
    page.locator("#quotas").wait_for()
    page.get_by_label("Template", exact=True).select_option("developer")
    page.locator("#template-form").get_by_label("Level").select_option("project")
    page.locator("#template-form").get_by_label("Entity id").fill("api")
    page.get_by_role("button", name="Apply template").click()
    status = page.locator("#command-status")
    page.wait_for_function(
        "() => ['applied', 'rejected'].includes(document.querySelector('#command-status')"
        ".dataset.status)"
    )
    assert status.get_attribute("data-status") == "applied", status.inner_text()
    developer = {q.resource_type: q for q in BUILTIN_TEMPLATES["developer"].quotas}
    cpu = page.locator("#quotas tr[data-key='project|api|cpu'] td.limit")
    cpu.wait_for()
    assert cpu.inner_text() == f"{float(developer['cpu'].limit):,.6f}".rstrip("0").rstrip(".")
    keys = set(page.locator("#quotas tbody tr").evaluate_all("rs => rs.map(r => r.dataset.key)"))
    assert {f"project|api|{r}" for r in developer} <= keys
    accessible(page)
    shot(page, dep, "editor")

    # set a project's quota through the form, then suspend it from its row
    form = page.locator("#quota-form")
    form.get_by_label("Level").select_option("project")
    form.get_by_label("Entity id").fill("web")
    form.get_by_label("Resource").select_option("memory")
    form.get_by_label("Limit", exact=True).fill("2048")
    page.get_by_role("button", name="Set quota").click()
    row = page.locator("#quotas tr[data-key='project|web|memory']")
    row.wait_for()
    assert status.get_attribute("data-status") == "applied", status.inner_text()
    assert row.locator("td.limit").inner_text() == "2,048"
    row.get_by_role("button", name="Suspend memory of project web").click()
    row.locator("td", has_text="suspended").wait_for()
    assert status.get_attribute("data-status") == "applied", status.inner_text()

    # a refused change shows the reason: a tenant-admin may not raise its tenant's quota
    form.get_by_label("Level").select_option("tenant")
    form.get_by_label("Resource").select_option("cpu")
    form.get_by_label("Limit", exact=True).fill("1000")
    page.get_by_role("button", name="Set quota").click()
    page.locator("#command-status [role='alert']").wait_for()
    assert "Not allowed" in status.inner_text()


def test_tenant_a_cannot_see_tenant_b_in_the_ui(dep: Deployment, page: Any) -> None:
    login(page, dep, dep.acme_viewer)
    assert page.get_by_role("link", name="Overview").count() == 0
    assert page.get_by_role("link", name="Quota editor").count() == 0  # a viewer
    page.goto(dep.projections + "/ui/#/tenant/globex")
    page.locator("#tree [role='alert']").wait_for()
    assert "Not found" in page.locator("#tree").inner_text()
    assert page.locator("[data-key*='globex']").count() == 0
    page.goto(dep.projections + "/ui/#/overview")
    page.wait_for_url("**/#/tenant/acme")
    status, body = dep.api(dep.projections, "/api/v1/tenants", dep.acme_viewer)
    assert status == 200 and [t["tenant_id"] for t in body["tenants"]] == ["acme"]
    status, _ = dep.api(dep.projections, "/api/v1/operations/overview", dep.acme_viewer)
    assert status == 404
    page.get_by_role("link", name="Audit").click()
    page.locator("#audit tbody tr").first.wait_for()
    page.goto(dep.projections + "/ui/#/audit/globex")
    page.locator("#audit-list [role='alert']").wait_for()
    assert "Not found" in page.locator("#audit-list").inner_text()
    page.get_by_role("button", name="Log out").click()
    page.get_by_label("API token").wait_for()
    assert page.evaluate("sessionStorage.length") == 0


def test_audit_page_lists_filters_pages_and_opens_a_report(dep: Deployment, page: Any) -> None:
    """The audit records of acme from GET /api/v1/audit (the seed's commands by the actor
    "tests", and 27 project quotas set by another actor), a filter typed with the keyboard,
    a second page, and the replay report fetched with the token and opened as a blob."""
    now = datetime.now(UTC)
    commands = [
        command(
            "quota.set",
            {
                "level": "project",
                "tenant_id": "acme",
                "entity_id": f"p{i:02d}",
                "resource_type": "cpu",
                "limit": 2,
                "actor": "ops:audit",
            },
            t=now - timedelta(minutes=30 - i),
        )
        for i in range(27)
    ]
    with ThreadPoolExecutor(1) as pool:
        pool.submit(dep.stack.produce, "quota-commands", commands).result()
    login(page, dep, dep.acme_viewer)
    page.get_by_role("link", name="Audit").click()
    rows = page.locator("#audit tbody tr")
    rows.first.wait_for()
    for _ in range(60):  # until the enforcement worker has written the 27 records
        if page.locator("#audit tr[data-actor='ops:audit']").count() == 25:
            break
        page.wait_for_timeout(500)
        page.get_by_role("button", name="Filter").click()
    # newest first: the last project set is the first row
    assert rows.count() == 25
    first = rows.first
    assert first.get_attribute("data-actor") == "ops:audit"
    assert "p26" in first.inner_text()
    accessible(page)
    shot(page, dep, "audit", full=False)

    # the filter, from the keyboard: the seed's commands by "tests" only
    page.get_by_label("Actor (exact)").focus()
    page.keyboard.type("tests")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#audit tbody tr')]"
        ".every(r => r.dataset.actor === 'tests')"
    )
    actors = set(rows.evaluate_all("rs => rs.map(r => r.dataset.actor)"))
    assert actors == {"tests"} and rows.count() == 3  # acme's cpu, memory and project web cpu
    assert page.get_by_role("button", name="Next").is_disabled()
    page.get_by_label("Type").select_option("audit.reservation_granted")
    page.get_by_role("button", name="Filter").click()
    page.locator("#audit-empty").wait_for()
    assert rows.count() == 0

    # every type of ops:audit over two pages: 25 then 2
    page.get_by_label("Actor (exact)").fill("ops:audit")
    page.get_by_label("Type").select_option("")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#audit tbody tr')]"
        ".filter(r => r.dataset.actor === 'ops:audit').length === 25"
    )
    offsets = rows.evaluate_all("rs => rs.map(r => Number(r.dataset.offset))")
    page.get_by_role("button", name="Next").click()
    page.wait_for_function("() => document.querySelectorAll('#audit tbody tr').length === 2")
    more = rows.evaluate_all("rs => rs.map(r => Number(r.dataset.offset))")
    assert offsets == sorted(offsets, reverse=True) and max(more) < min(offsets)
    assert "p00" in rows.last.inner_text()
    page.get_by_role("button", name="Previous").click()
    page.wait_for_function("() => document.querySelectorAll('#audit tbody tr').length === 25")

    # the replay report as of now, opened from a blob: URL (a link cannot carry the token)
    page.get_by_role("button", name="Make the report").click()
    link = page.locator("#report-open")
    link.wait_for(timeout=90_000)
    assert link.get_attribute("href").startswith("blob:")
    with page.expect_popup() as popup_info:
        link.click()
    report = popup_info.value
    report.wait_for_load_state()
    text = report.locator("body").inner_text()
    assert "acme" in text and "as of" in text.lower(), text[:500]
    # styled: the dashboard's policy, which a blob: document inherits, allows its stylesheet
    assert report.evaluate("getComputedStyle(document.body).marginTop") == "32px"
    report.close()
    accessible(page)


# --- the all-tenants live feed and the tenant tree (branch livefeed) ----------------------------


def publish_commands(d: Deployment, commands: list[dict[str, Any]]) -> None:
    with ThreadPoolExecutor(1) as pool:
        pool.submit(d.stack.produce, "quota-commands", commands).result()


def _count(page: Any, kind: str) -> int:
    text = page.evaluate(
        "k => document.querySelector(`#violations-by-kind dd[data-kind='${k}']`)?.textContent",
        kind,
    )
    return int(text.replace(",", "")) if text else 0


def test_overview_follows_every_tenant_on_one_socket(dep: Deployment, page: Any) -> None:
    """A tenant the page has never listed (it did not exist when the page opened) shows up in
    the live feed and the open-violation counts, through one all-tenants socket."""
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    login(page, dep, dep.admin)
    page.locator("#overview-live-state", has_text="open").wait_for()
    page.locator("#tenants tbody tr").first.wait_for()
    page.locator("#violations-by-kind :is(dl, p)").first.wait_for()
    listed = page.locator("#tenants tbody tr").evaluate_all("rs => rs.map(r => r.dataset.tenant)")
    assert "umbrella" not in listed
    before = _count(page, "over_limit")

    quota = {"level": "tenant", "entity_id": "umbrella", "resource_type": "cpu", "limit": 1}
    publish_commands(dep, [command("quota.set", quota)])
    path = "/api/v1/quotas?entity_id=umbrella"
    dep.stack.wait_for(lambda: dep.api(dep.enforcement.url, path, dep.admin)[1].get("total") == 1)
    publish(dep, [vm_created("umbrella", "umbrella-1", cpu=2, memory=512)])
    opened = page.locator("#alerts li[data-tenant='umbrella'][data-type='quota_exceeded']")
    opened.wait_for(timeout=15_000)
    assert "over_limit" in opened.inner_text() and "cpu" in opened.inner_text()
    alert = page.locator("#alerts li[data-tenant='umbrella'][data-type='alert']").first
    alert.wait_for(timeout=15_000)  # 80 % and 95 % crossed at once: two threshold alerts
    page.wait_for_function(
        "n => Number(document.querySelector(\"#violations-by-kind dd[data-kind='over_limit']\")"
        "?.textContent) === n",
        arg=before + 1,
        timeout=15_000,
    )
    live = [u for u in sockets if "/api/v1/quotas/live" in u]
    assert len(live) == 1 and "scope=all" in live[0], sockets
    accessible(page)
    shot(page, dep, "overview")

    publish(dep, [vm_deleted("umbrella", "umbrella-1")])
    page.locator("#alerts li[data-tenant='umbrella'][data-type='violation_resolved']").wait_for(
        timeout=15_000
    )
    page.wait_for_function(
        "n => Number(document.querySelector(\"#violations-by-kind dd[data-kind='over_limit']\")"
        "?.textContent ?? 0) === n",
        arg=before,
        timeout=15_000,
    )
    assert len([u for u in sockets if "/api/v1/quotas/live" in u]) == 1


def test_tenant_tree_shows_users_under_their_projects(dep: Deployment, page: Any) -> None:
    def quota(level: str, entity: str, limit: int) -> dict[str, Any]:
        data = {"level": level, "entity_id": entity, "tenant_id": "hooli", "limit": limit}
        return command("quota.set", {**data, "resource_type": "cpu"})

    publish_commands(
        dep, [quota("tenant", "hooli", 32), quota("user", "alice", 4), quota("user", "bob", 8)]
    )
    publish(
        dep,
        [
            vm_created("hooli", "h-1", cpu=2, project_id="mobile", user_id="alice"),
            vm_created("hooli", "h-2", cpu=1, project_id="mobile", user_id="bob"),
            vm_created("hooli", "h-3", cpu=1, project_id="backend", user_id="bob"),
            vm_created("hooli", "h-4", cpu=1, user_id="carol"),
        ],
    )
    path = "/api/v1/quotas/hierarchy?tenant_id=hooli"
    dep.stack.wait_for(
        lambda: (
            dep.api(dep.enforcement.url, path, dep.admin)[1].get("unassigned_users") == ["carol"]
        )
    )
    login(page, dep, dep.admin)
    page.goto(dep.projections + "/ui/#/tenant/hooli")
    project = "#tree details[data-level='project'][data-entity='{}']"
    user = " details[data-level='user'][data-entity='{}']"
    alice = page.locator(project.format("mobile") + user.format("alice"))
    alice.wait_for()
    assert alice.locator("[data-key='user|alice|cpu'] .meter").get_attribute("data-used") == "2"
    bob = [page.locator(project.format(p) + user.format("bob")) for p in ("mobile", "backend")]
    for node in bob:  # in both projects, with its quota in each place
        assert node.locator("[data-key='user|bob|cpu'] .meter").get_attribute("data-used") == "2"
    # both places follow bob's usage live
    publish(dep, [vm_created("hooli", "h-5", cpu=3, project_id="backend", user_id="bob")])
    page.wait_for_function(
        "() => [...document.querySelectorAll(\"[data-key='user|bob|cpu'] .meter\")]"
        ".map(m => m.dataset.used).join() === '5,5'",
        timeout=15_000,
    )
    assert page.locator(project.format("backend") + user.format("alice")).count() == 0
    page.locator("#node-unassigned" + user.format("carol")).wait_for()
    assert page.locator("#node-unassigned" + user.format("bob")).count() == 0
    accessible(page)
    shot(page, dep, "tenant-tree")
