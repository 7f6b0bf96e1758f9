// A small SVG line chart: a few series of (step, value) points, axes with tidy ticks, and controls a reader
// of training curves expects — smoothing, a step range (zoom), log scale, series toggles, CSV export and the
// same data as a table for screen readers. Hovering reads the values of every series at one step.
// Hand-written (no chart library) so the portal stays one small static folder with no build step.

import { h } from "./ui.js";

const SVG = "http://www.w3.org/2000/svg";
const W = 480;
const H = 220;
const M = { left: 44, right: 12, top: 12, bottom: 32 };
const SMOOTHING = [["0", "Off"], ["0.6", "Light"], ["0.8", "Medium"], ["0.9", "Strong"], ["0.97", "Very strong"]];
const RANGES = [["all", "All steps"], ["half", "Last half"], ["quarter", "Last quarter"], ["last50", "Last 50 steps"]];
const TABLE_ROWS = 2000;

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) el.setAttribute(k, v);
  el.append(...children);
  return el;
}

/** About `count` round tick values covering [lo, hi]. */
export function ticks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((v) => raw <= v) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/** A tick label with as many decimals as the tick spacing needs (0.05 apart → 2 decimals). */
function label(v, spacing, percent = false) {
  if (percent) { v *= 100; spacing *= 100; }
  const decimals = Math.max(0, Math.min(6, Math.ceil(-Math.log10(spacing) - 1e-9) + (String(spacing).includes("25") ? 1 : 0)));
  const text = Math.abs(v) >= 10000 ? `${Math.round(v / 1000)}k` : v.toFixed(Number.isInteger(v) ? 0 : decimals);
  return percent ? `${text}%` : text;
}

/** Exponential moving average with TensorBoard's debiasing, so the first points are not pulled to zero. */
export function smooth(points, weight) {
  if (!weight) return points;
  let last = 0;
  return points.map(([x, y], i) => {
    last = last * weight + (1 - weight) * y;
    return [x, last / (1 - weight ** (i + 1))];
  });
}

function inRange(points, range, lastStep) {
  if (range === "all" || !points.length) return points;
  const from = range === "half" ? lastStep / 2 : range === "quarter" ? lastStep * 0.75 : lastStep - 50;
  return points.filter((p) => p[0] >= from);
}

