// NovaCron Quota Stream dashboard: login, routing, and the four pages (overview, tenant, quota
// editor, audit). Every figure comes from the public API with the user's token (api.js).
import { ApiError, apiUrl, enforcement, follow, identify, live, loadConfig, projections, session } from "./api.js";
import { historyChart } from "./charts.js";
import { age, bar, fmt, h, money, pct } from "./dom.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const PAGE_SIZE = 25;
const RESOURCES = ["cpu", "memory", "gpu", "instances", "storage", "volumes", "snapshots", "backups",
  "bandwidth_in", "bandwidth_out", "connections", "load_balancers", "floating_ips", "api_requests", "cost"];

let cleanup = [];
function onLeave(fn) {
  cleanup.push(fn);
}
function leave() {
  for (const fn of cleanup.splice(0)) {
    try {
      fn();
    } catch (err) {
      console.error(err);
    }
  }
}

function errorText(err) {
  if (err instanceof ApiError) {
    if (err.status === 404) return "Not found (or not visible with this token).";
    if (err.status === 403) return `Not allowed for this token: ${err.message}`;
    if (err.status === 401) return "The token was refused; log in again.";
    return `${err.message}${err.code ? ` (${err.code})` : ""}`;
  }
  return String(err && err.message ? err.message : err);
}

function problem(err) {
  return h("p", { class: "error", role: "alert" }, errorText(err));
}

function page(title, ...children) {
  document.title = `${title} · NovaQuota`;
  main.replaceChildren(h("h1", { id: "page-title" }, title), ...children);
  main.focus({ preventScroll: true });
}

function section(title, id, ...children) {
  return h("section", { "aria-labelledby": id }, h("h2", { id }, title), ...children);
}

// --- login ---------------------------------------------------------------------------------

function loginPage(message) {
  nav.hidden = true;
  who.replaceChildren();
  const status = h("p", { id: "login-status", role: "status", "aria-live": "polite" }, message || "");
  const input = h("input", {
    id: "token", name: "token", type: "password", autocomplete: "off", required: true,
    spellcheck: "false", "aria-describedby": "token-help",
  });
  const form = h(
    "form",
    { id: "login", class: "card narrow" },
    h("label", { for: "token" }, "API token"),
    input,
    h("p", { id: "token-help", class: "help" },
      "A static token (nq_…, from novaquota tokens create) or a JWT. It is kept in this tab only " +
      "(sessionStorage) and sent to the API as a bearer token."),
    h("button", { type: "submit" }, "Log in"),
    status,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    status.textContent = "Checking the token…";
    status.className = "";
    try {
      const identity = await identify(input.value.trim());
      session.token = input.value.trim();
      session.identity = identity;
      const target = identity.tenant ? `#/tenant/${encodeURIComponent(identity.tenant)}` : "#/overview";
      if (location.hash === target) await route();
      else location.hash = target; // hashchange routes
    } catch (err) {
      status.textContent = err.status === 401 ? "This token is not valid." : `Login failed: ${errorText(err)}`;
      status.className = "error";
      input.focus();
    }
  });
  page("Log in", form);
  input.focus();
}

function logout() {
  leave();
  session.token = null;
  session.identity = null;
  location.hash = "#/login";
  loginPage("Logged out.");
}

function chrome() {
  const id = session.identity;
  nav.hidden = false;
  const links = [];
  if (!id.tenant) links.push(["#/overview", "Overview"]);
  const t = currentTenant();
  if (t) {
    links.push([`#/tenant/${encodeURIComponent(t)}`, "Tenant"]);
    if (id.canWrite) links.push([`#/editor/${encodeURIComponent(t)}`, "Quota editor"]);
    links.push([`#/audit/${encodeURIComponent(t)}`, "Audit"]);
  }
  nav.replaceChildren(
    h("ul", {}, links.map(([href, text]) =>
      h("li", {}, h("a", { href, "aria-current": location.hash.startsWith(href) ? "page" : null }, text)))),
  );
  who.replaceChildren(
    h("span", { id: "role" }, id.tenant ? `${id.role} · tenant ${id.tenant}` : "admin · every tenant"),
    h("button", { type: "button", id: "logout", onclick: logout }, "Log out"),
  );
}

