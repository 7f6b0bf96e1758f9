// Models (base and fine-tuned, with lineage) and deployments: deploy, watch it become ready,
// delete. A model that is deployed cannot be deleted — the API's 409 message says so.

import { api, BASE } from "./api.js";
import { byNewest, byOldest, byText, listView } from "./lists.js";
import { alertBox, badge, fill, formatDate, h, pageHeader, poll, shortId, table } from "./ui.js";

const dep = (name) => `/deployments/${encodeURIComponent(name)}`;
const stateOf = (d) => (d.properties && d.properties.provisioningState) || d.status;

/** A readable default deployment name for a model or checkpoint (letters, digits, . - _; ≤ 64). */
export function suggestName(model) {
  const [name, checkpoint] = model.split(":ckpt-step-");
  const m = /^(.*)\.ft-([0-9a-f]{6})[0-9a-f]*(?:-(.+))?$/.exec(name);
  const base = m ? `${m[1]}-${m[3] ? `${m[3]}-` : ""}${m[2]}` : name;
  const full = checkpoint ? `${base}-step${checkpoint}` : base;
  return full.replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[^A-Za-z0-9]+/, "").slice(0, 64);
}

/** Poll GET /deployments/{name} until it is no longer Accepted/Creating. */
export async function waitForDeployment(name, onUpdate) {
  for (;;) {
    const d = await api(dep(name));
    onUpdate(d);
    if (!["Accepted", "Creating", "Updating"].includes(stateOf(d))) return d;
    await new Promise((r) => setTimeout(r, 700));
  }
}

/** A modal dialog to deploy `model` under a name of the user's choice. */
export function openDeployDialog(model, { step = null, onDeployed } = {}) {
  const input = h("input", { id: "deploy-name", name: "name", type: "text", autocomplete: "off", required: true, value: suggestName(model), pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,63}" });
  const alert = alertBox();
  const status = h("p", { class: "deploy-status", role: "status" });
  const submit = h("button", { type: "submit", class: "btn btn-primary" }, "Deploy");
  const close = h("button", { type: "button", class: "btn", onclick: () => dialog.close() }, "Close");
  const form = h("form", { method: "dialog" },
    h("h2", {}, step ? `Deploy checkpoint at step ${step}` : "Deploy model"),
    h("p", {}, "Model: ", h("code", { class: "wrap" }, model)),
    h("label", { for: "deploy-name" }, "Deployment name"),
    input,
    h("p", { class: "hint" }, "Letters, digits, '.', '-' or '_'. You chat with it by this name."),
    alert, status,
    h("div", { class: "form-actions" }, close, submit));
  const dialog = h("dialog", { class: "dialog", "aria-label": "Deploy model" }, form);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    alert.show(null);
    submit.disabled = true;
    const name = input.value.trim();
    try {
      await api(dep(name), { method: "PUT", body: {
        sku: { name: "standard", capacity: 1 },
        properties: { model: { format: "OpenAI", name: model, version: "1" } },
      } });
      const done = await waitForDeployment(name, (d) => fill(status, "Deployment ", h("strong", {}, name), ": ", badge(stateOf(d))));
      if (stateOf(done) === "Succeeded") {
        submit.hidden = true;
        close.classList.add("btn-primary");
        fill(status, "Deployment ", h("strong", {}, name), ": ", badge("Succeeded"), " ",
          h("a", { href: `#/playground?model=${encodeURIComponent(name)}`, onclick: () => dialog.close() }, "Open in playground"));
        if (onDeployed) onDeployed(done);
      } else {
        alert.show({ message: done.error || `Deployment ended in state ${stateOf(done)}.` });
      }
    } catch (error) {
      alert.show(error);
    } finally {
      submit.disabled = false;
    }
  });
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
  input.select();
  return dialog;
}

