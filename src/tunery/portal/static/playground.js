// The playground: chat with a deployment or a model, with streamed replies; or send one prompt
// to two models at once (say the base model and a fine-tune) and watch both answers stream in.

import { api, fileText, streamChat } from "./api.js";
import { alertBox, fill, h, pageHeader } from "./ui.js";

const SETTINGS = "tunery.playground";

function optionsFor(deployments, models) {
  const opt = (value, label) => h("option", { value }, label || value);
  return [
    deployments.length ? h("optgroup", { label: "Deployments" }, deployments.map((d) => opt(d.id, `${d.id} (${d.model})`))) : null,
    h("optgroup", { label: "Fine-tuned models" }, models.filter((m) => m.fine_tune).map((m) => opt(m.id))),
    h("optgroup", { label: "Base models" }, models.filter((m) => !m.fine_tune).map((m) => opt(m.id))),
  ];
}

/** One conversation: a model picker, its transcript and its own message history. */
function pane(label, id, options, initial) {
  const select = h("select", { id }, options);
  if (initial) select.value = initial;
  if (!select.value && select.options.length) select.selectedIndex = 0; // a model that has since gone
  const log = h("div", { class: "transcript", role: "log", "aria-live": "polite", "aria-label": `${label} conversation` },
    h("p", { class: "empty" }, "Send a message to start."));
  const status = h("p", { class: "pane-status", role: "status" });
  const el = h("section", { class: "pane card", "aria-label": `${label} pane` },
    h("div", { class: "field" }, h("label", { for: id }, label), select), log, status);
  const history = [];
  return {
    el, select, history,
    clear() { history.length = 0; fill(log, h("p", { class: "empty" }, "Send a message to start.")); status.textContent = ""; },
    /** Take over another pane's conversation, so both sides answer the next message from the same history. */
    adopt(other) {
      history.splice(0, history.length, ...other.history.map((m) => ({ ...m })));
      if (!history.length) { this.clear(); return; }
      fill(log, h("p", { class: "hint shared-note" }, "The conversation so far, shared by both sides:"),
        [...other.log.querySelectorAll(".msg")].map((m) => m.cloneNode(true)));
      status.textContent = "";
    },
    log,
    async send(text, settings, signal) {
      log.querySelector(".empty")?.remove();
      history.push({ role: "user", content: text });
      log.append(h("div", { class: "msg msg-user", role: "article", "aria-label": "You said" }, h("span", { class: "who" }, "You"), h("div", { class: "text" }, text)));
      const out = h("div", { class: "text" });
      const bubble = h("div", { class: "msg msg-assistant streaming", role: "article", "aria-label": `Reply from ${select.value}`, "aria-busy": "true" }, h("span", { class: "who" }, select.value), out);
      log.append(bubble);
      status.textContent = "Streaming…";
      const started = performance.now();
      let pieces = 0;
      let first = null;
      let usage = null;
      const messages = settings.system ? [{ role: "system", content: settings.system }, ...history] : [...history];
      try {
        const finish = await streamChat({
          model: select.value, messages, temperature: settings.temperature, top_p: settings.top_p, max_tokens: settings.max_tokens,
          stream_options: { include_usage: true },
        }, {
          signal,
          onDelta: (t) => { first ??= performance.now(); out.textContent += t; pieces++; log.scrollTop = log.scrollHeight; },
          onUsage: (u) => { usage = u; },
        });
        history.push({ role: "assistant", content: out.textContent });
        status.textContent = speed(started, first, (usage && usage.completion_tokens) || pieces, finish);
      } catch (error) {
        history.pop();
        if (error.name === "AbortError") status.textContent = "Stopped.";
        else { bubble.classList.add("msg-error"); out.textContent = error.message; status.textContent = "Failed."; }
      } finally {
        bubble.classList.remove("streaming");
        bubble.removeAttribute("aria-busy");
      }
    },
  };
}