function currentTenant() {
  const m = location.hash.match(/^#\/(?:tenant|editor|audit)\/([^/?]+)/);
  if (m) return decodeURIComponent(m[1]);
  return session.identity && session.identity.tenant;
}

// --- overview (operator) -------------------------------------------------------------------

function overviewPage() {
  const tenantsBox = h("div", { "aria-live": "polite" });
  const opsBox = h("div");
  const feed = h("ol", { id: "alerts", class: "feed", "aria-live": "polite" },
    h("li", { class: "none" }, "None since this page was opened."));
  const search = h("input", { id: "tenant-q", type: "search", name: "q", autocomplete: "off" });
  const sort = h("select", { id: "tenant-sort", name: "sort" },
    h("option", { value: "utilization" }, "highest utilization"),
    h("option", { value: "tenant_id" }, "tenant id"));
  const tokens = [null]; // page tokens: tokens[i] opens page i
  let pageNo = 0;
  const countsBox = h("div", { id: "violations-by-kind", "aria-live": "polite" }, h("p", {}, "Loading…"));
  const liveState = h("span", { id: "overview-live-state", class: "pill" }, "connecting");
  // Open violations by kind: the operations overview's counts, then the live socket's
  // quota_exceeded / violation_resolved applied as they come. The projection's counts are taken
  // again on a refresh only when nothing arrived live for a few seconds (so they already hold
  // what arrived), which also heals anything missed while the socket was down.
  let counts = null;
  let lastDelta = 0;
  const opened = new Set();
  const resolved = new Set();
  const SETTLE_MS = 3000;

  function renderCounts() {
    const kinds = Object.entries(counts || {}).filter(([, n]) => n > 0).sort(([a], [b]) => a.localeCompare(b));
    countsBox.replaceChildren(kinds.length
      ? h("dl", { class: "counts" }, kinds.map(([k, n]) => [h("dt", {}, k), h("dd", { dataset: { kind: k } }, fmt(n, 0))]))
      : h("p", {}, "None open."));
  }

  function delta(kind, by) {
    if (!counts) return; // the first read of the counts is on its way and will hold it
    lastDelta = Date.now();
    counts[kind] = Math.max(0, (counts[kind] || 0) + by);
    renderCounts();
  }

  function onLive(msg) {
    const d = msg.data || {};
    if (msg.type === "quota_exceeded") {
      if (opened.has(d.violation_id)) return;
      opened.add(d.violation_id);
      delta(d.kind || "unknown", +1);
    } else if (msg.type === "violation_resolved") {
      if (resolved.has(d.violation_id)) return;
      resolved.add(d.violation_id);
      delta(d.kind || "unknown", -1);
    }
    for (const li of [...feed.children]) if (li.classList.contains("none")) li.remove();
    feed.prepend(h("li", { dataset: { type: msg.type, tenant: d.tenant_id } },
      h("time", { datetime: d.resolved_at || d.detected_at || "" }, new Date().toLocaleTimeString()),
      " ", h("a", { href: `#/tenant/${encodeURIComponent(d.tenant_id)}` }, d.tenant_id),
      ` · ${msg.type} · ${d.kind || ""} ${d.resource_type || ""} `, d.message || ""));
    while (feed.children.length > 50) feed.lastChild.remove();
  }

  async function loadTenants() {
    let data;
    try {
      data = await projections.get("/api/v1/tenants", {
        page_size: PAGE_SIZE, page_token: tokens[pageNo], sort: sort.value, q: search.value.trim(),
      });
    } catch (err) {
      tenantsBox.replaceChildren(problem(err));
      return;
    }
    tokens[pageNo + 1] = data.next_page_token;
    const rows = data.tenants.map((t) =>
      h("tr", { dataset: { tenant: t.tenant_id } },
        h("th", { scope: "row" }, h("a", { href: `#/tenant/${encodeURIComponent(t.tenant_id)}` }, t.tenant_id)),
        h("td", {}, pct(t.utilization), t.resource_type ? ` (${t.resource_type})` : ""),
        h("td", { class: "num" }, fmt(t.resources, 0)),
        h("td", { class: "num" }, fmt(t.open_violations, 0)),
        h("td", { class: "num" }, money(t.cost_month_to_date))));
    tenantsBox.replaceChildren(
      h("table", { id: "tenants" },
        h("caption", {}, `${data.total} tenants · page ${pageNo + 1}`),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "Tenant"), h("th", { scope: "col" }, "Highest utilization"),
          h("th", { scope: "col" }, "Resources"), h("th", { scope: "col" }, "Open violations"),
          h("th", { scope: "col" }, "Cost this month"))),
        h("tbody", {}, rows)),
      h("nav", { class: "pager", "aria-label": "Tenant pages" },
        h("button", { type: "button", disabled: pageNo === 0, onclick: () => { pageNo -= 1; loadTenants(); } }, "Previous"),
        h("button", { type: "button", disabled: !data.next_page_token, onclick: () => { pageNo += 1; loadTenants(); } }, "Next")),
    );
  }

  async function loadOperations() {
    let ops;
    try {
      ops = await projections.get("/api/v1/operations/overview");
    } catch (err) {
      opsBox.replaceChildren(problem(err));
      if (!counts) countsBox.replaceChildren(problem(err));
      return;
    }
    if (!counts || Date.now() - lastDelta > SETTLE_MS) {
      counts = { ...(ops.open_violations_by_kind || {}) };
      renderCounts();
    }
    const dl = ops.dead_letters || { total: 0, by_reason: {}, recent: [] };
    opsBox.replaceChildren(
      section("Workers", "h-workers",
        h("table", { id: "workers" },
          h("thead", {}, h("tr", {}, ["Member", "Host", "Partitions", "Consumer lag", "Events/s"].map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", {}, (ops.workers || []).map((w) => h("tr", {},
            h("th", { scope: "row", title: w.client_id }, w.member_id), h("td", {}, w.host),
            h("td", {}, (w.partitions || []).join(", ")), h("td", { class: "num" }, fmt(w.lag, 0)),
            h("td", { class: "num" }, fmt(w.events_per_second, 1))))))),
      section("Dead letters in the last hour", "h-dead",
        h("p", {}, `${fmt(dl.total, 0)} in total`),
        h("dl", { class: "counts" }, Object.entries(dl.by_reason || {}).map(([k, n]) => [h("dt", {}, k), h("dd", {}, fmt(n, 0))])),
        h("table", { id: "dead-letters" },
          h("thead", {}, h("tr", {}, ["Time", "Reason", "Tenant", "Type", "Message"].map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", {}, (dl.recent || []).slice(0, 20).map((d) => h("tr", {},
            h("td", {}, h("time", { datetime: d.time }, d.time)), h("td", {}, d.reason),
            h("td", {}, d.tenant_id || "–"), h("td", {}, d.type || "–"), h("td", {}, d.message || "")))))),
      h("p", { class: "as-of" }, `as of ${ops.as_of && ops.as_of.event_time ? ops.as_of.event_time : JSON.stringify(ops.as_of)}`),
    );
  }

  let debounce = null;
  search.addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => { tokens.length = 1; pageNo = 0; loadTenants(); }, 300);
  });
  sort.addEventListener("change", () => { tokens.length = 1; pageNo = 0; loadTenants(); });

  page("Overview",
    section("Tenants", "h-tenants",
      h("div", { class: "filters" },
        h("label", { for: "tenant-q" }, "Find a tenant"), search,
        h("label", { for: "tenant-sort" }, "Sort by"), sort),
      tenantsBox),
    h("p", {}, "Live violations and alerts of every tenant: ", liveState),
    h("div", { class: "grid" },
      section("Open violations by kind", "h-violations", countsBox),
      section("Alerts and violations (live, every tenant)", "h-alerts", feed)),
    opsBox,
  );
  // one socket for every tenant's violations and alerts (an admin's scope=all subscription)
  const sub = live({ scope: "all", types: "alert,cost_alert,quota_exceeded,violation_resolved" }, onLive,
    (state) => {
      liveState.textContent = state;
      if (state === "open") lastDelta = 0; // (re)connected: take the projection's counts again
    });
  onLeave(() => sub.close());
  loadTenants();
  loadOperations();
  const timer = setInterval(loadOperations, 5000);
  onLeave(() => clearInterval(timer));
}

