// Shared by the views: building DOM from data (always as text, never as markup), number
// formats that match `foundry costs`, and fetching the dashboard's own JSON API.

// el("td", {class: "num"}, "12", child): attributes set one by one, strings added as text
// nodes. Nothing here parses data as markup: the ledger holds text a model wrote.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// As foundry.formatting.money: four decimals below $10, cents from $10 up; null is unknown.
export function money(value) {
  if (value === null || value === undefined) return "n/a";
  const sign = value < 0 ? "-" : "";
  const amount = Math.abs(value);
  if (amount >= 10) {
    return `${sign}$${amount.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`;
  }
  return `${sign}$${amount.toFixed(4)}`;
}

export function pct(value) {
  return value === null || value === undefined ? "—" : `${Number(value).toFixed(1)}%`;
}

export function int(value) {
  return value === null || value === undefined ? "—" : Number(value).toLocaleString("en-US");
}

export function tokens(value) {
  if (value === null || value === undefined) return "—";
  const n = Number(value);
  if (Math.abs(n) >= 1e9) return `${(n / 1e9).toFixed(1)}B`;
  if (Math.abs(n) >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (Math.abs(n) >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  return int(n);
}

export function seconds(value) {
  if (value === null || value === undefined) return "—";
  if (value >= 3600) return `${(value / 3600).toFixed(1)} h`;
  if (value >= 60) return `${(value / 60).toFixed(1)} min`;
  return `${Number(value).toFixed(1)} s`;
}

export function bytes(value) {
  if (value === null || value === undefined) return "—";
  if (value >= 1e9) return `${(value / 1e9).toFixed(2)} GB`;
  if (value >= 1e6) return `${(value / 1e6).toFixed(1)} MB`;
  if (value >= 1e3) return `${(value / 1e3).toFixed(1)} kB`;
  return `${value} B`;
}

// Timestamps are UTC on the ledger; shown in the browser's zone, to the second.
export function when(stamp) {
  if (!stamp) return "—";
  const date = new Date(stamp);
  if (Number.isNaN(date.getTime())) return String(stamp);
  const p = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${p(date.getMonth() + 1)}-${p(date.getDate())} ${p(date.getHours())}:${p(date.getMinutes())}:${p(date.getSeconds())}`;
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

export async function api(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

export function errorBox(error) {
  return el("div", { class: "error", role: "alert" },
    el("div", {}, error.message || String(error)),
    error.body && error.body.hint ? el("div", { class: "hint" }, error.body.hint) : null);
}

export function badge(status) {
  return el("span", { class: `badge ${String(status).replace(/[^a-z_]/g, "")}` }, status);
}

export function card(label, value, attrs = {}) {
  return el("div", { class: "card" }, el("div", { class: "label" }, label),
    el("div", { class: "value", ...attrs }, value));
}

// A table from column specs: {label, value(row) -> string|Node, num?: true}.
export function table(columns, rows, { total, rowClass, testid } = {}) {
  const head = el("tr", {}, columns.map((c) => el("th", { class: c.num ? "num" : null }, c.label)));
  const line = (row, cls) => el("tr", { class: cls },
    columns.map((c) => el("td", { class: c.num ? "num" : c.cls }, c.value(row))));
  const body = rows.map((row) => line(row, rowClass ? rowClass(row) : null));
  if (total) body.push(line(total, "total"));
  return el("table", { "data-testid": testid }, el("thead", {}, head), el("tbody", {}, body));
}

export function hashParams() {
  const query = location.hash.split("?")[1] || "";
  return new URLSearchParams(query);
}

// Replace a container's content; null entries (a section with nothing to say) are left out.
export function show(container, ...nodes) {
  container.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false));
}