function csvOf(title, series) {
  const steps = [...new Set(series.flatMap((x) => x.points.map((p) => p[0])))].sort((a, b) => a - b);
  const maps = series.map((x) => new Map(x.points));
  const quote = (text) => (/[",\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text);
  const rows = steps.map((step) => [step, ...maps.map((m) => (m.has(step) ? m.get(step) : ""))].join(","));
  return `${["step", ...series.map((x) => quote(`${title} ${x.name}`))].join(",")}\n${rows.join("\n")}\n`;
}

function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
  h("a", { href: url, download: name }).click();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/**
 * lineChart({title, series: [{name, points: [[step, value]...], dots}], xMax, yFormat, bounds, percent, empty,
 *            view, controls})
 * Returns a <figure> whose SVG has role="img" and a label saying how many points it shows.
 * `bounds` ([lo, hi]) keeps the padded y range inside what the metric can be (accuracy: 0..1).
 * `view` ({smoothing, log, range, hidden: Set of series names}) holds the reader's control choices; pass the
 * same object to the next lineChart of this metric so they survive redraws as the job's data grows.
 * `empty` is what an empty chart says (a job that ended before its first step should not say "waiting").
 */
export function lineChart(options) {
  options = { controls: true, ...options };
  const view = options.view || {};
  view.smoothing ??= 0;
  view.log ??= false;
  view.range ??= "all";
  view.hidden ??= new Set();
  const body = h("div", { class: "chart-body" });
  const figure = h("figure", { class: "chart" }, h("figcaption", {}, options.title), body);
  let bar = null;
  const draw = () => {
    if (!bar && options.controls && options.series.some((x) => x.points.length)) {
      bar = h("div", { class: "chart-controls" }, controlsOf(options, view, draw));
      body.before(bar);
    }
    fillBody(body, options, view);
  };
  /** New data (series, xMax, empty text) drawn in place: the controls, and focus on them, stay. */
  figure.update = (next) => { Object.assign(options, next); draw(); };
  draw();
  return figure;
}

function controlsOf(options, view, draw) {
  const { title, series } = options;
  const select = (labelText, pairs, value, onchange) => h("label", { class: "chart-control" }, labelText,
    h("select", { "aria-label": `${title}: ${labelText.toLowerCase()}`, onchange: (e) => onchange(e.target.value) },
      pairs.map(([v, text]) => h("option", { value: v, selected: v === String(value) }, text))));
  const positive = series.every((x) => x.points.every((p) => p[1] > 0));
  if (!positive) view.log = false;
  return [
    select("Smoothing", SMOOTHING, view.smoothing, (v) => { view.smoothing = Number(v); draw(); }),
    select("Steps", RANGES, view.range, (v) => { view.range = v; draw(); }),
    h("label", { class: "chart-control", title: positive ? null : "Log scale needs values above zero" },
      h("input", { type: "checkbox", checked: view.log, disabled: !positive, "aria-label": `${title}: log scale`,
        onchange: (e) => { view.log = e.target.checked; draw(); } }), " Log scale"),
    h("button", { type: "button", class: "btn btn-small", "aria-label": `Download ${title} as CSV`,
      onclick: () => download(`${title.toLowerCase().replace(/[^a-z0-9]+/g, "-")}.csv`, csvOf(title, options.series)) }, "CSV"),
  ];
}

function fillBody(body, options, view) {
  const { title, series, xMax = null, yFormat = (v) => v.toFixed(4), bounds = null, percent = false } = options;
  const empty = options.empty || "Waiting for the first metrics…";
  const visible = series.filter((x) => x.points.length && !view.hidden.has(x.name));
  const all = visible.flatMap((x) => x.points);
  const points = all.length;
  const lastStep = points ? Math.max(...all.map((p) => p[0])) : 0;
  const summary = `${title}: ${points} point${points === 1 ? "" : "s"}${points ? ` up to step ${lastStep}` : ""}`;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": summary });
  const readout = h("p", { class: "chart-readout", "aria-hidden": "true" }, "\u00a0");
  const open = body.querySelector("details.chart-table")?.open;
  const active = document.activeElement;
  const refocus = body.contains(active) ? active.dataset.name || (active.tagName === "SUMMARY" ? "summary" : null) : null;
  body.replaceChildren(svg, legend(series, view, () => { fillBody(body, options, view); }), readout);
  if (series.some((x) => x.points.length)) body.append(dataTable(title, series, yFormat, open));
  if (refocus) body.querySelector(refocus === "summary" ? "summary" : `[data-name="${CSS.escape(refocus)}"]`)?.focus();
  if (!points) {
    svg.append(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "chart-empty" },
      series.some((x) => x.points.length) ? "Every series is hidden." : empty));
    return;
  }
  // What is drawn: each series smoothed (the raw line stays, faint) and cut to the chosen step range.
  const drawn = visible.map((x) => {
    const raw = inRange(x.points, view.range, lastStep);
    const smoothable = view.smoothing && !x.dots && raw.length > 2;
    return { ...x, raw: smoothable ? raw : null, points: smoothable ? smooth(raw, view.smoothing) : raw, index: series.indexOf(x) };
  }).filter((x) => x.points.length);
  const plotted = drawn.flatMap((x) => [...x.points, ...(x.raw || [])]);
  const x0 = view.range === "all" ? 0 : Math.min(...plotted.map((p) => p[0]));
  const x1 = Math.max(view.range === "all" ? xMax || 0 : 0, lastStep, x0 + 1);
  const log = view.log;
  const T = (v) => (log ? Math.log10(v) : v);
  let y0 = Math.min(...plotted.map((p) => T(p[1])));
  let y1 = Math.max(...plotted.map((p) => T(p[1])));
  const pad = (y1 - y0) * 0.08 || Math.abs(y1) * 0.1 || 1;
  y0 -= pad;
  y1 += pad;
  if (bounds && !log) { y0 = Math.max(y0, bounds[0]); y1 = Math.min(y1, bounds[1]); }
  const yt = log ? ticks(Math.floor(y0), Math.ceil(y1), 4).filter((v) => Number.isInteger(v) || y1 - y0 < 2) : ticks(y0, y1, 5);
  const xt = ticks(x0, x1, 5).filter((v) => Number.isInteger(v));
  const X = (v) => M.left + ((v - x0) / (x1 - x0)) * (W - M.left - M.right);
  const Y = (v) => H - M.bottom - ((T(v) - y0) / (y1 - y0)) * (H - M.top - M.bottom);

  const grid = s("g", { class: "chart-grid" });
  for (const v of yt) {
    if (v < y0 || v > y1) continue;
    const y = H - M.bottom - ((v - y0) / (y1 - y0)) * (H - M.top - M.bottom);
    const text = log ? Number((10 ** v).toPrecision(3)).toString() : label(v, Number((yt[1] - yt[0]).toPrecision(6)) || 1, percent);
    grid.append(s("line", { x1: M.left, x2: W - M.right, y1: y, y2: y }));
    grid.append(s("text", { x: M.left - 6, y: y + 4, "text-anchor": "end" }, text));
  }
  for (const v of xt) grid.append(s("text", { x: X(v), y: H - M.bottom + 18, "text-anchor": "middle" }, label(v, 1)));
  grid.append(s("text", { x: W - M.right, y: H - 4, "text-anchor": "end", class: "chart-axis" }, log ? "step · log scale" : "step"));
  grid.append(s("line", { class: "chart-axis-line", x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom }));
  svg.append(grid);

  const path = (pts) => pts.map(([px, py], j) => `${j ? "L" : "M"}${X(px).toFixed(1)},${Y(py).toFixed(1)}`).join(" ");
  for (const x of drawn) {
    const g = s("g", { class: `series series-${x.index}${x.points.length > 150 ? " dense" : ""}` });
    if (x.raw) g.append(s("path", { d: path(x.raw), class: "raw" }));
    g.append(s("path", { d: path(x.points), "data-series": x.name }));
    if (x.dots || x.points.length === 1) for (const [px, py] of x.points) g.append(s("circle", { cx: X(px), cy: Y(py), r: 3.5 }));
    svg.append(g);
  }

  // The readout shows every series at ONE step: the drawn step nearest the pointer, and only series with a
  // value there (a validation series measured every few steps is left out between its points).
  const values = drawn.map((x) => ({ name: x.name, at: new Map(x.points) }));
  const steps = [...new Set(drawn.flatMap((x) => x.points.map((p) => p[0])))].sort((a, b) => a - b);
  const cursor = s("line", { class: "chart-cursor", y1: M.top, y2: H - M.bottom, visibility: "hidden" });
  svg.append(cursor);
  svg.addEventListener("pointermove", (event) => {
    const box = svg.getBoundingClientRect();
    const want = x0 + ((event.clientX - box.left) / box.width * W - M.left) / (W - M.left - M.right) * (x1 - x0);
    const at = steps.reduce((a, b) => (Math.abs(b - want) < Math.abs(a - want) ? b : a));
    const parts = values.filter((v) => v.at.has(at)).map((v) => `${v.name} ${yFormat(v.at.get(at))}`);
    cursor.setAttribute("x1", X(at));
    cursor.setAttribute("x2", X(at));
    cursor.setAttribute("visibility", "visible");
    readout.textContent = `Step ${at} · ${parts.join(" · ")}`;
  });
  svg.addEventListener("pointerleave", () => {
    cursor.setAttribute("visibility", "hidden");
    readout.textContent = "\u00a0";
  });
}