export async function render(main, { query }) {
  const [deps, mods] = await Promise.all([api("/deployments"), api("/models")]);
  const deployments = deps.data.filter((d) => (d.properties && d.properties.provisioningState) !== "Failed");
  const models = mods.data;
  const saved = JSON.parse(localStorage.getItem(SETTINGS) || "{}");
  const wanted = query.get("model") || saved.model || (deployments[0] && deployments[0].id) || (models[0] && models[0].id);

  // The base model under a deployment or a fine-tune: the natural left side of a comparison.
  const baseOf = (name) => {
    const d = deployments.find((x) => x.id === name);
    const m = models.find((x) => x.id === (d ? d.model : name).split(":ckpt-step-")[0]);
    return (d && d.base_model) || (m && m.model) || (models.find((x) => !x.fine_tune) || {}).id;
  };

  const num = (id, label, value, attrs) => {
    const input = h("input", { id, type: "number", value: String(value), ...attrs });
    return [h("div", { class: "field" }, h("label", { for: id }, label), input), input];
  };
  const [tField, temperature] = num("temperature", "Temperature", saved.temperature ?? 0.7, { min: 0, max: 2, step: 0.1 });
  const [mField, maxTokens] = num("max_tokens", "Max tokens", saved.max_tokens ?? 64, { min: 1, max: 4096, step: 1 });
  const [pField, topP] = num("top_p", "Top p", saved.top_p ?? 1, { min: 0, max: 1, step: 0.05 });
  const system = h("textarea", { id: "system", rows: 4, placeholder: "You are a helpful assistant." }, saved.system || "");
  const settings = h("aside", { class: "card settings", "aria-label": "Settings" },
    h("h2", {}, "Settings"),
    h("div", { class: "field" }, h("label", { for: "system" }, "System message"), system,
      h("p", { class: "hint" }, "Use the system message your training examples used.")),
    tField, mField, pField);

  const compare = h("input", { type: "checkbox", id: "compare", checked: query.get("compare") === "1" });
  const right = pane("Model", "model", optionsFor(deployments, models), wanted);
  const left = pane("Compare with", "model-left", optionsFor(deployments, models), baseOf(wanted));
  const panes = h("div", { class: "panes" });

  const message = h("textarea", { id: "message", rows: 2, required: true, placeholder: "Type a message — Enter sends, Shift+Enter adds a line" });
  const send = h("button", { type: "submit", class: "btn btn-primary" }, "Send");
  const stop = h("button", { type: "button", class: "btn", disabled: true }, "Stop");
  const clear = h("button", { type: "button", class: "btn btn-quiet" }, "Clear chat");
  const alert = alertBox();
  const composer = h("form", { class: "composer card" },
    h("label", { for: "message", class: "sr-only" }, "Message"), message,
    h("div", { class: "form-actions" }, clear, stop, send));

  const active = () => (compare.checked ? [left, right] : [right]);
  function layout() {
    right.el.querySelector("label").textContent = compare.checked ? "Fine-tuned model" : "Model";
    fill(panes, active().map((p) => p.el));
    panes.classList.toggle("two", compare.checked);
  }
  compare.addEventListener("change", () => {
    if (compare.checked) left.adopt(right);  // turned on mid-chat: both sides continue the same conversation
    layout();
  });
  right.select.addEventListener("change", () => { left.select.value = baseOf(right.select.value) || left.select.value; });

  let controller = null;
  message.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); composer.requestSubmit(); }
  });
  stop.addEventListener("click", () => controller && controller.abort());
  clear.addEventListener("click", () => { for (const p of [left, right]) p.clear(); message.focus(); });
  composer.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = message.value.trim();
    if (!text || controller) return;
    const opts = {
      system: system.value.trim(), temperature: Number(temperature.value), max_tokens: Number(maxTokens.value), top_p: Number(topP.value),
    };
    localStorage.setItem(SETTINGS, JSON.stringify({ ...opts, model: right.select.value }));
    message.value = "";
    controller = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    alert.show(null);
    try {
      await Promise.all(active().map((p) => p.send(text, opts, controller.signal)));
    } finally {
      controller = null;
      send.disabled = false;
      stop.disabled = true;
      message.focus();
    }
  });

  fill(main,
    pageHeader("Playground", h("label", { class: "toggle", for: "compare" }, compare, " Compare side by side")),
    alert,
    h("div", { class: "playground" }, settings, h("div", { class: "chat" }, panes, composer)));
  layout();
  prefillSystem(system, () => right.select.value, deployments, models);
  right.select.addEventListener("change", () => prefillSystem(system, () => right.select.value, deployments, models));
  return () => controller && controller.abort();
}

/** "First token after 0.21 s · 38 tokens/s · finish: stop" (one streamed piece is one decoded token). */
function speed(started, first, pieces, finish) {
  const end = performance.now();
  const ttft = first === null ? "no tokens" : `first token after ${((first - started) / 1000).toFixed(2)} s`;
  // A rate needs a stretch of decoding to measure: tokens that arrived in one burst give none.
  const rate = first !== null && pieces > 1 && end - first >= 50 ? ` · ${((pieces - 1) / ((end - first) / 1000)).toFixed(1)} tokens/s` : "";
  return `${ttft[0].toUpperCase()}${ttft.slice(1)}${rate} · ${pieces} tokens · finish: ${finish || "stop"}`;
}

const PREFILL_MAX_BYTES = 4 << 20;
let prefilled = "";

/**
 * An empty (or still prefilled) system message takes the one the fine-tune's training data used: the first
 * example's system turn. Files above a few megabytes are not read for this.
 */
async function prefillSystem(box, chosen, deployments, models) {
  if (box.value.trim() && box.value !== prefilled) return;
  try {
    const name = chosen();
    const d = deployments.find((x) => x.id === name);
    const model = models.find((x) => x.id === (d ? d.model : name).split(":ckpt-step-")[0]);
    if (!model || !model.fine_tune) return; // a fine-tuned model's fine_tune is its job's id
    const job = await api(`/fine_tuning/jobs/${encodeURIComponent(model.fine_tune)}`);
    const file = await api(`/files/${encodeURIComponent(job.training_file)}`);
    if (file.bytes > PREFILL_MAX_BYTES) return;
    const line = (await fileText(job.training_file)).split("\n").find((l) => l.trim());
    const turn = line && (JSON.parse(line).messages || []).find((m) => m.role === "system");
    if (!turn || typeof turn.content !== "string" || chosen() !== name) return;
    if (box.value.trim() && box.value !== prefilled) return;
    box.value = prefilled = turn.content;
    box.title = "From the first training example of this fine-tune";
  } catch (error) { console.warn("system message prefill", error); }
}