// --- tenant --------------------------------------------------------------------------------

const key = (level, entity, resource) => `${level}|${entity}|${resource}`;

function tenantPage(tenant) {
  const tree = h("div", { id: "tree" }, h("p", {}, "Loading…"));
  const violations = h("ul", { id: "violations", "aria-live": "polite" });
  const alerts = h("ol", { id: "tenant-alerts", class: "feed", "aria-live": "polite" },
    h("li", { class: "none" }, "None since this page was opened."));
  const liveState = h("span", { id: "live-state", class: "pill" }, "connecting");
  const chartBox = h("div", { id: "history-chart", class: "chart" });
  const resourceSel = h("select", { id: "history-resource" });
  const stepSel = h("select", { id: "history-step" }, h("option", { value: "hour" }, "hour"), h("option", { value: "day" }, "day"));
  const insight = h("div", { id: "insight" });
  const rows = new Map(); // level|entity|resource -> {row, el}
  const open = new Map(); // violation_id -> li
  let projectsMore = null;

  page(`Tenant ${tenant}`,
    h("p", {}, "Live updates: ", liveState),
    section("Quotas and usage", "h-tree", h("p", { class: "legend" },
      h("span", { class: "key used" }), " used ", h("span", { class: "key reserved" }), " reserved ",
      h("span", { class: "key burst" }), " burst band ", h("span", { class: "key limit" }), " limit"), tree),
    h("div", { class: "grid" },
      section("Open violations", "h-open", violations),
      section("Alerts (live)", "h-tenant-alerts", alerts)),
    section("Usage history", "h-history",
      h("div", { class: "filters" },
        h("label", { for: "history-resource" }, "Resource"), resourceSel,
        h("label", { for: "history-step" }, "Step"), stepSel),
      chartBox),
    section("Exhaustion, cost and recommendations", "h-insight", insight),
  );

  function rowEl(r) {
    const el = h("li", { class: "quota", dataset: { key: key(r.level, r.entity_id, r.resource_type) } },
      bar(r),
      r.open_violations && r.open_violations.length
        ? h("span", { class: "pill bad" }, r.open_violations.join(", ")) : null,
      r.status === "suspended" ? h("span", { class: "pill" }, "suspended") : null);
    return el;
  }

  // A row may be shown in several places (a user under each of its projects): every placement
  // is redrawn when its figures change.
  function update(r) {
    const k = key(r.level, r.entity_id, r.resource_type);
    const known = rows.get(k);
    const entry = known || { row: r, els: [] };
    if (known) {
      entry.row = { ...known.row, ...r };
      entry.els = entry.els.map((el) => {
        const next = rowEl(entry.row);
        el.replaceWith(next);
        return next;
      });
    }
    rows.set(k, entry);
    return entry;
  }

  function put(r) {
    const entry = update(r);
    const el = rowEl(entry.row);
    entry.els.push(el);
    return el;
  }

  function group(title, id, items, data, ...below) {
    return h("details", { open: true, class: "node", id, dataset: data },
      h("summary", {}, title),
      h("ul", { class: "quotas" }, items), ...below);
  }

  const SHOWN = 50; // entities listed per node; the quota editor pages through the rest

  function capped(items, render, what) {
    const out = items.slice(0, SHOWN).map(render);
    if (items.length > SHOWN) out.push(h("li", { class: "more" }, `… and ${items.length - SHOWN} more ${what}`));
    return out;
  }

  async function loadTree() {
    try {
      const util = await enforcement.get("/api/v1/quotas/utilization", { entity_id: tenant });
      const entities = new Map(); // "project:p1" -> rows
      let token = null;
      let pages = 0;
      do {
        const q = await enforcement.get("/api/v1/quotas", { tenant_id: tenant, page_size: 200, page_token: token });
        for (const r of q.quotas) {
          if (r.level === "tenant") continue;
          const k = `${r.level}:${r.entity_id}`;
          if (!entities.has(k)) entities.set(k, []);
          entities.get(k).push(r);
        }
        token = q.next_page_token;
        pages += 1;
      } while (token && pages < 5);
      projectsMore = token;
      // which users hold resources in which project (null from a worker without the read)
      const hier = await enforcement.get("/api/v1/quotas/hierarchy", { tenant_id: tenant }).catch((err) => {
        if (err instanceof ApiError && err.status === 404 && err.code !== "not_found") return null;
        throw err;
      });
      const tenantRows = util.resources.map((r) => put({ ...r, level: "tenant", entity_id: tenant }));
      const ids = (level) => [...entities.keys()].filter((k) => k.startsWith(`${level}:`)).map((k) => k.slice(level.length + 1));
      const projects = new Map((hier ? hier.projects : []).map((p) => [p.project_id, p.users]));
      for (const p of ids("project")) if (!projects.has(p)) projects.set(p, []);
      const assigned = new Set([...projects.values()].flat());
      const unassigned = [...new Set([...(hier ? hier.unassigned_users : []), ...ids("user")])]
        .filter((u) => !assigned.has(u)).sort();
      const entityNode = (level, id, ...more) => {
        const rs = entities.get(`${level}:${id}`) || [];
        return h("li", {},
          group(`${level} ${id}`, null, rs.length ? rs.map(put) : [h("li", { class: "none" }, "No quota of its own.")],
            { level, entity: id }, ...more));
      };
      const usersNode = (users, label) => users.length
        ? h("ul", { class: "children" }, h("li", {},
          h("details", { open: users.length <= 10, class: "node" }, h("summary", {}, `${label} (${users.length})`),
            h("ul", { class: "children" }, capped(users, (u) => entityNode("user", u), "users")))))
        : null;
      const projectList = [...projects.keys()].sort();
      tree.replaceChildren(
        h("ul", { class: "children" }, h("li", {},
          group(`tenant ${tenant}`, "node-tenant", tenantRows.length ? tenantRows : [h("li", {}, "No quota or usage yet.")]),
          h("ul", { class: "children" },
            projectList.length ? h("li", {}, h("details", { open: projectList.length <= 10, class: "node" },
              h("summary", {}, `Projects (${projectList.length})`),
              h("ul", { class: "children" },
                capped(projectList, (p) => entityNode("project", p, usersNode(projects.get(p), "Users")), "projects")))) : null,
            unassigned.length ? h("li", {}, h("details", { open: unassigned.length <= 10, class: "node", id: "node-unassigned" },
              h("summary", {}, `Users in no project (${unassigned.length})`),
              h("ul", { class: "children" }, capped(unassigned, (u) => entityNode("user", u), "users")))) : null))),
        ...(projectsMore ? [h("p", {}, "More quotas than shown; use the quota editor's pages.")] : []),
        ...(hier && hier.truncated ? [h("p", {}, "The tenant has more instances than one read pairs; some users may be missing from their projects.")] : []),
      );
      const resources = [...new Set(util.resources.map((r) => r.resource_type))];
      resourceSel.replaceChildren(...resources.map((r) => h("option", { value: r }, r)));
      if (resources.length) loadHistory();
      else chartBox.replaceChildren(h("p", {}, "No usage yet."));
    } catch (err) {
      tree.replaceChildren(problem(err));
      throw err;
    }
  }

  function violationEl(v) {
    return h("li", { dataset: { violation: v.violation_id, kind: v.kind } },
      h("strong", {}, v.kind), ` ${v.resource_type} at ${v.level} ${v.entity_id}: usage ${fmt(v.usage)} over ${fmt(v.limit)} · `,
      h("time", { datetime: v.detected_at, title: v.detected_at }, `open for ${age(v.detected_at)}`),
      ` · cause event ${v.cause_event_id || "–"}`);
  }

  function showEmpty() {
    if (!open.size) violations.replaceChildren(h("li", { class: "none" }, "None open."));
    else for (const li of [...violations.children]) if (li.classList.contains("none")) li.remove();
  }

  async function loadOverview() {
    try {
      const ov = await projections.get("/api/v1/quotas/overview", { entity_id: tenant });
      for (const v of ov.open_violations.items || []) {
        if (!v.violation_id || open.has(v.violation_id)) continue;
        const li = violationEl(v);
        open.set(v.violation_id, li);
        violations.append(li);
      }
    } catch (err) {
      violations.replaceChildren(problem(err));
    }
    showEmpty();
  }

  async function loadHistory() {
    const resource = resourceSel.value;
    if (!resource) return;
    try {
      const [hist, analytics] = await Promise.all([
        projections.get(`/api/v1/quotas/usage/${encodeURIComponent(tenant)}/history`, { resource_type: resource, step: stepSel.value }),
        projections.get(`/api/v1/quotas/analytics/${encodeURIComponent(tenant)}`),
      ]);
      const series = hist.series.find((s) => s.resource_type === resource);
      const ra = analytics.resources[resource];
      if (!series || !series.points.length) chartBox.replaceChildren(h("p", {}, "No history yet for this resource."));
      else historyChart(chartBox, series, stepSel.value === "hour" && ra ? ra.forecast : null);
      const ex = ra && ra.time_to_exhaustion;
      const cost = await projections.get(`/api/v1/quotas/cost/${encodeURIComponent(tenant)}`);
      const recs = [...(cost.recommendations || []), ...(analytics.recommendations || [])];
      const seen = new Set();
      insight.replaceChildren(
        h("dl", { class: "facts" },
          h("dt", {}, `Time to exhaustion (${resource})`),
          h("dd", { id: "exhaustion" }, ex ? `${ex.at} (earliest ${ex.earliest || "–"})` : "not within the forecast"),
          h("dt", {}, "Cost month to date"), h("dd", { id: "cost-mtd" }, money(cost.month_to_date, cost.currency)),
          h("dt", {}, "Projected this month"), h("dd", {}, money(cost.projected_month, cost.currency)),
          h("dt", {}, "Budget"),
          h("dd", {}, cost.budget && cost.budget.monthly_usd !== null
            ? `${money(cost.budget.monthly_usd, cost.currency)} (${pct(cost.budget.utilization)} used, ${pct(cost.budget.projected_utilization)} projected)`
            : "none set")),
        h("h3", {}, "Recommendations"),
        recs.length
          ? h("ul", { id: "recommendations" }, recs.filter((r) => !seen.has(r.message) && seen.add(r.message))
            .map((r) => h("li", {}, h("strong", {}, r.resource_type), `: ${r.message}`)))
          : h("p", {}, "None."),
      );
    } catch (err) {
      chartBox.replaceChildren(problem(err));
    }
  }
  resourceSel.addEventListener("change", loadHistory);
  stepSel.addEventListener("change", loadHistory);

  function onLive(msg) {
    const d = msg.data;
    if (msg.type === "usage_updated") {
      const k = key(d.level, d.entity_id, d.resource_type);
      const known = rows.get(k);
      if (known) update({ ...d, available: undefined });
      else if (d.level === "tenant") {
        const node = document.querySelector("#node-tenant ul");
        if (node) node.append(put({ ...d, burst_limit: null, open_violations: [] }));
      }
    } else if (msg.type === "quota_exceeded") {
      if (!open.has(d.violation_id)) {
        const li = violationEl(d);
        open.set(d.violation_id, li);
        violations.prepend(li);
      }
      showEmpty();
    } else if (msg.type === "alert" || msg.type === "cost_alert") {
      for (const li of [...alerts.children]) if (li.classList.contains("none")) li.remove();
      alerts.prepend(h("li", { dataset: { kind: d.kind } },
        h("time", { datetime: d.detected_at, title: d.detected_at }, new Date().toLocaleTimeString()),
        ` ${d.severity || ""} ${d.kind} · ${d.resource_type || ""} at ${d.level || ""} ${d.entity_id || ""}: ${d.message || ""}`));
      while (alerts.children.length > 50) alerts.lastChild.remove();
    } else if (msg.type === "violation_resolved") {
      const li = open.get(d.violation_id);
      if (li) li.remove();
      open.delete(d.violation_id);
      showEmpty();
    }
  }

  loadTree().then(loadOverview).catch(() => {});
  const sub = live(tenant, onLive, (state) => {
    liveState.textContent = state;
  });
  onLeave(() => sub.close());
}

