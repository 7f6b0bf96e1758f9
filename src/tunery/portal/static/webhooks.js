// Webhooks: the project's endpoints (create, send a test event, delete) and each one's delivery log.
// The signing secret is shown once, right after creating the endpoint.

import { api } from "./api.js";
import { alertBox, badge, fill, formatDate, h, pageHeader, poll, table } from "./ui.js";

const EVENTS = ["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"];
const EVAL_EVENTS = ["eval.run.succeeded", "eval.run.failed", "eval.run.canceled"];

export async function render(main) {
  const alert = alertBox();
  const listing = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const log = h("section", { "aria-labelledby": "log-h" });
  const secretBox = h("div", { role: "status" });
  const name = h("input", { id: "hook-name", name: "name", type: "text", required: true, value: "webhook" });
  const url = h("input", { id: "hook-url", name: "url", type: "url", required: true, placeholder: "https://…" });
  const boxes = [...EVENTS, ...EVAL_EVENTS].map((e) =>
    h("input", { type: "checkbox", name: "event", value: e, id: `ev-${e}`, checked: EVENTS.includes(e) }));
  const form = h("form", { class: "card" },
    h("h2", {}, "Add an endpoint"),
    h("label", { for: "hook-name" }, "Name"), name,
    h("label", { for: "hook-url" }, "URL"), url,
    h("fieldset", {}, h("legend", {}, "Events"),
      boxes.map((box) => h("label", { class: "check", for: box.id }, box, " ", h("code", {}, box.value)))),
    h("div", { class: "form-actions" }, h("button", { type: "submit", class: "btn btn-primary" }, "Add endpoint")));
  fill(main,
    pageHeader("Webhooks"),
    h("p", { class: "lead" }, "Tunery calls these URLs when a job or an eval run ends, signed as Standard Webhooks: verify with ",
      h("code", {}, "client.webhooks.unwrap(body, headers, secret=…)"), ". Failed deliveries are retried for 72 hours."),
    alert, secretBox, listing, form, log);

  let selected = null;
  async function showLog(endpoint) {
    selected = endpoint;
    const page = await api(`/webhook_endpoints/${endpoint.id}/deliveries?limit=50`);
    fill(log, h("h2", { id: "log-h" }, "Deliveries to ", h("code", {}, endpoint.name)), table([
      { label: "Event", cell: (d) => h("code", {}, d.event_type) },
      { label: "State", cell: (d) => badge(d.state) },
      { label: "Attempts", cell: (d) => String(d.attempts) },
      { label: "Last answer", cell: (d) => (d.last_status_code ? `HTTP ${d.last_status_code}` : d.last_error || "—") },
      { label: "When", cell: (d) => formatDate(Math.round(d.last_attempt_at || d.created_at)), class: "hide-sm" },
    ], page.data, { caption: "Deliveries", empty: "Nothing sent to this endpoint yet." }));
  }

  async function refresh() {
    const page = await api("/webhook_endpoints?limit=100");
    fill(listing, table([
      { label: "Name", cell: (e) => e.name },
      { label: "URL", cell: (e) => h("code", { class: "wrap" }, e.url) },
      { label: "Events", cell: (e) => e.event_types.map((t) => t.replace("fine_tuning.job.", "").replace("eval.run.", "eval ")).join(", "), class: "hide-sm" },
      { label: "Actions", cell: (e) => h("div", { class: "row-actions" },
        h("button", { type: "button", class: "btn btn-small", "aria-label": `Send a test event to ${e.name}`, onclick: () => test(e) }, "Send test event"),
        h("button", { type: "button", class: "btn btn-small", "aria-label": `Deliveries to ${e.name}`, onclick: () => showLog(e) }, "Deliveries"),
        h("button", { type: "button", class: "btn btn-small btn-danger", "aria-label": `Delete ${e.name}`, onclick: () => remove(e) }, "Delete")) },
    ], page.data, { caption: "Webhook endpoints", empty: "No endpoints yet." }));
    if (selected) await showLog(selected);
  }

  async function test(endpoint) {
    alert.show(null);
    try {
      const result = await api(`/webhook_endpoints/${endpoint.id}/test`, { method: "POST", body: { event_type: EVENTS[0] } });
      fill(secretBox, h("p", { class: "notice" }, `Test event to ${endpoint.name}: `,
        result.status_code ? `HTTP ${result.status_code}` : "no answer"));
      await showLog(endpoint);
    } catch (error) { alert.show(error); }
  }

  async function remove(endpoint) {
    if (!confirm(`Delete the endpoint ${endpoint.name}? Deliveries still pending are dropped.`)) return;
    try {
      await api(`/webhook_endpoints/${endpoint.id}`, { method: "DELETE" });
      if (selected && selected.id === endpoint.id) { selected = null; log.replaceChildren(); }
      await refresh();
    } catch (error) { alert.show(error); }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    alert.show(null);
    try {
      const created = await api("/webhook_endpoints", { method: "POST", body: {
        name: name.value.trim(), url: url.value.trim(), event_types: boxes.filter((b) => b.checked).map((b) => b.value),
      } });
      fill(secretBox, h("div", { class: "notice" }, "Signing secret for ", h("strong", {}, created.name),
        " (shown only now): ", h("code", { class: "wrap", "data-testid": "signing-secret" }, created.signing_secret)));
      url.value = "";
      await refresh();
    } catch (error) { alert.show(error); }
  });
  return poll(refresh, 5000);
}
