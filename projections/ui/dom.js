// A tiny DOM builder: text always goes in as text (never parsed as HTML).

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style") Object.assign(el.style, v); // CSSOM: allowed by the page's CSP
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function fmt(n, digits = 2) {
  if (n === null || n === undefined || n === "") return "–";
  const x = Number(n);
  if (!Number.isFinite(x)) return String(n);
  return x.toLocaleString("en-US", { maximumFractionDigits: digits });
}

export function pct(n) {
  return n === null || n === undefined ? "–" : `${fmt(n, 1)} %`;
}

export function money(n, currency = "USD") {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString("en-US", { style: "currency", currency });
}

export function age(iso) {
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) return "–";
  let s = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (s < 90) return `${s} s`;
  s = Math.round(s / 60);
  if (s < 90) return `${s} min`;
  s = Math.round(s / 60);
  if (s < 48) return `${s} h`;
  return `${Math.round(s / 24)} d`;
}

// A utilization bar: the limit, the burst band (limit..burst_limit), reserved and used, on one
// scale; the figures are also written out (the bar is not the only carrier of them).
export function bar(row) {
  const used = Number(row.used || 0);
  const reserved = Number(row.reserved || 0);
  const limit = row.limit === null || row.limit === undefined ? null : Number(row.limit);
  const burst = row.burst_limit === null || row.burst_limit === undefined ? null : Number(row.burst_limit);
  const top = Math.max(used + reserved, limit ?? 0, burst ?? 0, 1e-9) * 1.05;
  const p = (x) => `${Math.min(100, (x / top) * 100).toFixed(2)}%`;
  const over = limit !== null && used > limit;
  const label =
    `${row.resource_type}: used ${fmt(used)}` +
    (reserved ? `, reserved ${fmt(reserved)}` : "") +
    (limit !== null ? ` of limit ${fmt(limit)}` : ", no quota") +
    (burst !== null && limit !== null && burst > limit ? `, burst to ${fmt(burst)}` : "") +
    (row.utilization !== null && row.utilization !== undefined ? ` (${fmt(row.utilization, 1)} %)` : "");
  const track = h(
    "div",
    { class: "bar", role: "img", "aria-label": label },
    burst !== null && limit !== null && burst > limit
      ? h("span", { class: "bar-burst", style: { left: p(limit), width: `calc(${p(burst)} - ${p(limit)})` } })
      : null,
    h("span", { class: over ? "bar-used over" : "bar-used", style: { width: p(used) } }),
    reserved ? h("span", { class: "bar-reserved", style: { left: p(used), width: p(reserved) } }) : null,
    limit !== null ? h("span", { class: "bar-limit", style: { left: p(limit) } }) : null,
  );
  return h(
    "div",
    {
      class: "meter",
      dataset: {
        resource: row.resource_type,
        used: String(used),
        limit: limit === null ? "" : String(limit),
        utilization: row.utilization ?? "",
      },
    },
    track,
    h("span", { class: "meter-text" }, label),
  );
}