// --- quota editor --------------------------------------------------------------------------

function editorPage(tenant) {
  const status = h("div", { id: "command-status", role: "status", "aria-live": "polite" });
  const list = h("div", { id: "quota-list" });
  const tokens = [null];
  let pageNo = 0;

  const field = (id, label, input, help) => h("div", { class: "field" }, h("label", { for: id }, label), input,
    help ? h("small", { id: `${id}-help` }, help) : null);
  const levelSel = h("select", { id: "q-level", name: "level" }, ["tenant", "project", "user"].map((l) => h("option", { value: l }, l)));
  const entity = h("input", { id: "q-entity", name: "entity_id", value: tenant, autocomplete: "off" });
  const resource = h("select", { id: "q-resource", name: "resource_type" }, RESOURCES.map((r) => h("option", { value: r }, r)));
  const limit = h("input", { id: "q-limit", name: "limit", type: "number", min: "0", step: "any", required: true });
  const burst = h("input", { id: "q-burst", name: "burst_limit", type: "number", min: "0", step: "any" });
  const ltype = h("select", { id: "q-type", name: "limit_type" }, h("option", { value: "hard" }, "hard"), h("option", { value: "soft" }, "soft"));
  const action = h("select", { id: "q-action", name: "enforcement_action" }, ["deny", "warn", "throttle", "notify"].map((a) => h("option", { value: a }, a)));
  const windowSel = h("select", { id: "q-window", name: "window" }, h("option", { value: "" }, "none"), ["minute", "hour", "day", "month"].map((w) => h("option", { value: w }, w)));
  levelSel.addEventListener("change", () => {
    if (levelSel.value === "tenant") entity.value = tenant;
    else if (entity.value === tenant) entity.value = "";
  });

  async function run(label, send, target) {
    status.replaceChildren(h("p", { class: "pending" }, `${label}: sending…`));
    try {
      const r = await send();
      const show = (s) => {
        status.dataset.status = s.status;
        status.replaceChildren(h("p", { class: s.status },
          `${label}: ${s.status}`,
          s.status === "rejected" ? ` — ${s.reason || ""}${s.message ? `: ${s.message}` : ""}` : "",
          ` (command ${s.command_id})`));
      };
      show(r.data);
      const final = r.data.status === "pending" ? await follow(r.data.command_id, target, show) : r.data;
      if (final && final.status === "applied") loadList();
      return final;
    } catch (err) {
      status.dataset.status = "error";
      status.replaceChildren(problem(err));
      return null;
    }
  }

  function scope() {
    const level = levelSel.value;
    const entityId = level === "tenant" ? tenant : entity.value.trim();
    return { level, entityId };
  }

  function fields(overrides = {}) {
    const body = { tenant_id: tenant, limit: limit.value, limit_type: ltype.value, enforcement_action: action.value };
    if (burst.value !== "") body.burst_limit = burst.value;
    if (windowSel.value) body.window = windowSel.value;
    return { ...body, ...overrides };
  }

  const quotaPath = (level, entityId, res) =>
    `/api/v1/quotas/${encodeURIComponent(level)}/${encodeURIComponent(entityId)}/${encodeURIComponent(res)}`;

  function setQuota(ev) {
    ev.preventDefault();
    const { level, entityId } = scope();
    if (!entityId) {
      status.replaceChildren(h("p", { class: "error", role: "alert" }, "An entity id is required for a project or user."));
      entity.focus();
      return;
    }
    const res = resource.value;
    run(`Set ${res} of ${level} ${entityId}`,
      () => enforcement.send("PUT", quotaPath(level, entityId, res), { tenant_id: tenant }, fields()),
      { tenant_id: tenant, level, entity_id: entityId, resource_type: res });
  }

  function suspendOrResume(r) {
    const next = r.status === "suspended" ? "active" : "suspended";
    const body = { tenant_id: tenant, limit: r.limit, limit_type: r.limit_type, enforcement_action: r.enforcement_action, status: next };
    for (const k of ["burst_limit", "burst_seconds", "grace_seconds", "window"]) if (r[k] !== null && r[k] !== undefined) body[k] = r[k];
    run(`${next === "suspended" ? "Suspend" : "Resume"} ${r.resource_type} of ${r.level} ${r.entity_id}`,
      () => enforcement.send("PUT", quotaPath(r.level, r.entity_id, r.resource_type), { tenant_id: tenant }, body),
      { tenant_id: tenant, level: r.level, entity_id: r.entity_id, resource_type: r.resource_type });
  }

  function remove(r) {
    if (!confirm(`Delete the ${r.resource_type} quota of ${r.level} ${r.entity_id}?`)) return;
    run(`Delete ${r.resource_type} of ${r.level} ${r.entity_id}`,
      () => enforcement.send("DELETE", quotaPath(r.level, r.entity_id, r.resource_type), { tenant_id: tenant }),
      { tenant_id: tenant, level: r.level, entity_id: r.entity_id, resource_type: r.resource_type });
  }

  function edit(r) {
    levelSel.value = r.level;
    entity.value = r.entity_id;
    resource.value = r.resource_type;
    limit.value = r.limit;
    burst.value = r.burst_limit ?? "";
    ltype.value = r.limit_type;
    action.value = r.enforcement_action;
    windowSel.value = r.window || "";
    limit.focus();
  }

  async function loadList() {
    try {
      const q = await enforcement.get("/api/v1/quotas", { tenant_id: tenant, page_size: PAGE_SIZE, page_token: tokens[pageNo] });
      tokens[pageNo + 1] = q.next_page_token;
      list.replaceChildren(
        h("table", { id: "quotas" },
          h("caption", {}, `${q.total} quotas · page ${pageNo + 1}`),
          h("thead", {}, h("tr", {}, ["Level", "Entity", "Resource", "Limit", "Burst", "Type", "Status", "Used", "Actions"]
            .map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", {}, q.quotas.map((r) => h("tr", { dataset: { key: key(r.level, r.entity_id, r.resource_type) } },
            h("td", {}, r.level), h("th", { scope: "row" }, r.entity_id), h("td", {}, r.resource_type),
            h("td", { class: "num limit" }, fmt(r.limit, 6)), h("td", { class: "num" }, fmt(r.burst_limit, 6)),
            h("td", {}, r.limit_type), h("td", {}, r.status), h("td", { class: "num" }, fmt(r.used)),
            h("td", { class: "actions" },
              h("button", { type: "button", onclick: () => edit(r), "aria-label": `Edit ${r.resource_type} of ${r.level} ${r.entity_id}` }, "Edit"),
              h("button", { type: "button", onclick: () => suspendOrResume(r), "aria-label": `${r.status === "suspended" ? "Resume" : "Suspend"} ${r.resource_type} of ${r.level} ${r.entity_id}` },
                r.status === "suspended" ? "Resume" : "Suspend"),
              h("button", { type: "button", class: "danger", onclick: () => remove(r), "aria-label": `Delete ${r.resource_type} of ${r.level} ${r.entity_id}` }, "Delete")))))),
        h("nav", { class: "pager", "aria-label": "Quota pages" },
          h("button", { type: "button", disabled: pageNo === 0, onclick: () => { pageNo -= 1; loadList(); } }, "Previous"),
          h("button", { type: "button", disabled: !q.next_page_token, onclick: () => { pageNo += 1; loadList(); } }, "Next")),
      );
    } catch (err) {
      list.replaceChildren(problem(err));
    }
  }

  const templateSel = h("select", { id: "t-name", name: "template" });
  const tLevel = h("select", { id: "t-level", name: "level" }, ["tenant", "project", "user"].map((l) => h("option", { value: l }, l)));
  const tEntity = h("input", { id: "t-entity", name: "entity_id", value: tenant, autocomplete: "off" });
  tLevel.addEventListener("change", () => {
    if (tLevel.value === "tenant") tEntity.value = tenant;
    else if (tEntity.value === tenant) tEntity.value = "";
  });
  const templateInfo = h("p", { id: "t-info", class: "help" });
  let templates = [];
  templateSel.addEventListener("change", () => {
    const t = templates.find((x) => x.name === templateSel.value);
    templateInfo.textContent = t ? `${t.description || ""} ${t.quotas.length} quotas, ${money(t.monthly_cost)}/month` : "";
  });
  enforcement.get("/api/v1/quotas/templates").then((r) => {
    templates = r.templates;
    templateSel.replaceChildren(...templates.map((t) => h("option", { value: t.name }, `${t.name}${t.builtin ? "" : " (custom)"}`)));
    templateSel.dispatchEvent(new Event("change"));
  }).catch((err) => templateInfo.replaceChildren(problem(err)));

  function applyTemplate(ev) {
    ev.preventDefault();
    const level = tLevel.value;
    const entityId = level === "tenant" ? tenant : tEntity.value.trim();
    const name = templateSel.value;
    run(`Apply ${name} to ${level} ${entityId}`,
      () => enforcement.send("POST", `/api/v1/quotas/templates/${encodeURIComponent(name)}/apply`, {},
        { tenant_id: tenant, level, entity_id: entityId }),
      { tenant_id: tenant, level, entity_id: entityId });
  }

  page(`Quota editor · ${tenant}`,
    h("div", { class: "grid" },
      h("form", { id: "quota-form", class: "card", onsubmit: setQuota, "aria-labelledby": "h-set" },
        h("h2", { id: "h-set" }, "Set or change a quota"),
        field("q-level", "Level", levelSel), field("q-entity", "Entity id", entity, "the tenant itself, or a project or user id"),
        field("q-resource", "Resource", resource), field("q-limit", "Limit", limit),
        field("q-burst", "Burst limit (optional)", burst), field("q-type", "Limit type", ltype),
        field("q-action", "Enforcement", action), field("q-window", "Window (api_requests, cost)", windowSel),
        h("button", { type: "submit" }, "Set quota")),
      h("form", { id: "template-form", class: "card", onsubmit: applyTemplate, "aria-labelledby": "h-template" },
        h("h2", { id: "h-template" }, "Apply a template"),
        field("t-name", "Template", templateSel), templateInfo,
        field("t-level", "Level", tLevel), field("t-entity", "Entity id", tEntity),
        h("button", { type: "submit" }, "Apply template"))),
    section("Command status", "h-status", status),
    section("Quotas", "h-quotas", list),
  );
  loadList();
}