/** Walk parent_model links up to the base model: ["base", "parent", ..., "this"]. */
function lineage(model, byId) {
  const chain = [model.id];
  let cur = model;
  while (cur && chain.length < 20) {
    const up = cur.parent_model || (cur.fine_tune ? cur.model : null);
    if (!up || chain.includes(up)) break;
    chain.unshift(up);
    cur = byId.get(up.split(":ckpt-step-")[0]);
  }
  return chain;
}

export async function models(main) {
  const alert = alertBox();
  const fineTuned = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const base = h("div");
  let view = null;
  fill(main,
    pageHeader("Models"),
    h("p", { class: "lead" }, "Fine-tuned models are LoRA adapters over a base model. Deploy one to chat with it; ",
      "fine-tune one again (continuous fine-tuning) from the wizard."),
    alert,
    h("section", { "aria-labelledby": "ft-h" }, h("h2", { id: "ft-h" }, "Fine-tuned models"), fineTuned),
    h("section", { "aria-labelledby": "base-h" }, h("h2", { id: "base-h" }, "Base models"), base));

  async function remove(model) {
    if (!confirm(`Delete ${model.id}? Its checkpoints go with it.`)) return;
    alert.show(null);
    try {
      await api(`/models/${encodeURIComponent(model.id)}`, { method: "DELETE" });
      await refresh();
    } catch (error) { alert.show(error); }
  }

  async function download(model, format, part = null) {
    alert.show(null);
    try {
      const query = `format=${format}${part ? `&part=${part}` : ""}`;
      const response = await api(`/models/${encodeURIComponent(model.id)}/export?${query}`, { raw: true });
      const name = /filename="([^"]+)"/.exec(response.headers.get("content-disposition") || "");
      const url = URL.createObjectURL(await response.blob());
      h("a", { href: url, download: name ? name[1] : `${model.id}-${format}` }).click();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
    } catch (error) { alert.show(error); }
  }

  /** Download as a PEFT adapter, a merged Hugging Face folder, or GGUF for llama.cpp / Ollama. */
  function downloadMenu(m) {
    const item = (label, format, part) => h("li", {}, h("button", { type: "button", class: "btn btn-link",
      onclick: (event) => { event.target.closest("details").open = false; download(m, format, part); } }, label));
    return h("details", { class: "menu" }, h("summary", { class: "btn btn-small", "aria-label": `Download ${m.id}` }, "Download"),
      h("ul", {}, item("PEFT adapter (.tar)", "peft"), item("Merged model (.tar)", "merged"),
        item("GGUF model", "gguf", "merged"), item("GGUF LoRA adapter", "gguf", "adapter")));
  }

  async function refresh() {
    const all = (await api("/models")).data;
    const byId = new Map(all.map((m) => [m.id, m]));
    const tuned = all.filter((m) => m.fine_tune || m.model);  // trained here, or imported (an adapter over a base)
    if (!view) {
      view = listView({
        id: "models",
        caption: "Fine-tuned models",
        empty: "No fine-tuned models yet. They appear here when a job succeeds.",
        columns: tunedColumns,
        text: (m) => `${m.id} ${m.fine_tune || ""} ${m.model || ""}`,
        filter: { label: "Base model", options: [...new Set(all.filter((m) => !m.fine_tune && !m.model).map((m) => m.id))]
          .map((b) => [b, b, (m) => lineage(m, byIdNow)[0] === b]) },
        sorts: [["newest", "Newest first", byNewest("created")], ["oldest", "Oldest first", byOldest("created")],
          ["name", "Name", byText("id")]],
      });
      fill(fineTuned, view);
    }
    byIdNow = byId;
    view.update(tuned);
    fill(base, table([
      { label: "Model", cell: (m) => h("code", {}, m.id) },
      { label: "Fine-tunable", cell: (m) => (m.capabilities && m.capabilities.fine_tune ? "yes" : "no") },
      { label: "Context", cell: (m) => (m.context_length ? `${m.context_length} tokens` : "—"), class: "hide-sm" },
      { label: "Actions", cell: (m) => h("div", { class: "row-actions" },
        h("a", { class: "btn btn-small", href: `#/jobs/new?model=${encodeURIComponent(m.id)}`, "aria-label": `Fine-tune ${m.id}` }, "Fine-tune"),
        h("a", { class: "btn btn-small", href: `#/playground?model=${encodeURIComponent(m.id)}`, "aria-label": `Chat with ${m.id}` }, "Chat")) },
    ], all.filter((m) => !m.fine_tune && !m.model), { caption: "Base models" }));
  }
  let byIdNow = new Map();
  const tunedColumns = [
    { label: "Model", cell: (m) => h("code", { class: "wrap" }, m.id) },
    { label: "Lineage", cell: (m) => h("ol", { class: "lineage", "aria-label": "Lineage, base first" },
      lineage(m, byIdNow).map((id) => h("li", {}, h("code", {}, id === m.id ? "this model" : shortId(id))))), class: "hide-sm" },
    { label: "Job", cell: (m) => (m.fine_tune ? h("a", { href: `#/jobs/${m.fine_tune}` }, h("code", {}, shortId(m.fine_tune))) : "imported") },
    { label: "Created", cell: (m) => formatDate(m.created), class: "hide-md" },
    { label: "Actions", cell: (m) => h("div", { class: "row-actions" },
      h("button", { type: "button", class: "btn btn-small", "aria-label": `Deploy ${m.id}`, onclick: () => openDeployDialog(m.id) }, "Deploy"),
      h("a", { class: "btn btn-small", href: `#/jobs/new?model=${encodeURIComponent(m.id)}`, "aria-label": `Fine-tune ${m.id} further` }, "Fine-tune"),
      downloadMenu(m),
      h("button", { type: "button", class: "btn btn-small btn-danger", "aria-label": `Delete ${m.id}`, onclick: () => remove(m) }, "Delete")) },
  ];
  try { await refresh(); } catch (error) { alert.show(error); }
}

