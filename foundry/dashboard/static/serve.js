// A running foundry serve's /cache/stats, fetched by the dashboard's server (this page
// talks to its own origin only) and refreshed every few seconds while shown.
import { api, bytes, card, el, errorBox, int, pct, seconds, show, table, tokens } from "./util.js";

const rate = (v) => (v === null || v === undefined ? "—" : pct(100 * v));

// Key/value rows for the parts whose fields differ by engine (mlx, llama.cpp).
function pairs(object, testid) {
  const rows = Object.entries(object || {}).map(([key, value]) => ({
    key,
    value: value !== null && typeof value === "object" ? JSON.stringify(value)
      : /bytes/.test(key) && typeof value === "number" ? bytes(value) : String(value),
  }));
  return table([{ label: "field", value: (r) => r.key }, { label: "value", cls: "pre", value: (r) => r.value }], rows, { testid });
}

export async function serveView(main, cleanup) {
  let data;
  try {
    data = await api("/api/serve");
  } catch (error) {
    const body = error.body || {};
    show(main, el("h1", {}, "foundry serve"),
      el("div", { class: "error", role: "alert", "data-testid": "serve-error" }, el("div", {}, body.error || error.message),
        body.hint ? el("div", { class: "hint" }, body.hint) : null));
    schedule(main, cleanup);
    return;
  }
  const s = data.stats;
  const since = s.since_start || {};
  const l1 = s.l1 || {};
  show(main,
    el("h1", {}, "foundry serve ", el("span", { class: "muted" }, `${s.model || ""} at ${data.url}`)),
    el("div", { class: "cards", "data-testid": "serve-cards" },
      card("Requests", int(since.requests), { "data-serve": "requests" }),
      card("Hit rate (requests)", rate(since.hit_rate), { "data-serve": "hit_rate" }),
      card("Hit rate (tokens)", rate(since.token_hit_rate), { "data-serve": "token_hit_rate" }),
      card("Prefill saved", seconds((since.prefill_saved_ms || 0) / 1000)),
      card("KV in memory", bytes((s.memory || {}).kv_bytes_in_memory), { "data-serve": "kv_bytes" }),
      card("Up for", seconds(since.uptime_s))),
    el("h2", {}, "Cache hits since start"),
    table([
      { label: "In memory", num: true, value: (r) => int(r.l1_hits) },
      { label: "From disk", num: true, value: (r) => int(r.disk_hits) },
      { label: "Replayed", num: true, value: (r) => int(r.l2_hits) },
      { label: "Misses", num: true, value: (r) => int(r.misses) },
      { label: "Tokens reused", num: true, value: (r) => tokens((r.tokens || {}).reused) },
      { label: "Prefilled", num: true, value: (r) => tokens((r.tokens || {}).prefilled) },
      { label: "Errors", value: (r) => JSON.stringify(r.errors || {}) },
    ], [since], { testid: "serve-levels" }),
    el("h2", {}, `In-memory KV caches (${(l1.entries || []).length} of ${l1.max_entries ?? "?"})`),
    table([
      { label: "#", num: true, value: (e) => String(e.index) },
      { label: "Tokens", num: true, value: (e) => int(e.tokens) },
      { label: "Size", num: true, value: (e) => bytes(e.bytes) },
      { label: "Hits", num: true, value: (e) => int(e.hits) },
      { label: "Age", num: true, value: (e) => seconds(e.age_s) },
      { label: "Idle", num: true, value: (e) => seconds(e.idle_s) },
      { label: "", value: (e) => (e.live ? "in the context" : "") },
    ], (l1.entries || []).map((e, index) => ({ ...e, index: index + 1 })), { testid: "serve-entries" }),
    el("div", { class: "grid2" },
      el("div", {}, el("h2", {}, "Memory"), pairs(s.memory, "serve-memory")),
      el("div", {}, el("h2", {}, "Queue"), pairs(s.queue, "serve-queue"))),
    el("div", { class: "grid2" },
      el("div", {}, el("h2", {}, "Response cache"), pairs(s.l2, "serve-l2")),
      el("div", {}, el("h2", {}, "Prefix store on disk"), pairs(s.disk, "serve-disk"))),
  );
  schedule(main, cleanup);
}

function schedule(main, cleanup) {
  const timer = setTimeout(() => serveView(main, cleanup).catch((e) => main.replaceChildren(errorBox(e))), 5000);
  cleanup.push(() => clearTimeout(timer));
}
