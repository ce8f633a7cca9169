// Usage history with the quota line and the forecast band, drawn with the vendored uPlot.
import uPlot from "./vendor/uplot-1.6.32/uPlot.esm.js";

const secs = (iso) => Date.parse(iso) / 1000;

// history: the series of one resource (points: time, used, peak, limit);
// forecast: analytics' forecast of it ({points: time, mean, lower, upper}) or null.
export function historyChart(el, series, forecast) {
  el.textContent = "";
  const rows = new Map();
  const row = (t) => {
    if (!rows.has(t)) rows.set(t, { used: null, limit: null, mean: null, lower: null, upper: null });
    return rows.get(t);
  };
  for (const p of series.points) {
    const r = row(secs(p.time));
    r.used = p.used;
    r.limit = p.limit;
  }
  for (const p of (forecast && forecast.points) || []) {
    const r = row(secs(p.time));
    r.mean = p.mean;
    r.lower = p.lower;
    r.upper = p.upper;
  }
  const times = [...rows.keys()].sort((a, b) => a - b);
  // the quota line continues over the forecast
  let lastLimit = null;
  for (const t of times) {
    const r = rows.get(t);
    if (r.limit !== null && r.limit !== undefined) lastLimit = r.limit;
    else if (r.mean !== null) r.limit = lastLimit;
  }
  const col = (k) => times.map((t) => rows.get(t)[k]);
  const data = [times, col("used"), col("limit"), col("mean"), col("lower"), col("upper")];
  const fit = () => Math.max(260, Math.min(el.clientWidth || 640, 960));
  const width = fit();
  const opts = {
    width,
    height: 260,
    title: `${series.resource_type} (${series.unit})`,
    series: [
      {},
      { label: "used", stroke: "#1f5fbf", width: 2 },
      { label: "quota", stroke: "#b3261e", width: 2, dash: [6, 4] },
      { label: "forecast", stroke: "#6b4ea8", width: 1.5, dash: [2, 3] },
      { label: "forecast low", stroke: "#9d8cc7", width: 1 },
      { label: "forecast high", stroke: "#9d8cc7", width: 1 },
    ],
    bands: [{ series: [5, 4], fill: "rgba(107, 78, 168, 0.18)" }],
    axes: [{}, { size: 60 }],
    legend: { live: false },
  };
  const chart = new uPlot(opts, data, el);
  // follow the page's width (a phone turned, a window resized)
  new ResizeObserver(() => {
    const w = fit();
    if (Math.abs(w - chart.width) > 4) chart.setSize({ width: w, height: opts.height });
  }).observe(el);
  el.setAttribute("role", "img");
  const last = series.points.length ? series.points[series.points.length - 1] : null;
  el.setAttribute(
    "aria-label",
    `Usage history of ${series.resource_type}: ${series.points.length} points` +
      (last ? `, last ${last.used ?? "n/a"} of quota ${last.limit ?? "none"}` : "") +
      (forecast ? `, forecast ${forecast.points.length} points with a ${Math.round(forecast.level * 100)}% band` : ""),
  );
  return chart;
}
