// The create-a-fine-tune wizard: method and base model, training data, validation data,
// hyperparameters (auto or values, with what auto resolves to), suffix and seed, then a review
// that shows the exact request JSON. Errors from the API land next to the field they name.

import { api, BASE, listAll } from "./api.js";
import { fileSummary, uploader, waitForFile } from "./files.js";
import { alertBox, fill, formatDuration, formatNumber, h, pageHeader } from "./ui.js";

const STEPS = [
  { id: "model", title: "Method and base model" },
  { id: "training", title: "Training data" },
  { id: "validation", title: "Validation data" },
  { id: "params", title: "Parameters" },
  { id: "review", title: "Review and submit" },
];
// Which step holds the field an API error's `param` names.
const FIELD_STEP = {
  model: "model", method: "model", type: "model", training_file: "training", validation_file: "validation",
  n_epochs: "params", batch_size: "params", learning_rate_multiplier: "params", beta: "params", seed: "params",
  suffix: "params", hyperparameters: "params", lora: "params", lora_rank: "params", lora_alpha: "params",
  lora_target_modules: "params", max_seq_len: "params", warmup_ratio: "params",
};
const BASE_LEARNING_RATE = 2e-4;
// Words for the fields an API error's `param` path ends with (the path itself is for programs).
const FIELD_LABELS = {
  n_epochs: "Number of epochs", batch_size: "Batch size", learning_rate_multiplier: "Learning rate multiplier",
  beta: "Beta", seed: "Seed", suffix: "Suffix", training_file: "Training file", validation_file: "Validation file",
  model: "Base model", lora_rank: "LoRA rank", lora_alpha: "LoRA alpha", lora_target_modules: "Target modules",
  max_seq_len: "Max sequence length", warmup_ratio: "Warm-up ratio",
};
// Tunery's training extensions (the "Advanced" section): the wizard field, the API param it sends.
export const ADVANCED = ["lora_rank", "lora_alpha", "lora_target_modules", "max_seq_len", "warmup_ratio"];
const CHECKED_FIELDS = ["n_epochs", "batch_size", "learning_rate_multiplier", "beta", "suffix", "seed", ...ADVANCED];

/** The wizard field an API error's `param` names: its last part ("lora.rank" is the field lora_rank). */
export const paramField = (param) => param.replace(/^lora\./, "lora_").split(".").pop();
const moduleNames = (value) => value.split(",").map((x) => x.trim()).filter(Boolean);

/** An API error as a sentence for people: the param path at its start becomes the field's name. */
export function sentence(error) {
  const message = error.message || String(error);
  if (!error.param) return message;
  const name = FIELD_LABELS[paramField(error.param)];
  return message.startsWith(error.param) && name ? name + message.slice(error.param.length) : message;
}

/**
 * The problem with a typed value under the API's own rules (GET /fine_tuning/rules), or null.
 * Empty means auto (or none) and is always fine.
 */
export function checkValue(rules, key, value) {
  if (!rules || value === "" || value === null || value === undefined) return null;
  if (key === "suffix") {
    return new RegExp(rules.suffix.pattern).test(value) ? null : `Use ${rules.suffix.description}.`;
  }
  if (key === "lora_target_modules") {
    const r = rules.advanced[key];
    const names = moduleNames(String(value));
    const bad = names.find((x) => !new RegExp(r.pattern).test(x));
    if (bad) return `“${bad}” is not a layer name: letters, digits and _ (such as q_proj).`;
    if (!names.length || names.length > r.max_items) return `List 1 to ${r.max_items} layer names, separated by commas.`;
    return null;
  }
  const r = key === "seed" ? rules.seed : (rules.hyperparameters[key] || (rules.advanced || {})[key]);
  if (!r) return null;
  const n = Number(value);
  if (!Number.isFinite(n)) return "Enter a number, or leave it empty for auto.";
  if (r.integer && !Number.isInteger(n)) return `Enter a whole number from ${r.min} to ${r.max}.`;
  const low = r.min_exclusive ? n <= r.min : n < r.min;
  if (low || n > r.max) {
    return r.min_exclusive ? `Must be greater than ${r.min} and at most ${r.max} (you typed ${value}).`
      : `Must be between ${r.min} and ${r.max} (you typed ${value}).`;
  }
  return null;
}

/** Trained tokens per second on this server, from this project's finished jobs on `model` (queue time
 * included, so it errs on the slow side); null without such a job. */