export async function deployments(main) {
  const alert = alertBox();
  const listing = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const modelSelect = h("select", { id: "new-deploy-model", required: true });
  const snippets = snippetSection();
  const form = h("form", { class: "card inline-form" },
    h("div", { class: "field" }, h("label", { for: "new-deploy-model" }, "Model to deploy"), modelSelect),
    h("div", { class: "form-actions" }, h("button", { type: "submit", class: "btn btn-primary" }, "Deploy…")));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (modelSelect.value) openDeployDialog(modelSelect.value, { onDeployed: refresh });
  });
  fill(main,
    pageHeader("Deployments"),
    h("p", { class: "lead" }, "A deployment gives a model a name to call with ", h("code", {}, "/chat/completions"),
      ". Delete deployments you no longer use; unused ones are removed after a while."),
    form, alert,
    h("section", { "aria-labelledby": "dep-h" }, h("h2", { id: "dep-h" }, "Your deployments"), listing),
    snippets.el);

  async function remove(d) {
    if (!confirm(`Delete deployment ${d.id}? The model stays.`)) return;
    try {
      await api(dep(d.id), { method: "DELETE" });
      await refresh();
    } catch (error) { alert.show(error); }
  }

  async function refresh() {
    try {
      const [list, all] = await Promise.all([api("/deployments"), api("/models")]);
      if (!modelSelect.options.length) {
        const opt = (m) => h("option", { value: m.id }, m.id);
        fill(modelSelect,
          h("optgroup", { label: "Fine-tuned models" }, all.data.filter((m) => m.fine_tune).map(opt)),
          h("optgroup", { label: "Base models" }, all.data.filter((m) => !m.fine_tune).map(opt)));
      }
      fill(listing, table([
        { label: "Name", cell: (d) => h("strong", {}, d.id) },
        { label: "State", cell: (d) => badge(stateOf(d)) },
        { label: "Model", cell: (d) => h("code", { class: "wrap" }, d.model) },
        { label: "Created", cell: (d) => formatDate(d.created_at), class: "hide-md" },
        { label: "Last used", cell: (d) => formatDate(d.last_used_at), class: "hide-sm" },
        { label: "Actions", cell: (d) => h("div", { class: "row-actions" },
          h("a", { class: "btn btn-small", href: `#/playground?model=${encodeURIComponent(d.id)}`, "aria-label": `Chat with ${d.id}` }, "Chat"),
          h("button", { type: "button", class: "btn btn-small btn-danger", "aria-label": `Delete deployment ${d.id}`, onclick: () => remove(d) }, "Delete")) },
      ], list.data, { caption: "Deployments", empty: "No deployments. Deploy a fine-tuned model or a checkpoint to chat with it." }));
      snippets.update(list.data.filter((d) => stateOf(d) === "Succeeded").map((d) => d.id));
    } catch (error) { alert.show(error); }
  }
  return poll(refresh, 3000);
}

