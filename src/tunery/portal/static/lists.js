// A list with search, a filter, sort and pages over items already fetched (files, models and jobs are few per
// project: the API caps them), so the controls answer as the user types without another request.

import { fill, h, table } from "./ui.js";

/**
 * listView({id, caption, columns, empty, text(item), filter: {label, options: [[value, label, test(item)]]},
 *           sorts: [[value, label, compare(a, b)]], pageSize})
 * returns an element with .update(items): redraws with the current controls (kept across polls).
 */
export function listView({ id, caption, columns, empty, text, filter, sorts, pageSize = 20 }) {
  const state = { query: "", filter: "", sort: sorts[0][0], items: [] };
  const search = h("input", { type: "search", id: `${id}-search`, autocomplete: "off", placeholder: "Name or ID" });
  const which = filter ? h("select", { id: `${id}-filter` }, h("option", { value: "" }, "All"),
    filter.options.map(([value, label]) => h("option", { value }, label))) : null;
  const order = h("select", { id: `${id}-sort` }, sorts.map(([value, label]) => h("option", { value }, label)));
  const body = h("div");
  const pages = pager({ pageSize, onChange: () => draw() });
  const controls = h("div", { class: "list-controls", role: "search", "aria-label": `Find ${caption.toLowerCase()}` },
    h("div", { class: "field" }, h("label", { for: search.id }, "Search"), search),
    which ? h("div", { class: "field" }, h("label", { for: which.id }, filter.label), which) : null,
    h("div", { class: "field" }, h("label", { for: order.id }, "Sort by"), order));
  const el = h("div", { class: "list-view" }, controls, body, pages.el);

  function draw() {
    const q = state.query.trim().toLowerCase();
    const test = filter && state.filter ? filter.options.find(([v]) => v === state.filter)[2] : null;
    const compare = sorts.find(([v]) => v === state.sort)[2];
    const shown = state.items.filter((item) => (!q || text(item).toLowerCase().includes(q)) && (!test || test(item)));
    shown.sort(compare);
    const filtered = q || test;
    fill(body, table(columns, pages.view(shown, state.items.length), {
      caption, empty: state.items.length && filtered ? "Nothing matches the search or filter." : empty,
    }));
  }

  search.addEventListener("input", () => { state.query = search.value; pages.reset(); draw(); });
  if (which) which.addEventListener("change", () => { state.filter = which.value; pages.reset(); draw(); });
  order.addEventListener("change", () => { state.sort = order.value; draw(); });
  el.update = (items) => { state.items = items; draw(); };
  return el;
}

/**
 * Pages over a list already searched and sorted: pager({pageSize, onChange}) returns {el, view(shown, total),
 * reset()}; el is the footer ("Showing 21–40 of 57" and Previous/Next page), view() the rows of the current
 * page (clamped when the list shrank), reset() goes back to the first page (a new search or filter).
 */
export function pager({ pageSize = 20, onChange }) {
  let page = 0;
  const count = h("p", { class: "list-count", role: "status" });
  const prev = h("button", { type: "button", class: "btn btn-small" }, "Previous page");
  const next = h("button", { type: "button", class: "btn btn-small" }, "Next page");
  const buttons = h("div", { class: "pager" }, prev, next);
  prev.addEventListener("click", () => { page -= 1; onChange(); });
  next.addEventListener("click", () => { page += 1; onChange(); });
  return {
    el: h("div", { class: "list-footer" }, count, buttons),
    reset: () => { page = 0; },
    view(shown, total = shown.length) {
      const pages = Math.max(1, Math.ceil(shown.length / pageSize));
      page = Math.min(page, pages - 1);
      const start = page * pageSize;
      count.textContent = shown.length
        ? `Showing ${start + 1}–${Math.min(start + pageSize, shown.length)} of ${shown.length}` +
          (shown.length < total ? ` (${total} in all)` : "")
        : "";
      prev.disabled = page === 0;
      next.disabled = page >= pages - 1;
      buttons.hidden = pages < 2;
      return shown.slice(start, start + pageSize);
    },
  };
}

export const byNewest = (key) => (a, b) => (b[key] || 0) - (a[key] || 0);
export const byOldest = (key) => (a, b) => (a[key] || 0) - (b[key] || 0);
export const byText = (key) => (a, b) => String(a[key] || "").localeCompare(String(b[key] || ""));
