// A list with search, a filter, sort and pages over items already fetched (files and models are few per
// project: the API caps them), so the controls answer as the user types without another request.

import { fill, h, table } from "./ui.js";

/**
 * listView({id, caption, columns, empty, text(item), filter: {label, options: [[value, label, test(item)]]},
 *           sorts: [[value, label, compare(a, b)]], pageSize})
 * returns an element with .update(items): redraws with the current controls (kept across polls).
 */
export function listView({ id, caption, columns, empty, text, filter, sorts, pageSize = 20 }) {
  const state = { query: "", filter: "", sort: sorts[0][0], page: 0, items: [] };
  const search = h("input", { type: "search", id: `${id}-search`, autocomplete: "off", placeholder: "Name or ID" });
  const which = filter ? h("select", { id: `${id}-filter` }, h("option", { value: "" }, "All"),
    filter.options.map(([value, label]) => h("option", { value }, label))) : null;
  const order = h("select", { id: `${id}-sort` }, sorts.map(([value, label]) => h("option", { value }, label)));
  const body = h("div");
  const count = h("p", { class: "list-count", role: "status" });
  const prev = h("button", { type: "button", class: "btn btn-small" }, "Previous page");
  const next = h("button", { type: "button", class: "btn btn-small" }, "Next page");
  const pager = h("div", { class: "pager" }, prev, next);
  const controls = h("div", { class: "list-controls", role: "search", "aria-label": `Find ${caption.toLowerCase()}` },
    h("div", { class: "field" }, h("label", { for: search.id }, "Search"), search),
    which ? h("div", { class: "field" }, h("label", { for: which.id }, filter.label), which) : null,
    h("div", { class: "field" }, h("label", { for: order.id }, "Sort by"), order));
  const el = h("div", { class: "list-view" }, controls, body, h("div", { class: "list-footer" }, count, pager));

  function draw() {
    const q = state.query.trim().toLowerCase();
    const test = filter && state.filter ? filter.options.find(([v]) => v === state.filter)[2] : null;
    const compare = sorts.find(([v]) => v === state.sort)[2];
    const shown = state.items.filter((item) => (!q || text(item).toLowerCase().includes(q)) && (!test || test(item)));
    shown.sort(compare);
    const pages = Math.max(1, Math.ceil(shown.length / pageSize));
    state.page = Math.min(state.page, pages - 1);
    const start = state.page * pageSize;
    const filtered = q || test;
    fill(body, table(columns, shown.slice(start, start + pageSize), {
      caption, empty: state.items.length && filtered ? "Nothing matches the search or filter." : empty,
    }));
    count.textContent = shown.length
      ? `Showing ${start + 1}–${Math.min(start + pageSize, shown.length)} of ${shown.length}` +
        (shown.length < state.items.length ? ` (${state.items.length} in all)` : "")
      : "";
    prev.disabled = state.page === 0;
    next.disabled = state.page >= pages - 1;
    pager.hidden = pages < 2;
  }

  search.addEventListener("input", () => { state.query = search.value; state.page = 0; draw(); });
  if (which) which.addEventListener("change", () => { state.filter = which.value; state.page = 0; draw(); });
  order.addEventListener("change", () => { state.sort = order.value; draw(); });
  prev.addEventListener("click", () => { state.page -= 1; draw(); });
  next.addEventListener("click", () => { state.page += 1; draw(); });
  el.update = (items) => { state.items = items; draw(); };
  return el;
}

export const byNewest = (key) => (a, b) => (b[key] || 0) - (a[key] || 0);
export const byOldest = (key) => (a, b) => (a[key] || 0) - (b[key] || 0);
export const byText = (key) => (a, b) => String(a[key] || "").localeCompare(String(b[key] || ""));