// --- audit ---------------------------------------------------------------------------------

const AUDIT_TYPES = ["audit.command_applied", "audit.correction", "audit.reservation_granted",
  "audit.reservation_released", "audit.reservation_expired"];

// The audit topic of a tenant (GET /api/v1/audit: newest first, filtered, paged) and the replay
// report as of a moment (GET /api/v1/replay/report, fetched with the token, opened as a blob).
function auditPage(tenant) {
  const actor = h("input", { id: "audit-actor", name: "actor", autocomplete: "off", spellcheck: "false",
    placeholder: "token:ci, jwt:alice, inventory:nova" });
  const type = h("select", { id: "audit-type", name: "type" },
    h("option", { value: "" }, "every type"), AUDIT_TYPES.map((t) => h("option", { value: t }, t)));
  const list = h("div", { id: "audit-list" }, h("p", {}, "Loading…"));
  const tokens = [null];
  let pageNo = 0;
  let filters = {};
  let loads = 0; // a slow answer to an older request is not shown over a newer one
  let left = false;
  onLeave(() => { left = true; });
  const shown = (v) => (v === null || v === undefined ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v));
  // what a record changed: the fields whose values differ (every set field of a new one), but
  // those the subject already names
  const SAME = new Set(["tenant_id", "level", "entity_id", "resource_type", "set_at"]);
  const change = (before, after) => {
    const isObj = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
    if (!isObj(before) && !isObj(after)) return `${shown(before)} → ${shown(after)}`;
    if (!isObj(after)) return "removed";
    const b = isObj(before) ? before : {};
    const parts = [];
    for (const k of Object.keys(after)) {
      if (SAME.has(k) || k.endsWith("event_id") || after[k] === null || JSON.stringify(b[k]) === JSON.stringify(after[k])) continue;
      parts.push(isObj(before) ? `${k}: ${shown(b[k])} → ${shown(after[k])}` : `${k}: ${shown(after[k])}`);
    }
    return parts.join(", ") || "no change";
  };
  const clip = (text) => (text.length > 120 ? `${text.slice(0, 119)}…` : text);

  async function load() {
    const seq = ++loads;
    try {
      const r = await projections.get("/api/v1/audit",
        { tenant_id: tenant, ...filters, page_size: PAGE_SIZE, page_token: tokens[pageNo] });
      if (seq !== loads) return;
      tokens[pageNo + 1] = r.next_page_token;
      const what = [filters.actor && `actor ${filters.actor}`, filters.type].filter(Boolean).join(", ");
      list.replaceChildren(
        h("table", { id: "audit" },
          h("caption", {}, `${r.records.length} records${what ? ` (${what})` : ""} · page ${pageNo + 1} · newest first`),
          h("thead", {}, h("tr", {}, ["Time", "Type", "Actor", "Action", "Subject", "Change", "Cause"]
            .map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", {}, r.records.map((a) => ({ ...a, details: a.details || {} })).map((a) => h("tr", { dataset: { offset: String(a.offset), type: a.type, actor: a.actor ?? "" } },
            h("td", {}, h("time", { datetime: a.time }, String(a.time).replace("T", " ").replace(/\.\d+Z$/, "Z"))),
            h("td", { class: "type" }, a.type),
            h("th", { scope: "row", class: "actor" }, a.actor ?? "–"),
            h("td", {}, a.details.action ?? "–"),
            h("td", {}, a.details.subject ?? "–"),
            h("td", { class: "change", title: change(a.details.before, a.details.after) },
              clip(change(a.details.before, a.details.after))),
            h("td", {}, a.cause ? `${a.cause.type ?? ""} ${a.cause.id ?? ""}`.trim() : "–"))))),
        r.records.length ? null : h("p", { id: "audit-empty" }, "No audit records match."),
        h("nav", { class: "pager", "aria-label": "Audit pages" },
          h("button", { type: "button", disabled: pageNo === 0, onclick: () => { pageNo -= 1; load(); } }, "Previous"),
          h("button", { type: "button", disabled: !r.next_page_token, onclick: () => { pageNo += 1; load(); } }, "Next")),
      );
    } catch (err) {
      if (seq === loads) list.replaceChildren(problem(err));
    }
  }

  function applyFilters(ev) {
    ev.preventDefault();
    filters = { actor: actor.value.trim(), type: type.value };
    tokens.splice(1);
    pageNo = 0;
    load();
  }

  // the report as of a moment; the input is in the browser's local time, sent as UTC
  const local = new Date(Date.now() - new Date().getTimezoneOffset() * 60000);
  const asOf = h("input", { id: "as-of", type: "datetime-local", step: "1", name: "as_of", required: true,
    value: local.toISOString().slice(0, 19) });
  const reportStatus = h("p", { id: "report-status", role: "status", "aria-live": "polite" });
  const reportLinks = h("p", { id: "report-links" });
  let blobUrl = null;
  const forget = () => {
    if (blobUrl) URL.revokeObjectURL(blobUrl);
    blobUrl = null;
  };
  onLeave(forget);
  async function makeReport(ev) {
    ev.preventDefault();
    const at = new Date(asOf.value);
    if (!asOf.value || Number.isNaN(at.getTime())) {
      reportStatus.replaceChildren(problem("Pick a date and time."));
      return;
    }
    const until = at.toISOString().replace(/\.\d{3}Z$/, "Z");
    forget();
    reportLinks.replaceChildren();
    reportStatus.textContent = `Replaying the log up to ${until}…`;
    try {
      const blob = await projections.blob("/api/v1/replay/report", { tenant_id: tenant, until, format: "html" });
      if (left) return;
      forget();
      blobUrl = URL.createObjectURL(blob);
      reportStatus.textContent = `The report as of ${until} is ready.`;
      reportLinks.replaceChildren(
        h("a", { id: "report-open", href: blobUrl, target: "_blank", rel: "noopener" }, `Open the report as of ${until}`),
        " · ",
        h("a", { id: "report-download", href: blobUrl, download: `replay-${tenant}-${until.replace(/:/g, "")}.html` }, "Download it"));
    } catch (err) {
      reportStatus.replaceChildren(problem(err));
    }
  }

  page(`Audit · ${tenant}`,
    section("Audit records", "h-audit",
      h("form", { id: "audit-filter", class: "filters", onsubmit: applyFilters, "aria-label": "Filter the audit records" },
        h("div", { class: "field" }, h("label", { for: "audit-actor" }, "Actor (exact)"), actor),
        h("div", { class: "field" }, h("label", { for: "audit-type" }, "Type"), type),
        h("button", { type: "submit" }, "Filter")),
      list),
    section("Replay report as of a point in time", "h-replay",
      h("p", {}, "The replay report rebuilds the tenant's quota state as it stood at a moment from the " +
        "log, citing the records behind each figure (docs/replay.md)."),
      h("form", { id: "report-form", onsubmit: makeReport, "aria-label": "Replay report" },
        h("div", { class: "field" }, h("label", { for: "as-of" }, "As of (your local time)"), asOf),
        h("button", { type: "submit" }, "Make the report")),
      reportStatus, reportLinks,
      h("p", { id: "what-if-note" }, "What would other limits have done? A what-if report replays a period " +
        "as it happened and with proposed quota changes, side by side: ",
        h("code", {}, `novaquota replay --what-if FILE --from T1 --until T2 --tenant ${tenant} --format html --out what-if.html`),
        " (docs/replay.md, What-if). The HTML file is self-contained: open it from disk or any static web server.")),
  );
  load();
}