export function measuredSpeed(jobs, model) {
  const done = jobs.filter((j) => j.status === "succeeded" && j.model === model && j.trained_tokens > 0
    && j.finished_at > j.created_at).slice(0, 10);
  if (!done.length) return null;
  const tokens = done.reduce((sum, j) => sum + j.trained_tokens, 0);
  const seconds = done.reduce((sum, j) => sum + (j.finished_at - j.created_at), 0);
  return { tokensPerSecond: tokens / seconds, jobs: done.length };
}

// Spec §6.2, as the server resolves "auto" (Python's round() rounds halves to even).
export function autoEpochs(n) {
  n = Math.max(n, 1);
  if (n * 3 < 100) return Math.min(25, Math.floor(100 / n));
  if (n * 3 > 25000) return Math.max(1, Math.floor(25000 / n));
  return 3;
}
function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}
// Auto batch size and learning rate, as the server resolves them (tunery.domain.jobs): enough examples for
// ~1,024 tokens a step, but at least 24 optimizer steps over the run and at most 64 a step; the learning-rate
// multiplier is √batch (1–8) for supervised jobs. Without token statistics: Azure's 0.2 % rule.
export const TARGET_STEP_TOKENS = 1024, MIN_AUTO_STEPS = 24, MAX_AUTO_BATCH = 64;
export function autoBatch(n, tokensMean, epochs) {
  if (!tokensMean) return Math.max(1, Math.min(256, roundHalfEven(0.002 * n)));
  const byTokens = Math.max(1, roundHalfEven(TARGET_STEP_TOKENS / tokensMean));
  const bySteps = Math.max(1, Math.floor((Math.max(n, 1) * Math.max(epochs, 1)) / MIN_AUTO_STEPS));
  return Math.max(1, Math.min(byTokens, bySteps, MAX_AUTO_BATCH, Math.max(n, 1)));
}
export const autoMultiplier = (batch) => Math.round(Math.min(8, Math.max(1, Math.sqrt(batch))) * 1000) / 1000;

