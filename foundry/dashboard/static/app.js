// The page's router: one view per hash (#/, #/builds, #/build/ID, #/costs, #/serve), each
// drawn from the dashboard's JSON API. A view registers what must stop when it is left
// (an event stream, a refresh timer) in `cleanup`.
import { buildView, buildsTable, buildsView, runningTable } from "./builds.js";
import { chartPanels, costsView, drawCharts, kpis } from "./costs.js";
import { serveView } from "./serve.js";
import { show, api, el, errorBox } from "./util.js";

let cleanup = [];

async function overview(main) {
  const [report, running, latest] = await Promise.all([
    api("/api/costs?by=day&since=29d"),
    api("/api/builds/running"),
    api("/api/builds?per_page=10"),
  ]);
  const charts = chartPanels("Last 30 days");
  show(main,
    el("h1", {}, "Overview ", el("span", { class: "muted" }, `last 30 days, days in ${report.time_zone}`)),
    ...report.warnings.map((w) => el("div", { class: "warning" }, w)),
    kpis(report.totals),
    charts.node,
    el("h2", {}, "Running builds"), runningTable(running.builds),
    el("h2", {}, "Latest builds"), buildsTable(latest.builds, "latest"),
    el("p", {}, el("a", { href: "#/builds" }, `All ${latest.total.toLocaleString("en-US")} builds →`)),
  );
  drawCharts(report, charts.spend, charts.hit);
  // Running builds' phases, refreshed; a build's own page streams them live.
  const timer = setTimeout(() => route(), 10000);
  cleanup.push(() => clearTimeout(timer));
}

async function route() {
  for (const stop of cleanup) stop();
  cleanup = [];
  const main = document.getElementById("main");
  const path = location.hash.replace(/^#/, "").split("?")[0] || "/";
  const view = path.startsWith("/build/") ? "builds" : path.slice(1) || "overview";
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.view === view);
  document.body.dataset.ready = "";
  try {
    if (path === "/") await overview(main);
    else if (path === "/builds") await buildsView(main);
    else if (path.startsWith("/build/")) await buildView(main, decodeURIComponent(path.slice(7)), cleanup);
    else if (path === "/costs") await costsView(main);
    else if (path === "/serve") await serveView(main, cleanup);
    else show(main, el("p", {}, "No such page. "), el("a", { href: "#/" }, "Overview"));
  } catch (error) {
    main.replaceChildren(errorBox(error));
  }
  // For tests and the bench: the view is drawn (data-ready names it).
  document.body.dataset.ready = view;
}

window.addEventListener("hashchange", route);
api("/api/info").then((info) => { document.getElementById("ledger-path").textContent = `ledger ${info.ledger} · read-only`; }).catch(() => {});
route();