// --- routing -------------------------------------------------------------------------------

async function route() {
  leave();
  if (!session.token) return loginPage();
  if (!session.identity) {
    try {
      session.identity = await identify(session.token);
    } catch (err) {
      session.token = null;
      return loginPage(err.status === 401 ? "The saved token is no longer valid." : errorText(err));
    }
  }
  const id = session.identity;
  const [, name, arg] = location.hash.match(/^#\/([a-z]+)(?:\/([^/?]+))?/) || [];
  const tenant = arg ? decodeURIComponent(arg) : id.tenant;
  chrome();
  if (name === "tenant" && tenant) return tenantPage(tenant);
  if (name === "editor" && tenant) {
    if (!id.canWrite) return page("Quota editor", h("p", { class: "error", role: "alert" }, "This token may read, not change quotas."));
    return editorPage(tenant);
  }
  if (name === "audit" && tenant) return auditPage(tenant);
  if (!id.tenant) {
    if (name !== "overview") history.replaceState(null, "", "#/overview");
    chrome();
    return overviewPage();
  }
  location.hash = `#/tenant/${encodeURIComponent(id.tenant)}`;
}

window.addEventListener("hashchange", route);
loadConfig()
  .then(() => {
    document.getElementById("api-url").textContent = apiUrl();
    return route();
  })
  .catch((err) => page("Dashboard unavailable", problem(err)));
