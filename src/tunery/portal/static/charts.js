// A small SVG line chart: a few series of (step, value) points, axes with tidy ticks, a legend,
// and a readout of the values nearest the pointer. Redraw it with new data to make it grow.

import { h } from "./ui.js";

const SVG = "http://www.w3.org/2000/svg";
const W = 480;
const H = 220;
const M = { left: 44, right: 12, top: 12, bottom: 32 };

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

/**
 * lineChart({title, series: [{name, points: [[step, value]...], dots}], xMax, yFormat, bounds, percent})
 * Returns a <figure> whose SVG has role="img" and a label saying how many points it shows.
 * `bounds` ([lo, hi]) keeps the padded y range inside what the metric can be (accuracy: 0..1).
 */
export function lineChart({ title, series, xMax = null, yFormat = (v) => v.toFixed(4), bounds = null, percent = false }) {
  const shown = series.filter((x) => x.points.length);
  const all = shown.flatMap((x) => x.points);
  const points = all.length;
  const lastStep = points ? Math.max(...all.map((p) => p[0])) : 0;
  const summary = `${title}: ${points} point${points === 1 ? "" : "s"}${points ? ` up to step ${lastStep}` : ""}`;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": summary });
  const readout = h("p", { class: "chart-readout", "aria-hidden": "true" }, "\u00a0");
  const figure = h("figure", { class: "chart" }, h("figcaption", {}, title), svg, legend(series), readout);
  if (!points) {
    svg.append(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "chart-empty" }, "Waiting for the first metrics…"));
    return figure;
  }
  const x0 = 0;
  const x1 = Math.max(xMax || 0, lastStep, 1);
  let y0 = Math.min(...all.map((p) => p[1]));
  let y1 = Math.max(...all.map((p) => p[1]));
  const pad = (y1 - y0) * 0.08 || Math.abs(y1) * 0.1 || 1;
  y0 -= pad;
  y1 += pad;
  if (bounds) { y0 = Math.max(y0, bounds[0]); y1 = Math.min(y1, bounds[1]); }
  const yt = ticks(y0, y1, 5);
  const xt = ticks(x0, x1, 5).filter((v) => Number.isInteger(v));
  const X = (v) => M.left + ((v - x0) / (x1 - x0)) * (W - M.left - M.right);
  const Y = (v) => H - M.bottom - ((v - y0) / (y1 - y0)) * (H - M.top - M.bottom);

  const grid = s("g", { class: "chart-grid" });
  for (const v of yt) {
    grid.append(s("line", { x1: M.left, x2: W - M.right, y1: Y(v), y2: Y(v) }));
    grid.append(s("text", { x: M.left - 6, y: Y(v) + 4, "text-anchor": "end" }, label(v, Number((yt[1] - yt[0]).toPrecision(6)) || 1, percent)));
  }
  for (const v of xt) grid.append(s("text", { x: X(v), y: H - M.bottom + 18, "text-anchor": "middle" }, label(v, 1)));
  grid.append(s("text", { x: W - M.right, y: H - 4, "text-anchor": "end", class: "chart-axis" }, "step"));
  grid.append(s("line", { class: "chart-axis-line", x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom }));
  svg.append(grid);

  series.forEach((x, i) => {
    if (!x.points.length) return;
    const d = x.points.map(([px, py], j) => `${j ? "L" : "M"}${X(px).toFixed(1)},${Y(py).toFixed(1)}`).join(" ");
    const g = s("g", { class: `series series-${i}${x.points.length > 150 ? " dense" : ""}` }, s("path", { d, "data-series": x.name }));
    if (x.dots || x.points.length === 1) for (const [px, py] of x.points) g.append(s("circle", { cx: X(px), cy: Y(py), r: 3.5 }));
    svg.append(g);
  });

  const cursor = s("line", { class: "chart-cursor", y1: M.top, y2: H - M.bottom, visibility: "hidden" });
  svg.append(cursor);
  svg.addEventListener("pointermove", (event) => {
    const box = svg.getBoundingClientRect();
    const step = x0 + ((event.clientX - box.left) / box.width * W - M.left) / (W - M.left - M.right) * (x1 - x0);
    const parts = [];
    let at = null;
    for (const x of shown) {
      const near = x.points.reduce((a, b) => (Math.abs(b[0] - step) < Math.abs(a[0] - step) ? b : a));
      at = at ?? near[0];
      parts.push(`${x.name} ${yFormat(near[1])}`);
    }
    cursor.setAttribute("x1", X(at));
    cursor.setAttribute("x2", X(at));
    cursor.setAttribute("visibility", "visible");
    readout.textContent = `Step ${at} · ${parts.join(" · ")}`;
  });
  svg.addEventListener("pointerleave", () => {
    cursor.setAttribute("visibility", "hidden");
    readout.textContent = "\u00a0";
  });
  return figure;
}

function legend(series) {
  return h("ul", { class: "chart-legend" },
    series.map((x, i) => h("li", { class: `series-${i}${x.points.length ? "" : " muted"}` },
      h("span", { class: "swatch", "aria-hidden": "true" }), x.name)));
}