export async function render(main, { query, navigate }) {
  const s = {
    step: 0, method: "supervised", model: query.get("model") || "", training_file: query.get("training_file") || "",
    validation_file: "", n_epochs: "", batch_size: "", learning_rate_multiplier: "", beta: "", suffix: "", seed: "",
    error: null,
  };
  // "Clone settings" on a job page opens the wizard with that job's settings in the query.
  for (const k of ADVANCED) s[k] = "";
  s.advancedOpen = false;
  for (const k of ["method", "validation_file", "n_epochs", "batch_size", "learning_rate_multiplier", "beta", "suffix", "seed", ...ADVANCED]) if (query.get(k)) s[k] = query.get(k);
  if (ADVANCED.some((k) => s[k] !== "")) s.advancedOpen = true;  // cloned settings: show what differs
  const [modelList, fileList, rules, jobPage] = await Promise.all([
    api("/models"), listAll("/files"), api("/fine_tuning/rules"), api("/fine_tuning/jobs?limit=100"),
  ]);
  const models = modelList.data.filter((m) => !m.capabilities || m.capabilities.fine_tune);
  let files = fileList.filter((f) => f.purpose === "fine-tune");
  if (!s.model && models.length) s.model = (models.find((m) => !m.fine_tune) || models[0]).id;

  const stepper = h("ol", { class: "stepper", "aria-label": "Steps" });
  const panel = h("div", { class: "card wizard-panel" });
  fill(main,
    h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Fine-tuning")),
    pageHeader("Create a fine-tuned model"),
    h("div", { class: "wizard" }, stepper, panel));

  const pastJobs = jobPage.data;
  const range = (key) => {
    const r = rules.hyperparameters[key];
    return r.min_exclusive ? `more than ${r.min}, at most ${r.max}` : `${r.min}–${r.max}`;
  };
  const processed = () => files.filter((f) => f.status === "processed");
  const fileById = (id) => files.find((f) => f.id === id);
  const statistics = () => {
    const f = fileById(s.training_file);
    return f && f.validation && f.validation.statistics ? f.validation.statistics : null;
  };
  const examples = () => (statistics() ? statistics().examples : null);
  // Continuing a fine-tune trains its own adapter further: its LoRA shape is fixed (the API refuses `lora` then).
  const continuing = () => models.some((m) => m.id === s.model && m.fine_tune);

  function request() {
    const hp = {};
    for (const k of ["n_epochs", "batch_size", "learning_rate_multiplier"].concat(s.method === "dpo" ? ["beta"] : [])) {
      hp[k] = s[k] === "" ? "auto" : Number(s[k]);
    }
    const body = { model: s.model, training_file: s.training_file };
    if (s.validation_file) body.validation_file = s.validation_file;
    if (s.suffix) body.suffix = s.suffix;
    if (s.seed !== "") body.seed = Number(s.seed);
    body.method = { type: s.method, [s.method]: { hyperparameters: hp } };
    const lora = {};
    if (s.lora_rank !== "") lora.rank = Number(s.lora_rank);
    if (s.lora_alpha !== "") lora.alpha = Number(s.lora_alpha);
    if (s.lora_target_modules.trim() !== "") lora.target_modules = moduleNames(s.lora_target_modules);
    if (Object.keys(lora).length && !continuing()) body.lora = lora;
    if (s.max_seq_len !== "") body.max_seq_len = Number(s.max_seq_len);
    if (s.warmup_ratio !== "") body.warmup_ratio = Number(s.warmup_ratio);
    return body;
  }

  function go(index) {
    s.step = index;
    draw();
    const first = panel.querySelector("[aria-invalid=true], input:not([type=hidden]), select, textarea, button[type=submit]");
    if (first) first.focus();
  }

  // A field's problem: the value as typed under the API's rules first, then what the API said at submit.
  function problemOf(name) {
    const typed = checkValue(rules, name, s[name]);
    if (typed) return typed;
    if (!s.error || !s.error.param || paramField(s.error.param) !== name) return null;
    const text = sentence(s.error);
    const label = FIELD_LABELS[name];
    if (!label || !text.startsWith(label)) return text;
    const rest = text.slice(label.length).trim();
    return rest.charAt(0).toUpperCase() + rest.slice(1);
  }

  /** Show or clear a field's problem in place (focus and caret stay where they are). */
  function showProblem(name, control, message) {
    const box = document.getElementById(`${name}-error`);
    if (box) { box.textContent = message || ""; box.hidden = !message; }
    if (message) control.setAttribute("aria-invalid", "true"); else control.removeAttribute("aria-invalid");
  }

  const invalidFields = () => CHECKED_FIELDS.filter((k) => (k !== "beta" || s.method === "dpo") && checkValue(rules, k, s[k]));

  function field(name, label, control, hint) {
    const err = problemOf(name);
    control.id = name;
    control.name = name;
    const hintEl = hint ? h("p", { class: "hint", id: `${name}-hint` }, hint) : null;
    const errEl = h("p", { class: "field-error", id: `${name}-error`, hidden: !err }, err || "");
    control.setAttribute("aria-describedby", [hintEl ? `${name}-hint` : "", `${name}-error`].join(" ").trim());
    if (err) control.setAttribute("aria-invalid", "true");
    return h("div", { class: "field" }, h("label", { for: name }, label), control, hintEl, errEl);
  }

  // Selects redraw the step; typed values only refresh the explanation, so focus and caret stay put.
  let explainBox = null;
  function bind(control, key) {
    control.value = s[key];
    const select = control.tagName === "SELECT";
    control.addEventListener(select ? "change" : "input", () => {
      s[key] = control.value;
      if (s.error && paramField(s.error.param || "") === key) s.error = null;  // the user is fixing it
      if (select) { draw(); document.getElementById(key)?.focus(); return; }
      showProblem(key, control, problemOf(key));  // checked as typed, with the API's rules
      if (explainBox) fill(explainBox, explain());
    });
    return control;
  }

  function fileOptions(none) {
    const opts = processed().map((f) => h("option", { value: f.id }, `${f.filename} — ${fileSummary(f)}`));
    return [none ? h("option", { value: "" }, none) : h("option", { value: "", disabled: true }, "Choose a processed file"), ...opts];
  }

  function dataStep(key, label, none) {
    const select = bind(h("select", { required: !none }, fileOptions(none)), key);
    select.value = s[key];
    const chosen = fileById(s[key]);
    const format = chosen && chosen.validation && chosen.validation.format;
    const wanted = s.method === "dpo" ? "preference" : "chat";
    const status = h("p", { class: "hint", role: "status" });
    const up = uploader({
      label: "Upload a new file",
      onUploaded: async (created) => {
        status.textContent = `Checking ${created.filename}…`;
        const done = await waitForFile(created.id);
        files = [done, ...files.filter((f) => f.id !== done.id)];
        if (done.status === "processed") { s[key] = done.id; draw(); } else {
          fill(status, `${done.filename} has problems and cannot be used. `, h("a", { href: `#/files/${done.id}` }, "See each problem"));
        }
      },
    });
    return [
      field(key, label, select, none ? "Optional: a held-out file to measure validation loss and accuracy." : "Only files that passed the checks are listed."),
      format && format !== wanted ? h("p", { class: "notice notice-warn" },
        `This file is in ${format} format; ${s.method === "dpo" ? "DPO needs preference pairs" : "supervised training needs chat examples"}.`) : null,
      chosen ? h("p", { class: "muted" }, chosen.status_details || "") : null,
      h("div", { class: "or" }, "or"), up, status,
    ];
  }

  function explain() {
    const n = examples();
    if (!n) return h("p", { class: "hint" }, "Pick training data to see what “auto” resolves to.");
    const ep = s.n_epochs === "" ? autoEpochs(n) : Number(s.n_epochs);
    const tokensMean = statistics().tokens_mean;
    const bs = s.batch_size === "" ? autoBatch(n, tokensMean, ep) : Number(s.batch_size);
    const autoMult = s.method === "dpo" ? 1 : autoMultiplier(bs);
    const mult = s.learning_rate_multiplier === "" ? autoMult : Number(s.learning_rate_multiplier);
    const batchWhy = tokensMean
      ? `auto: ~${formatNumber(TARGET_STEP_TOKENS)} tokens a step at ${tokensMean.toFixed(0)} tokens an example, ` +
        `keeping at least ${MIN_AUTO_STEPS} steps in the run and at most ${MAX_AUTO_BATCH} examples a step — ` +
        "a full step keeps the processor busy, one short example a step leaves it mostly idle"
      : `auto: 0.2% of ${formatNumber(n)} examples = ${(0.002 * n).toFixed(1)}, rounded and kept within 1–256`;
    let why;
    if (n * 3 < 100) why = `${formatNumber(n)} examples × 3 epochs is under 100, so epochs = min(25, ⌊100 ÷ ${n}⌋) = ${autoEpochs(n)}`;
    else if (n * 3 > 25000) why = `${formatNumber(n)} examples × 3 epochs is over 25,000, so epochs = max(1, ⌊25,000 ÷ ${n}⌋) = ${autoEpochs(n)}`;
    else why = `${formatNumber(n)} examples × 3 epochs is between 100 and 25,000, so the target of 3 epochs holds`;
    const steps = Number.isFinite(ep) && bs > 0 ? Math.ceil(n / bs) * ep : null;
    const tokens = Number.isFinite(ep) && statistics().tokens_total ? statistics().tokens_total * ep : null;
    const speed = measuredSpeed(pastJobs, s.model);
    return h("div", { class: "explain", "aria-live": "polite" },
      h("h3", {}, "What the job will use"),
      h("ul", {},
        h("li", {}, h("strong", {}, `Epochs: ${ep}`), s.n_epochs === "" ? ` (auto: ${why})` : " (your value)"),
        h("li", {}, h("strong", {}, `Batch size: ${bs}`), s.batch_size === "" ? ` (${batchWhy})` : " (your value)"),
        h("li", {}, h("strong", {}, `Learning rate: ${(BASE_LEARNING_RATE * mult).toExponential(1)}`),
          s.learning_rate_multiplier === ""
            ? (s.method === "dpo" ? " (auto: multiplier 1 × the base LoRA rate 2e-4)"
              : ` (auto: multiplier √${bs} = ${mult} × the base LoRA rate 2e-4: a larger batch takes a longer step)`)
            : ` (your multiplier ${mult} × the base LoRA rate 2e-4)`),
        s.method === "dpo" ? h("li", {}, h("strong", {}, `Beta: ${s.beta === "" ? 0.1 : s.beta}`), s.beta === "" ? " (auto)" : "") : null,
        steps ? h("li", {}, `About ${formatNumber(steps)} training steps (⌈${formatNumber(n)} ÷ ${bs}⌉ × ${ep}).`) : null,
        tokens ? h("li", { class: "estimate-tokens" }, h("strong", {}, `Trained tokens: ${formatNumber(tokens)}`),
          ` (${formatNumber(statistics().tokens_total)} tokens × ${ep} epochs)`) : null,
        tokens ? h("li", { class: "estimate-time" }, speed
          ? [h("strong", {}, `Expected duration: about ${formatDuration(tokens / speed.tokensPerSecond)}`),
            ` on this server (measured ${formatNumber(speed.tokensPerSecond)} tokens/s over your last ${speed.jobs} finished `
            + `job${speed.jobs > 1 ? "s" : ""} on ${s.model}, waiting time included)`]
          : `Expected duration: not measured yet — no finished job on ${s.model} in this project to time this server by.`) : null));
  }

  /** Tunery's training extensions, collapsed: each with what it does, its default here and when to change it. */
  function advancedSection() {
    const a = rules.advanced;
    const span = (k) => `${a[k].min}–${a[k].max}`;
    const targets = a.lora_target_modules.default ? a.lora_target_modules.default.join(", ")
      : "the attention and MLP projections (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)";
    const fixed = continuing() ? { disabled: true } : {};
    const parent = continuing()
      ? h("p", { class: "notice" }, "You are continuing a fine-tuned model: it keeps its own LoRA rank, alpha and target modules; "
        + "only the sequence length and warm-up below apply.") : null;
    const box = h("details", { class: "advanced", open: s.advancedOpen },
      h("summary", {}, "Advanced: LoRA, sequence length, warm-up"),
      h("p", { class: "muted" }, "Leave a value empty for this server's default (shown in each box). Most jobs never need these."),
      parent,
      h("div", { class: "grid-2" },
        field("lora_rank", "LoRA rank", number("lora_rank", { step: "1", placeholder: String(a.lora_rank.default), ...fixed }),
          `Size of the trained adapter matrices (${span("lora_rank")}; default ${a.lora_rank.default}). Higher learns more `
          + "and costs memory and time; try 32–64 when the loss plateaus high on a large, varied dataset, 4–8 for small data."),
        field("lora_alpha", "LoRA alpha", number("lora_alpha", { step: "1", placeholder: String(a.lora_alpha.default), ...fixed }),
          `Scales the adapter's update by alpha ÷ rank (${span("lora_alpha")}; default ${a.lora_alpha.default}). `
          + "Keep it about twice the rank when you change the rank; raise it for a stronger update."),
        field("lora_target_modules", "Target modules",
          bind(h("input", { type: "text", autocomplete: "off", spellcheck: "false", placeholder: a.lora_target_modules.default ? a.lora_target_modules.default.join(", ") : "default", ...fixed }), "lora_target_modules"),
          `Layers the adapter trains, separated by commas (default: ${targets}). Fewer layers (q_proj, v_proj) train faster `
          + "with a smaller adapter; a name the base model lacks fails the job."),
        field("max_seq_len", "Max sequence length", number("max_seq_len", { step: "1", placeholder: String(a.max_seq_len.default) }),
          `Tokens in one training row (${span("max_seq_len")}; default ${a.max_seq_len.default}). Longer examples are cut `
          + "to it; lower it to save memory, raise it when the file's longest examples are longer."),
        field("warmup_ratio", "Warm-up ratio", number("warmup_ratio", { placeholder: String(a.warmup_ratio.default) }),
          `Share of the steps over which the learning rate climbs from near zero to its peak (${span("warmup_ratio")}; `
          + `default ${a.warmup_ratio.default}). Try 0.03–0.1 when the loss jumps or spikes in the first steps.`)));
    box.addEventListener("toggle", () => { s.advancedOpen = box.open; });
    return box;
  }

  const number = (key, extra = {}) => bind(h("input", { type: "number", step: "any", placeholder: "auto", inputmode: "decimal", ...extra }), key);

  const bodies = {
    model: () => [
      h("fieldset", {}, h("legend", {}, "Training method"),
        [["supervised", "Supervised fine-tuning", "Learn to answer like the assistant turns in your chat examples."],
          ["dpo", "Direct preference optimization (DPO)", "Learn to prefer one answer over another from preference pairs."]]
          .map(([value, label, hint]) => h("label", { class: "choice" },
            h("input", { type: "radio", name: "method", value, checked: s.method === value, onchange: () => { s.method = value; draw(); } }),
            h("span", {}, h("strong", {}, label), h("span", { class: "hint" }, hint))))),
      field("model", "Base model", bind(h("select", { required: true },
        h("optgroup", { label: "Base models" }, models.filter((m) => !m.fine_tune).map((m) => h("option", { value: m.id }, m.id))),
        models.some((m) => m.fine_tune) ? h("optgroup", { label: "Your fine-tuned models (continuous fine-tuning)" },
          models.filter((m) => m.fine_tune).map((m) => h("option", { value: m.id }, m.id))) : null), "model"),
      "Continuous fine-tuning starts from a fine-tuned model's adapter and trains it further on new data."),
    ],
    training: () => dataStep("training_file", "Training file"),
    validation: () => dataStep("validation_file", "Validation file", "None"),
    params: () => [
      h("p", { class: "muted" }, "Leave a value empty for auto (recommended). Defaults suit most data."),
      h("div", { class: "grid-2" },
        field("n_epochs", "Number of epochs", number("n_epochs"), `Full passes over the training data (${range("n_epochs")}).`),
        field("batch_size", "Batch size", number("batch_size"), `Examples per training step (${range("batch_size")}).`),
        field("learning_rate_multiplier", "Learning rate multiplier", number("learning_rate_multiplier"),
          `Scales the base learning rate of 2e-4 (${range("learning_rate_multiplier")}).`),
        s.method === "dpo" ? field("beta", "Beta", number("beta"), `DPO temperature, typically 0.1–0.5 (${range("beta")}).`) : null,
        field("suffix", "Suffix (optional)", bind(h("input", { type: "text", maxlength: 40, autocomplete: "off" }), "suffix"), "Added to the fine-tuned model's name."),
        field("seed", "Seed (optional)", bind(h("input", { type: "number", step: "1" }), "seed"), "Same seed, same data: the same run.")),
      advancedSection(),
      (explainBox = h("div", {}, explain())),
    ],
    review: () => {
      const body = request();
      const f = fileById(s.training_file);
      const v = fileById(s.validation_file);
      const alert = alertBox();
      if (s.error) {
        const where = STEPS.find((x) => x.id === FIELD_STEP[paramField(s.error.param || "")]);
        alert.show({ message: sentence(s.error) });
        if (where) alert.append(" ", h("button", { type: "button", class: "btn btn-link", onclick: () => go(STEPS.indexOf(where)) }, `Fix it in “${where.title}”`));
      }
      return [
        h("dl", { class: "details" },
          [["Method", s.method === "dpo" ? "DPO" : "Supervised"], ["Base model", s.model],
            ["Training file", f ? `${f.filename} (${fileSummary(f)})` : "—"], ["Validation file", v ? v.filename : "none"],
            ["Suffix", s.suffix || "—"], ["Seed", s.seed || "random"],
            ["Advanced", ADVANCED.filter((k) => s[k] !== "").map((k) => `${FIELD_LABELS[k]} ${s[k]}`).join(" · ") || "this server's defaults"]]
            .map(([k, val]) => h("div", {}, h("dt", {}, k), h("dd", {}, val)))),
        explain(),
        h("h3", {}, "Request"),
        h("pre", { class: "request", "aria-label": "Request JSON" }, h("code", {}, `POST ${BASE}/fine_tuning/jobs\n${JSON.stringify(body, null, 2)}`)),
        alert,
      ];
    },
  };

  async function submitJob(button) {
    button.disabled = true;
    s.error = null;
    try {
      const job = await api("/fine_tuning/jobs", { method: "POST", body: request() });
      navigate(`#/jobs/${job.id}`);
    } catch (error) {
      s.error = error;
      if (ADVANCED.includes(paramField(error.param || ""))) s.advancedOpen = true;
      draw();
      panel.querySelector("[role=alert]").focus?.();
    } finally {
      button.disabled = false;
    }
  }

  function draw() {
    explainBox = null;
    fill(stepper, STEPS.map((step, i) => h("li", {},
      h("button", { type: "button", class: "step", "aria-current": i === s.step ? "step" : null, onclick: () => go(i) },
        h("span", { class: "step-n", "aria-hidden": "true" }, String(i + 1)),
        h("span", { class: "step-label" }, step.title)))));
    const step = STEPS[s.step];
    const last = s.step === STEPS.length - 1;
    const next = h("button", { type: "submit", class: "btn btn-primary" }, last ? "Start fine-tuning" : "Next");
    const form = h("form", { "aria-labelledby": "step-h" },
      h("h2", { id: "step-h" }, `${s.step + 1}. ${step.title}`),
      bodies[step.id](),
      h("div", { class: "form-actions" },
        s.step ? h("button", { type: "button", class: "btn", onclick: () => go(s.step - 1) }, "Back") : null,
        next));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const paramsStep = STEPS.findIndex((x) => x.id === "params");
      if (s.step >= paramsStep && invalidFields().length) {  // never send what the API would refuse
        if (ADVANCED.includes(invalidFields()[0])) s.advancedOpen = true;
        if (s.step !== paramsStep || s.advancedOpen) go(paramsStep);
        document.getElementById(invalidFields()[0])?.focus();
        return;
      }
      if (last) submitJob(next);
      else go(s.step + 1);
    });
    fill(panel, form);
  }

  draw();
}