// ------------------------------------------------------------------------------------------ code snippets
const API_VERSION = "2024-10-21";

/** Ready-to-copy calls of a deployment: curl, and the openai package's OpenAI and AzureOpenAI clients. The
 * key is read from $TUNERY_API_KEY rather than printed on the page. */
export function snippetTexts(name, origin = location.origin) {
  const quoted = JSON.stringify(name);
  return [
    ["curl", "curl", `curl ${origin}${BASE}/chat/completions \\
  -H "api-key: $TUNERY_API_KEY" -H "content-type: application/json" \\
  -d '{"model": ${quoted}, "messages": [{"role": "user", "content": "Hello"}]}'`],
    ["openai-python", "Python: OpenAI", `import os
from openai import OpenAI

client = OpenAI(base_url="${origin}/v1", api_key=os.environ["TUNERY_API_KEY"])
reply = client.chat.completions.create(
    model=${quoted}, messages=[{"role": "user", "content": "Hello"}])
print(reply.choices[0].message.content)`],
    ["azure-python", "Python: AzureOpenAI", `import os
from openai import AzureOpenAI

client = AzureOpenAI(azure_endpoint="${origin}", api_key=os.environ["TUNERY_API_KEY"],
                     api_version="${API_VERSION}")
reply = client.chat.completions.create(
    model=${quoted}, messages=[{"role": "user", "content": "Hello"}])
print(reply.choices[0].message.content)`],
  ];
}

function snippetSection() {
  const select = h("select", { id: "snippet-deployment" });
  const body = h("div", { class: "snippets" });
  const el = h("section", { "aria-labelledby": "snippets-h", hidden: true },
    h("h2", { id: "snippets-h" }, "Call a deployment"),
    h("p", { class: "muted" }, "Copy one of these; set ", h("code", {}, "TUNERY_API_KEY"), " to your API key first (",
      h("code", {}, "export TUNERY_API_KEY=tny-…"), ")."),
    h("div", { class: "field" }, h("label", { for: select.id }, "Deployment"), select),
    body);
  let names = [];
  function draw() {
    fill(body, snippetTexts(select.value).map(([id, label, text]) => {
      const status = h("span", { class: "copy-status", role: "status" });
      const copy = h("button", { type: "button", class: "btn btn-small", "aria-label": `Copy the ${label} snippet` }, "Copy");
      copy.addEventListener("click", async () => {
        try { await navigator.clipboard.writeText(text); status.textContent = "Copied."; } catch {
          status.textContent = "Select the text and copy it (the browser refused clipboard access).";
        }
      });
      return h("figure", { class: "snippet" },
        h("figcaption", {}, h("span", { id: `snippet-${id}` }, label), copy, status),
        h("pre", { "aria-labelledby": `snippet-${id}`, tabindex: "0" }, h("code", {}, text)));
    }));
  }
  select.addEventListener("change", draw);
  return {
    el,
    update(now) {
      el.hidden = !now.length;
      if (now.join("\n") === names.join("\n")) return;
      const keep = select.value;
      names = now;
      fill(select, now.map((n) => h("option", { value: n }, n)));
      if (now.includes(keep)) select.value = keep;
      draw();
    },
  };
}
