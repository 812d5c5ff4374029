// Builds: the paged list, a build's page (live while it runs, its summary once finished)
// and the overview's tables. Every ledger string goes in as text (see util.el).
import { show, api, badge, card, el, errorBox, hashParams, int, money, pct, seconds, table, tokens, when } from "./util.js";

const spend = (b) => money(b.cost_usd) + (b.unpriced_requests ? "*" : "");

export function buildsTable(rows, testid) {
  return table([
    { label: "Started", value: (b) => when(b.started_at) },
    { label: "Name", value: (b) => el("a", { href: `#/build/${encodeURIComponent(b.id)}` }, b.name) },
    { label: "Status", value: (b) => badge(b.status) },
    { label: "Model", value: (b) => `${b.backend} · ${b.model}` },
    { label: "Reqs", num: true, value: (b) => int(b.requests) },
    { label: "Spend", num: true, value: spend },
    { label: "Task", cls: "task", value: (b) => b.task || "" },
  ], rows, { testid, rowClass: () => "build-row" });
}

export function runningTable(rows) {
  if (!rows.length) return el("p", { class: "muted", "data-testid": "running-none" }, "No build is running.");
  return table([
    { label: "Name", value: (b) => el("a", { href: `#/build/${encodeURIComponent(b.id)}` }, b.name) },
    { label: "Phase", value: (b) => (b.progress && b.progress.phase) || "—" },
    { label: "Turn", num: true, value: (b) => int(b.progress && b.progress.turn) },
    { label: "Last tool", cls: "task", value: (b) => lastTool(b.progress) },
    { label: "Reqs", num: true, value: (b) => int(b.requests) },
    { label: "Spend", num: true, value: spend },
    { label: "Updated", value: (b) => when(b.progress && b.progress.updated_at) },
  ], rows, { testid: "running" });
}

function lastTool(progress) {
  if (!progress || !progress.last_tool) return "—";
  const detail = progress.last_tool_detail ? ` ${progress.last_tool_detail}` : "";
  return `${progress.last_tool}${detail}${progress.last_tool_error ? " (failed)" : ""}`;
}

