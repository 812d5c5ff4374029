// The costs view: the numbers of `foundry costs` (the same report, from /api/costs), as
// charts and tables. Nothing is computed here but the placement of the report's figures.
import { barChart, hbarChart, lineChart } from "./charts.js";
import { show, api, card, el, errorBox, hashParams, int, money, pct, seconds, table, tokens } from "./util.js";

const RANGES = [["6d", "7 days"], ["29d", "30 days"], ["89d", "90 days"], ["364d", "1 year"], ["", "everything"]];

// Every period key from the first to the last, so a day with nothing is a gap in the
// chart rather than a missing column.
function periodKeys(by, keys) {
  if (!keys.length || !["day", "week", "month"].includes(by)) return keys;
  const out = [];
  if (by === "month") {
    let [y, m] = keys[0].split("-").map(Number);
    const last = keys[keys.length - 1];
    for (let guard = 0; guard < 1200; guard++) {
      const key = `${y}-${String(m).padStart(2, "0")}`;
      out.push(key);
      if (key >= last) break;
      m += 1; if (m > 12) { m = 1; y += 1; }
    }
    return out;
  }
  const step = by === "week" ? 7 : 1;
  const day = new Date(`${keys[0]}T00:00:00Z`);
  const last = keys[keys.length - 1];
  for (let guard = 0; guard < 5000; guard++) {
    const key = day.toISOString().slice(0, 10);
    out.push(key);
    if (key >= last) break;
    day.setUTCDate(day.getUTCDate() + step);
  }
  return out;
}

// The report's period rows as chart series: spend and saved of the API rows (local rows
// cost nothing in money), and the hit rate of API and local rows, each as reported.
export function chartSeries(report) {
  const keys = periodKeys(report.by, [...new Set(report.rows.map((r) => r.key))]);
  const pick = (kind, field) => keys.map((key) => {
    const row = report.rows.find((r) => r.key === key && r.kind === kind);
    return row ? row[field] : null;
  });
  return {
    labels: keys,
    spend: pick("api", "cost_usd"),
    saved: pick("api", "saved_usd"),
    hitApi: pick("api", "hit_rate_pct"),
    hitLocal: pick("local", "hit_rate_pct"),
  };
}

export function drawCharts(report, spendBox, hitBox) {
  const s = chartSeries(report);
  const dollars = (v) => (v >= 100 ? `$${Math.round(v)}` : `$${v.toFixed(v >= 10 ? 0 : 2)}`);
  barChart(spendBox, {
    labels: s.labels, format: dollars, title: "Spend and saved per period",
    series: [{ name: "spend", cls: "bar-spend", values: s.spend }, { name: "saved", cls: "bar-saved", values: s.saved }],
  });
  lineChart(hitBox, {
    labels: s.labels, format: (v) => `${Math.round(v)}%`, max: 100, title: "Cache hit rate",
    series: [
      { name: "API", cls: "line-api", dot: "dot-api", values: s.hitApi },
      { name: "local", cls: "line-local", dot: "dot-local", values: s.hitLocal },
    ],
  });
}

export function chartPanels(title) {
  const spend = el("div", { class: "chart", "data-testid": "chart-spend" });
  const hit = el("div", { class: "chart", "data-testid": "chart-hit" });
  const legend1 = el("div", { class: "legend" }, el("span", {}, el("span", { class: "sw spend" }), "spend"),
    el("span", {}, el("span", { class: "sw saved" }), "saved by caching"));
  const legend2 = el("div", { class: "legend" }, el("span", {}, el("span", { class: "sw spend" }), "API"),
    el("span", {}, el("span", { class: "sw local" }), "local models"));
  const node = el("div", { class: "grid2" },
    el("div", { class: "panel" }, el("h2", {}, `${title}: spend and saved`), legend1, spend),
    el("div", { class: "panel" }, el("h2", {}, `${title}: cache hit rate`), legend2, hit));
  return { node, spend, hit };
}

// The headline figures, from the report's totals row.
export function kpis(totals) {
  const star = totals.unpriced_requests ? "*" : "";
  return el("div", { class: "cards", "data-testid": "kpis" },
    card("Spend", money(totals.cost_usd) + star, { "data-kpi": "cost" }),
    card("Saved by caching", money(totals.saved_usd), { "data-kpi": "saved" }),
    card("Cache hit rate", pct(totals.hit_rate_pct), { "data-kpi": "hit" }),
    card("Requests", int(totals.requests), { "data-kpi": "requests" }),
    card("Local prefill saved", seconds(totals.prefill_saved_s), { "data-kpi": "prefill" }));
}

