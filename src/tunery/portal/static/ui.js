// Small DOM and formatting helpers shared by the pages. No framework: h() builds elements.

/** h("a", {href: "#/x", class: "btn"}, "text", child...) — attributes starting with "on" are listeners. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "value" || (name in el && typeof value !== "string")) el[name] = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const LABELS = {
  validating_files: "validating files",
  fine_tune: "fine-tune",
};

/** A status pill: text is the status itself, so it reads the same to everyone. */
export function badge(status) {
  const text = String(status || "unknown");
  return h("span", { class: `badge badge-${text.toLowerCase()}` }, LABELS[text] || text.replaceAll("_", " "));
}

export function formatBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n < 10 && i ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
}

export function formatNumber(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "—";
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits });
}

export function formatMetric(n) {
  if (n === null || n === undefined) return "—";
  return Number(n).toFixed(4);
}

export function formatDate(unix) {
  if (!unix) return "—";
  return new Date(unix * 1000).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function formatTime(unix) {
  if (!unix) return "—";
  return new Date(unix * 1000).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || seconds < 0) return "—";
  seconds = Math.round(seconds);
  const hrs = Math.floor(seconds / 3600);
  const min = Math.floor((seconds % 3600) / 60);
  const sec = seconds % 60;
  if (hrs) return `${hrs} h ${min} min`;
  if (min) return `${min} min ${sec} s`;
  return `${sec} s`;
}

export const now = () => Date.now() / 1000;

/** A definition list from [label, value] pairs; values may be nodes. */
export function details(pairs) {
  return h("dl", { class: "details" },
    pairs.filter(Boolean).map(([label, value]) => h("div", {}, h("dt", {}, label), h("dd", {}, value ?? "—"))));
}

/** A table in a horizontally scrollable wrapper. columns: [{label, cell(row) -> node|string, class}] */
export function table(columns, rows, { caption, empty = "Nothing here yet." } = {}) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("div", { class: "table-wrap" },
    h("table", {},
      caption ? h("caption", { class: "sr-only" }, caption) : null,
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.class }, c.label)))),
      h("tbody", {}, rows.map((row) => h("tr", {}, columns.map((c) => h("td", { class: c.class, "data-label": c.label }, c.cell(row))))))));
}

/** A spot for API errors: show(error) puts the message (and the field it names) in an alert. */
export function alertBox() {
  const el = h("div", { class: "alert", role: "alert", hidden: true });
  el.show = (error) => {
    if (!error) { el.hidden = true; el.replaceChildren(); return; }
    // A sentence, as the API wrote it: no status code or field name in parentheses (the field is highlighted
    // where a form has it); the code stays on the element for those who look.
    fill(el, sentence(error.message || String(error)));
    if (error.status) el.dataset.status = error.status;
    el.hidden = false;
  };
  return el;
}

export function notice(text, kind = "info") {
  return h("p", { class: `notice notice-${kind}`, role: "status" }, text);
}

/** Run fn now and every `ms` until stop() — skipped while a previous run is still going. */
export function poll(fn, ms) {
  let busy = false;
  let stopped = false;
  const tick = async () => {
    if (busy || stopped) return;
    busy = true;
    try { await fn(); } catch (e) { console.warn(e); } finally { busy = false; }
  };
  tick();
  const id = setInterval(tick, ms);
  return () => { stopped = true; clearInterval(id); };
}

/** A <progress> bar with a visible caption. */
export function progressBar(label) {
  const bar = h("progress", { max: 100, value: 0, "aria-label": label });
  const text = h("span", { class: "progress-text" });
  const wrap = h("div", { class: "progress" }, bar, text);
  wrap.set = (fraction, caption) => {
    bar.value = Math.round(Math.max(0, Math.min(1, fraction)) * 100);
    text.replaceChildren(caption);
  };
  return wrap;
}

/** A page heading that the router focuses after navigation. */
export function pageHeader(title, ...actions) {
  return h("div", { class: "page-header" },
    h("h1", { tabindex: "-1" }, title),
    actions.length ? h("div", { class: "actions" }, actions) : null);
}

export const shortId = (id) => (id && id.length > 16 ? `${id.slice(0, 12)}…${id.slice(-4)}` : id);

/** "conflict: job is running" → "Conflict: job is running." — a message shown to people ends like a sentence. */
export function sentence(text) {
  const t = String(text || "").trim().replace(/^Error:\s*/i, "");
  if (!t) return "Something went wrong.";
  const first = t[0].toUpperCase() + t.slice(1);
  return /[.!?…)]$/.test(first) ? first : `${first}.`;
}