export async function buildsView(main) {
  const params = hashParams();
  const page = Number(params.get("page") || 1);
  const status = params.get("status") || "";
  const name = params.get("name") || "";
  const q = new URLSearchParams({ page: String(page) });
  if (status) q.set("status", status);
  if (name) q.set("name", name);
  const data = await api(`/api/builds?${q}`);
  const go = (changes) => {
    const next = new URLSearchParams({ page: "1", status, name, ...changes });
    for (const [k, v] of [...next]) if (!v) next.delete(k);
    location.hash = `#/builds?${next}`;
  };
  const statusSel = el("select", { "aria-label": "status" }, el("option", { value: "" }, "any"),
    data.statuses.map((s) => el("option", { value: s, selected: s === status }, s)));
  const nameInput = el("input", { type: "search", "aria-label": "name", placeholder: "name starts with…", value: name });
  const form = el("form", { class: "filters" }, el("label", {}, "Status", statusSel), el("label", {}, "Name", nameInput),
    el("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (event) => { event.preventDefault(); go({ status: statusSel.value, name: nameInput.value.trim() }); });
  statusSel.addEventListener("change", () => go({ status: statusSel.value, name: nameInput.value.trim() }));
  const prev = el("button", { type: "button", disabled: data.page <= 1 }, "← Newer");
  const next = el("button", { type: "button", disabled: data.page >= data.pages }, "Older →");
  prev.addEventListener("click", () => go({ page: String(data.page - 1) }));
  next.addEventListener("click", () => go({ page: String(data.page + 1) }));
  show(main,
    el("h1", {}, "Builds"), form,
    data.builds.length ? buildsTable(data.builds, "builds") : el("p", { class: "muted" }, "No builds match."),
    el("div", { class: "pager" }, prev, el("span", { "data-testid": "page-info" },
      `page ${int(data.page)} of ${int(data.pages)} · ${int(data.total)} builds`), next));
}

// The live panel: what the build is doing now (its progress row) and what it has spent
// (its request rows, summed by the ledger's build_totals).
function livePanel() {
  const fields = {};
  const rows = [
    ["status", "Status"], ["phase", "Phase"], ["turn", "Turn"], ["last_tool", "Last tool"],
    ["test", "Tests"], ["prefill", "Prefill"], ["message", "Message"], ["requests", "Requests"],
    ["tokens", "Tokens"], ["spend", "Spend"], ["updated", "Updated"],
  ];
  const list = el("dl", { class: "live", "data-testid": "live" });
  for (const [key, label] of rows) {
    fields[key] = el("dd", { "data-live": key }, "—");
    list.append(el("dt", {}, label), fields[key]);
  }
  return { node: el("div", { class: "panel" }, list), fields };
}

function setLive(fields, state, animate = true) {
  const p = state.progress || {};
  const t = state.totals || {};
  const values = {
    status: state.status || "—",
    phase: p.phase || "—",
    turn: p.turn ?? "—",
    last_tool: lastTool(p),
    test: p.test_iteration ? `iteration ${p.test_iteration}${p.tests_passed === null || p.tests_passed === undefined ? "" : p.tests_passed ? ", passed" : ", failing"}` : "—",
    prefill: p.prefill_total ? `${int(p.prefill_done)} / ${int(p.prefill_total)} tokens` : "—",
    message: p.message || "—",
    requests: int(t.requests),
    tokens: t.requests === undefined ? "—" : `in ${tokens(t.input_tokens)} · out ${tokens(t.output_tokens)} · cache read ${tokens(t.cache_read_tokens)} · cache write ${tokens((t.cache_write_5m_tokens || 0) + (t.cache_write_1h_tokens || 0))}`,
    spend: t.requests === undefined ? "—" : money(t.cost_usd) + (t.unpriced_requests ? ` (+${int(t.unpriced_requests)} unpriced requests)` : ""),
    updated: when(p.updated_at),
  };
  for (const [key, value] of Object.entries(values)) {
    const text = String(value);
    if (fields[key].textContent !== text) {
      fields[key].textContent = text;
      if (!animate) continue;
      fields[key].classList.remove("flash");
      void fields[key].offsetWidth; // restart the highlight
      fields[key].classList.add("flash");
    }
  }
}

function summarySection(s) {
  const parts = [el("h2", {}, "Result")];
  parts.push(el("div", { class: "cards", "data-testid": "summary-cards" },
    card("Cost", money(s.cost_usd)), card("Saved by caching", money(s.saved_usd)),
    card("Cache hit rate", s.cache_hit_rate === null || s.cache_hit_rate === undefined ? "—" : pct(100 * s.cache_hit_rate)),
    card("Requests", int(s.requests)), card("Duration", seconds(s.duration_s)),
    card("Tests", s.tests_passed === null || s.tests_passed === undefined ? "not run" : s.tests_passed ? "passed" : "failed")));
  parts.push(el("h2", {}, "Phases"), table([
    { label: "Phase", value: (p) => p.name },
    { label: "Status", value: (p) => p.status },
    { label: "Turns", num: true, value: (p) => int(p.turns) },
    { label: "Reqs", num: true, value: (p) => int(p.requests) },
    { label: "Read", num: true, value: (p) => tokens(p.tokens && p.tokens.cache_read) },
    { label: "Cost", num: true, value: (p) => money(p.cost_usd) },
    { label: "Summary", cls: "task", value: (p) => p.summary || "" },
  ], s.phases || [], { testid: "phases" }));
  const files = (label, list) => el("div", { class: "panel" }, el("h2", {}, `${label} (${(list || []).length})`),
    el("ul", {}, (list || []).slice(0, 200).map((f) => el("li", { class: "pre" }, f))));
  parts.push(el("div", { class: "grid2" }, files("Files created", s.files_created), files("Files modified", s.files_modified)));
  parts.push(el("h2", {}, "Tests"), el("p", { class: "pre" }, s.test_command || "no test command"));
  if ((s.test_runs || []).length) {
    parts.push(table([
      { label: "Run", num: true, value: (r) => int(r.iteration) },
      { label: "Passed", value: (r) => (r.passed ? "yes" : r.timed_out ? "timed out" : "no") },
      { label: "Exit", num: true, value: (r) => (r.exit_code === null ? "—" : String(r.exit_code)) },
      { label: "Time", num: true, value: (r) => seconds(r.duration_s) },
    ], s.test_runs, { testid: "test-runs" }));
  }
  if (s.commit) parts.push(el("p", {}, "Commit ", el("span", { class: "pre" }, s.commit)));
  return parts;
}

export async function buildView(main, buildId, cleanup) {
  const data = await api(`/api/builds/${encodeURIComponent(buildId)}`);
  const b = data.build;
  const live = livePanel();
  const title = el("h1", {}, b.name, " ", badge(data.status));
  show(main,
    el("p", {}, el("a", { href: "#/builds" }, "← Builds")), title,
    el("div", { class: "panel" }, el("div", { class: "muted" }, "Task"), el("div", { class: "pre", "data-testid": "task" }, b.task || "")),
    el("p", { class: "muted" }, `${b.backend} · ${b.model} · started ${when(b.started_at)}`,
      b.finished_at ? ` · finished ${when(b.finished_at)}` : "", ` · id ${b.id}`),
    b.error ? el("div", { class: "error" }, b.error) : null,
    el("h2", {}, data.status === "running" ? "Live" : "Last recorded state"), live.node,
    ...(data.summary ? summarySection(data.summary) : []),
    el("h2", {}, "Attempts"),
    table([
      { label: "#", num: true, value: (a) => int(a.attempt) },
      { label: "Started", value: (a) => when(a.started_at) },
      { label: "Finished", value: (a) => when(a.finished_at) },
      { label: "Status", value: (a) => badge(a.status) },
      { label: "Error", cls: "task", value: (a) => a.error || "" },
    ], data.attempts),
  );
  setLive(live.fields, data, false);
  if (data.status !== "running") return;
  // Server-Sent Events: the server polls the ledger cheaply and sends only changes.
  const source = new EventSource(`/api/builds/${encodeURIComponent(buildId)}/events`);
  cleanup.push(() => source.close());
  source.addEventListener("state", (event) => {
    const state = JSON.parse(event.data);
    setLive(live.fields, state);
    title.replaceChildren(b.name, " ", badge(state.status));
  });
  source.addEventListener("done", () => {
    source.close();
    buildView(main, buildId, cleanup).catch((error) => main.replaceChildren(errorBox(error)));
  });
}