// Columns as `foundry costs` has them; a local row's cost is "local" and its saving time.
export function costColumns(keyLabel) {
  const local = (r) => r.kind === "local";
  return [
    { label: keyLabel, value: (r) => r.label },
    { label: "Reqs", num: true, value: (r) => int(r.requests) },
    { label: "Input", num: true, value: (r) => tokens(r.input_tokens) },
    { label: "Output", num: true, value: (r) => tokens(r.output_tokens) },
    { label: "Write 5m", num: true, value: (r) => tokens(r.cache_write_5m_tokens) },
    { label: "Write 1h", num: true, value: (r) => tokens(r.cache_write_1h_tokens) },
    { label: "Read", num: true, value: (r) => tokens(r.cache_read_tokens) },
    { label: "Hit", num: true, value: (r) => pct(r.hit_rate_pct) },
    { label: "Cost", num: true, value: (r) => (local(r) ? "local" : money(r.cost_usd) + (r.unpriced_requests ? "*" : "")) },
    { label: "Uncached", num: true, value: (r) => (local(r) ? "—" : money(r.uncached_cost_usd)) },
    { label: "Saved", num: true, value: (r) => (local(r) ? seconds(r.prefill_saved_s) : money(r.saved_usd)) },
    { label: "Saved %", num: true, value: (r) => pct(r.saved_pct) },
  ];
}

// Spend and saved per model or backend: the API rows only (a local model costs nothing in
// money; its saving is time, in the tables).
function drawShares(container, rows, title) {
  const priced = rows.filter((r) => r.kind !== "local" && (r.cost_usd > 0 || r.saved_usd > 0));
  hbarChart(container, {
    labels: priced.map((r) => r.label), title, format: money,
    series: [
      { name: "spend", cls: "bar-spend", values: priced.map((r) => r.cost_usd) },
      { name: "saved", cls: "bar-saved", values: priced.map((r) => r.saved_usd) },
    ],
  });
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  return q.toString();
}

export async function costsView(main) {
  const params = hashParams();
  const since = params.has("since") ? params.get("since") : "29d";
  const by = params.get("by") || "day";
  const backend = params.get("backend") || "";
  const filters = { since, backend };
  const [report, models] = await Promise.all([
    api(`/api/costs?${query({ ...filters, by })}`),
    api(`/api/costs?${query({ ...filters, by: "model" })}`),
  ]);
  const go = (changes) => { location.hash = `#/costs?${query({ since, by, backend, ...changes })}`; };
  const rangeSel = el("select", { "aria-label": "range" }, RANGES.map(([v, label]) => el("option", { value: v, selected: v === since }, label)));
  rangeSel.addEventListener("change", () => go({ since: rangeSel.value }));
  const bySel = el("select", { "aria-label": "by" }, ["day", "week", "month"].map((v) => el("option", { value: v, selected: v === by }, v)));
  bySel.addEventListener("change", () => go({ by: bySel.value }));
  // The backend table is one report per backend: drawn after the rest, not holding it up.
  const backendSel = el("select", { "aria-label": "backend" }, el("option", { value: "" }, "all"),
    backend ? el("option", { value: backend, selected: true }, backend) : null);
  const backendBox = el("div", {}, el("p", { class: "muted" }, "Loading…"));
  const modelChart = el("div", { class: "chart", "data-testid": "chart-models" });
  const backendChart = el("div", { class: "chart", "data-testid": "chart-backends" });
  backendSel.addEventListener("change", () => go({ backend: backendSel.value }));
  const charts = chartPanels(`Per ${by}`);
  show(main,
    el("h1", {}, "Costs"),
    el("div", { class: "filters" }, el("label", {}, "Range", rangeSel), el("label", {}, "Group by", bySel),
      el("label", {}, "Backend", backendSel), el("span", { class: "muted" }, `days in ${report.time_zone}; the same report as foundry costs`)),
    ...report.warnings.map((w) => el("div", { class: "warning" }, w)),
    report.message ? el("p", { class: "muted", "data-testid": "costs-message" }, report.message) : null,
    kpis(report.totals),
    charts.node,
    el("div", { class: "grid2" },
      el("div", { class: "panel" }, el("h2", {}, "Spend and saved by model"), modelChart),
      el("div", { class: "panel" }, el("h2", {}, "Spend and saved by backend"), backendChart)),
    el("h2", {}, `By ${by}`),
    table(costColumns(by[0].toUpperCase() + by.slice(1)), report.rows, { total: report.totals, testid: "costs-periods" }),
    el("h2", {}, "By model"),
    table(costColumns("Model"), models.rows, { total: models.totals, testid: "costs-models" }),
    el("h2", {}, "By backend"),
    backendBox,
    report.totals.unpriced_requests
      ? el("p", { class: "muted" }, `* ${int(report.totals.unpriced_requests)} ${report.totals.unpriced_requests === 1 ? "request has" : "requests have"} no price: their cost is unknown and left out of the totals.`)
      : null,
  );
  drawCharts(report, charts.spend, charts.hit);
  drawShares(modelChart, models.rows, "Spend and saved by model");
  try {
    const backends = await api(`/api/costs/backends?${query({ since })}`);
    backendBox.replaceChildren(table(costColumns("Backend"),
      backends.rows.map((r) => ({ ...r, kind: r.local ? "local" : "api" })), { testid: "costs-backends" }));
    drawShares(backendChart, backends.rows.map((r) => ({ ...r, kind: r.local ? "local" : "api" })), "Spend and saved by backend");
    for (const r of backends.rows) {
      if (r.key !== backend) backendSel.append(el("option", { value: r.key }, r.key));
    }
  } catch (error) {
    backendBox.replaceChildren(errorBox(error));
  }
}

export { query, errorBox };