/** Legend entries are toggle buttons: hide a series to read the others. */
function legend(series, view, draw) {
  return h("ul", { class: "chart-legend" },
    series.map((x, i) => h("li", { class: `series-${i}${x.points.length ? "" : " muted"}` },
      h("button", {
        type: "button", class: "legend-toggle", "data-name": x.name, "aria-pressed": String(!view.hidden.has(x.name)), disabled: !x.points.length,
        onclick: () => { if (view.hidden.has(x.name)) view.hidden.delete(x.name); else view.hidden.add(x.name); draw(); },
      }, h("span", { class: "swatch", "aria-hidden": "true" }), x.name))));
}

/** The chart's numbers as a table (built when opened): what a screen reader user reads instead of the lines. */
function dataTable(title, series, yFormat, open = false) {
  const box = h("details", { class: "chart-table" }, h("summary", {}, "Data table"));
  const build = () => {
    if (!box.open || box.querySelector("table")) return;
    const shown = series.filter((x) => x.points.length);
    const maps = shown.map((x) => new Map(x.points));
    const steps = [...new Set(shown.flatMap((x) => x.points.map((p) => p[0])))].sort((a, b) => a - b);
    const rows = steps.slice(-TABLE_ROWS);
    box.append(
      steps.length > rows.length ? h("p", { class: "muted" }, `The last ${rows.length} of ${steps.length} steps; the CSV has them all.`) : null,
      h("div", { class: "table-wrap" }, h("table", {},
        h("caption", {}, `${title} by step`),
        h("thead", {}, h("tr", {}, h("th", { scope: "col", class: "num" }, "Step"), shown.map((x) => h("th", { scope: "col", class: "num" }, x.name)))),
        h("tbody", {}, rows.map((step) => h("tr", {}, h("th", { scope: "row", class: "num" }, String(step)),
          maps.map((m) => h("td", { class: "num" }, m.has(step) ? yFormat(m.get(step)) : "—"))))))));
  };
  box.addEventListener("toggle", build);
  if (open) { box.open = true; build(); }
  return box;
}
