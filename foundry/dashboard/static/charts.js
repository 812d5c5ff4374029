// Small SVG charts, drawn with DOM calls only: labels and titles are set as text, never
// parsed as markup, so a model name or a build name cannot inject anything.
const NS = "http://www.w3.org/2000/svg";
const W = 640, H = 220, PAD = { left: 56, right: 10, top: 10, bottom: 34 };

function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

// 1, 2 or 5 times a power of ten: ticks a person reads at a glance.
function niceStep(max, count) {
  const raw = max / count;
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 5, 10]) if (raw <= m * power) return m * power;
  return 10 * power;
}

function frame(svg, labels, max, format) {
  const plotH = H - PAD.top - PAD.bottom;
  const step = niceStep(max || 1, 4);
  const top = Math.max(step, Math.ceil((max || 1) / step) * step);
  for (let v = 0; v <= top + step / 2; v += step) {
    const y = PAD.top + plotH - (v / top) * plotH;
    svg.append(svgEl("line", { class: "grid", x1: PAD.left, x2: W - PAD.right, y1: y, y2: y }));
    svg.append(svgEl("text", { x: PAD.left - 6, y: y + 4, "text-anchor": "end" }, format(v)));
  }
  svg.append(svgEl("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: PAD.top + plotH, y2: PAD.top + plotH }));
  const slot = (W - PAD.left - PAD.right) / Math.max(labels.length, 1);
  const every = Math.max(1, Math.ceil(labels.length / 8));
  labels.forEach((label, i) => {
    if (i % every !== 0 && i !== labels.length - 1) return;
    if (i !== labels.length - 1 && labels.length - 1 - i < every / 2) return; // would overlap the last
    // The last label is right-aligned so it is never cut at the edge.
    const last = i === labels.length - 1 && labels.length > 1;
    const x = last ? W - PAD.right : PAD.left + slot * (i + 0.5);
    svg.append(svgEl("text", { x, y: H - 12, "text-anchor": last ? "end" : "middle" }, label));
  });
  return { top, plotH, slot };
}

function emptyChart(container, message) {
  container.replaceChildren();
  const p = document.createElement("p");
  p.className = "muted";
  p.textContent = message;
  container.append(p);
}

// Stacked bars: series[k].values[i] is the height of series k at label i (null as 0).
export function barChart(container, { labels, series, format, title }) {
  if (!labels.length) return emptyChart(container, "Nothing recorded in this range.");
  const totals = labels.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  const { top, plotH, slot } = frame(svg, labels, Math.max(...totals), format);
  const width = Math.max(1, slot * 0.7);
  labels.forEach((label, i) => {
    let base = PAD.top + plotH;
    for (const s of series) {
      const value = s.values[i] || 0;
      if (value <= 0) continue;
      const h = (value / top) * plotH;
      const bar = svgEl("rect", {
        class: s.cls, x: PAD.left + slot * i + (slot - width) / 2, y: base - h, width, height: h,
        "data-label": label, "data-series": s.name,
      });
      bar.append(svgEl("title", {}, `${label} · ${s.name}: ${format(value)}`));
      svg.append(bar);
      base -= h;
    }
  });
  container.replaceChildren(svg);
}

// Lines over the same labels; a null value is a gap (no data that day), never a zero.
export function lineChart(container, { labels, series, format, max, title }) {
  if (!labels.length) return emptyChart(container, "Nothing recorded in this range.");
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  const values = series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined));
  const { top, plotH, slot } = frame(svg, labels, max ?? Math.max(0, ...values), format);
  for (const s of series) {
    let path = "";
    s.values.forEach((value, i) => {
      if (value === null || value === undefined) { path += " "; return; }
      const x = PAD.left + slot * (i + 0.5), y = PAD.top + plotH - (value / top) * plotH;
      path += (path.endsWith(" ") || path === "" ? "M" : "L") + `${x.toFixed(1)},${y.toFixed(1)}`;
      const dot = svgEl("circle", { class: s.dot, cx: x, cy: y, r: 2.5 });
      dot.append(svgEl("title", {}, `${labels[i]} · ${s.name}: ${format(value)}`));
      svg.append(dot);
    });
    svg.insertBefore(svgEl("path", { class: `line ${s.cls}`, d: path.replace(/ +/g, " ").trim() }), svg.firstChild);
  }
  container.replaceChildren(svg);
}

// Horizontal stacked bars, one row per label (model and backend names can be long).
export function hbarChart(container, { labels, series, format, title }) {
  if (!labels.length) return emptyChart(container, "Nothing priced in this range.");
  const row = 22, left = 190, right = 80, top = 6;
  const height = top * 2 + row * labels.length;
  const totals = labels.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
  const max = Math.max(...totals) || 1;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${height}`, role: "img", "aria-label": title });
  labels.forEach((label, i) => {
    const y = top + row * i;
    const shown = label.length > 28 ? `${label.slice(0, 27)}…` : label;
    const name = svgEl("text", { x: left - 8, y: y + row * 0.65, "text-anchor": "end" }, shown);
    name.append(svgEl("title", {}, label));
    svg.append(name);
    let x = left;
    for (const s of series) {
      const value = s.values[i] || 0;
      if (value <= 0) continue;
      const w = (value / max) * (W - left - right);
      const bar = svgEl("rect", { class: s.cls, x, y: y + 3, width: w, height: row - 6, "data-label": label, "data-series": s.name });
      bar.append(svgEl("title", {}, `${label} · ${s.name}: ${format(value)}`));
      svg.append(bar);
      x += w;
    }
    // The first series' own figure (spend), not the stack's sum: a saving can be negative.
    svg.append(svgEl("text", { x: x + 6, y: y + row * 0.65 }, format(series[0].values[i] || 0)));
  });
  container.replaceChildren(svg);
}
