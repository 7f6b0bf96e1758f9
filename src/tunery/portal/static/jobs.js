// Fine-tuning jobs: the list, and one job live — status, progress, elapsed time and ETA, loss and
// accuracy charts that grow from metrics events, checkpoints with Deploy, the event log, and
// pause / resume / cancel (the API's 409 message is shown when it refuses).

import { api, fileText, listAll } from "./api.js";
import { lineChart } from "./charts.js";
import { openDeployDialog } from "./models.js";
import {
  alertBox, badge, details, fill, formatDate, formatDuration, formatMetric, formatNumber, formatTime, h, now, pageHeader,
  poll, progressBar, shortId, table,
} from "./ui.js";

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const PAUSABLE = new Set(["running", "pausing"]);

const jobPath = (id) => `/fine_tuning/jobs/${encodeURIComponent(id)}`;

function hyper(job) {
  const method = job.method && job.method.type;
  return (method && job.method[method] && job.method[method].hyperparameters) || job.hyperparameters || {};
}

function jobDuration(job) {
  if (!job.finished_at) return TERMINAL.has(job.status) ? "—" : formatDuration(now() - job.created_at);
  return formatDuration(job.finished_at - job.created_at);
}

export async function list(main, { learnProject }) {
  const alert = alertBox();
  const listing = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  fill(main,
    pageHeader("Fine-tuning", h("a", { class: "btn btn-primary", href: "#/jobs/new" }, "Create a fine-tuned model")),
    h("p", { class: "lead" }, "Jobs train a LoRA adapter on your data. Training runs in the background; ",
      "open a job to watch its loss fall, its checkpoints appear and its events as they happen."),
    alert, listing);

  async function refresh() {
    try {
      const jobs = await listAll("/fine_tuning/jobs", { max: 200 });
      if (jobs[0]) learnProject(jobs[0].organization_id);
      fill(listing, table([
        { label: "Job", cell: (j) => h("a", { href: `#/jobs/${j.id}` }, h("code", {}, shortId(j.id))) },
        { label: "Status", cell: (j) => badge(j.status) },
        { label: "Base model", cell: (j) => h("code", {}, j.model) },
        { label: "Method", cell: (j) => (j.method && j.method.type) || "supervised", class: "hide-sm" },
        { label: "Fine-tuned model", cell: (j) => (j.fine_tuned_model ? h("code", {}, j.fine_tuned_model) : "—"), class: "hide-md" },
        { label: "Created", cell: (j) => formatDate(j.created_at), class: "hide-sm" },
        { label: "Duration", cell: jobDuration, class: "num hide-sm" },
      ], jobs, { caption: "Fine-tuning jobs", empty: "No fine-tuning jobs yet. Upload data, then create a fine-tuned model." }));
    } catch (error) {
      alert.show(error);
    }
  }
  return poll(refresh, 3000);
}

/** Metrics by step, from metrics events (while running) or results.csv (when done). */
function fromCsv(text) {
  const [head, ...rows] = text.trim().split(/\r?\n/);
  const cols = head.split(",");
  return rows.map((row) => {
    const cells = row.split(",");
    const out = {};
    cols.forEach((c, i) => { if (cells[i] !== "" && cells[i] !== undefined) out[c] = Number(cells[i]); });
    return out;
  });
}

export async function detail(main, { params: [id], learnProject }) {
  const alert = alertBox();
  const state = { job: null, events: [], seen: new Set(), metrics: new Map(), csv: false, checkpoints: [], total: null };
  const el = {
    header: h("div"), summary: h("section", { class: "card summary", "aria-label": "Status" }),
    charts: h("div", { class: "charts" }), checkpoints: h("div"), details: h("div", { class: "card" }),
    events: h("ol", { class: "events" }),
  };
  fill(main,
    h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Fine-tuning")),
    el.header, alert, el.summary,
    h("section", { "aria-labelledby": "metrics-h" }, h("h2", { id: "metrics-h" }, "Metrics"),
      el.hint = h("p", { class: "muted" }, "Loss should fall and token accuracy rise. If validation loss climbs while training loss ",
        "keeps falling, the model is overfitting: try fewer epochs or a smaller learning rate multiplier."),
      el.charts),
    h("section", { "aria-labelledby": "ckpt-h" }, h("h2", { id: "ckpt-h" }, "Checkpoints"), el.checkpoints),
    h("div", { class: "two-col" },
      h("section", { "aria-labelledby": "details-h" }, h("h2", { id: "details-h" }, "Details"), el.details),
      h("section", { "aria-labelledby": "events-h" }, h("h2", { id: "events-h" }, "Events"), h("div", { class: "card events-card", role: "log", "aria-live": "polite", "aria-label": "Events, newest first", tabindex: "0" }, el.events))));

  const progress = progressBar("Training progress");
  const clock = { elapsed: h("span"), eta: h("span") };

  async function act(action, button) {
    alert.show(null);
    button.disabled = true;
    try {
      state.job = await api(`${jobPath(id)}/${action}`, { method: "POST" });
      drawHeader();
      drawSummary();
      await refresh();
    } catch (error) {
      alert.show(error);
    } finally {
      button.disabled = false;
    }
  }

  function drawHeader() {
    const job = state.job;
    const buttons = [];
    if (!TERMINAL.has(job.status) && job.status !== "paused") {
      const b = h("button", { type: "button", class: "btn", disabled: job.status === "pausing" }, "Pause");
      b.addEventListener("click", () => act("pause", b));
      buttons.push(b);
    }
    if (job.status === "paused") {
      const b = h("button", { type: "button", class: "btn btn-primary" }, "Resume");
      b.addEventListener("click", () => act("resume", b));
      buttons.push(b);
    }
    if (!TERMINAL.has(job.status)) {
      const b = h("button", { type: "button", class: "btn btn-danger" }, "Cancel job");
      b.addEventListener("click", () => confirm("Cancel this job? Training stops and cannot be resumed.") && act("cancel", b));
      buttons.push(b);
    }
    const title = job.user_provided_suffix ? `${job.user_provided_suffix} · ${shortId(job.id)}` : job.id;
    const keep = el.header.querySelector("h1") === document.activeElement;
    fill(el.header, pageHeader(title, ...buttons));
    if (keep) el.header.querySelector("h1").focus();
  }

  function progressInfo() {
    const job = state.job;
    if (job.progress) return { step: job.progress.step, total: job.progress.total_steps || state.total };
    const last = state.events.find((e) => e.type === "metrics");
    return { step: last && last.data ? Math.round(last.data.step) : 0, total: state.total };
  }

  function startedAt() {
    const started = state.events.filter((e) => e.message === "Job started." || e.message === "Training started.");
    return started.length ? Math.min(...started.map((e) => e.created_at)) : null;
  }

  function tick() {
    const job = state.job;
    if (!job) return;
    const start = startedAt();
    const end = job.finished_at || (TERMINAL.has(job.status) ? null : now());
    clock.elapsed.textContent = start && end ? formatDuration(end - start) : "not started";
    if (job.estimated_finish && !TERMINAL.has(job.status)) {
      const left = job.estimated_finish - now();
      clock.eta.textContent = left > 0 ? `${formatDuration(left)} left (about ${formatTime(job.estimated_finish)})` : "any moment now";
    } else {
      clock.eta.textContent = job.status === "succeeded" ? "finished" : TERMINAL.has(job.status) ? "—" : "estimating…";
    }
  }

  function drawSummary() {
    const job = state.job;
    const { step, total } = progressInfo();
    const fraction = job.status === "succeeded" ? 1 : total ? step / total : 0;
    progress.set(fraction, total ? `Step ${formatNumber(step)} of ${formatNumber(total)}` : step ? `Step ${formatNumber(step)}` : "Not started");
    const tokens = job.trained_tokens ?? (job.progress && job.progress.trained_tokens);
    fill(el.summary,
      h("div", { class: "summary-row" },
        h("div", {}, h("span", { class: "label" }, "Status "), h("span", { "aria-live": "polite" }, badge(job.status))),
        h("div", {}, h("span", { class: "label" }, "Elapsed "), clock.elapsed),
        h("div", {}, h("span", { class: "label" }, "ETA "), clock.eta),
        h("div", {}, h("span", { class: "label" }, "Trained tokens "), formatNumber(tokens))),
      progress,
      job.error ? h("p", { class: "alert", role: "alert" }, h("strong", {}, `Failed (${job.error.code}): `), job.error.message,
        job.error.param ? ` (${job.error.param})` : "") : null,
      job.fine_tuned_model ? h("p", {}, "Fine-tuned model: ", h("code", {}, job.fine_tuned_model), " ",
        h("a", { href: `#/playground?model=${encodeURIComponent(job.fine_tuned_model)}` }, "Try it in the playground")) : null);
    tick();
  }

  function drawDetails() {
    const job = state.job;
    const hp = hyper(job);
    const link = (fid) => (fid ? h("a", { href: `#/files/${fid}` }, h("code", {}, fid)) : "none");
    fill(el.details, details([
      ["Job ID", h("code", {}, job.id)],
      ["Base model", h("code", {}, job.model)],
      ["Method", (job.method && job.method.type) || "supervised"],
      ["Training file", link(job.training_file)],
      ["Validation file", link(job.validation_file)],
      ["Epochs", String(hp.n_epochs)],
      ["Batch size", String(hp.batch_size)],
      ["Learning rate multiplier", String(hp.learning_rate_multiplier)],
      hp.beta !== undefined ? ["Beta", String(hp.beta)] : null,
      ["Seed", String(job.seed)],
      ["Suffix", job.user_provided_suffix || "—"],
      job.trainingType ? ["Training type", job.trainingType] : null,
      ["Created", formatDate(job.created_at)],
      ["Finished", formatDate(job.finished_at)],
      ["Results", job.result_files.length
        ? job.result_files.map((f) => h("button", { type: "button", class: "btn btn-link", onclick: () => download(f) }, "results.csv"))
        : "—"],
    ]));
  }

  async function download(fileId) {
    try {
      const url = URL.createObjectURL(new Blob([await fileText(fileId)], { type: "text/csv" }));
      h("a", { href: url, download: `${id}-results.csv` }).click();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
    } catch (error) { alert.show(error); }
  }

  function drawCharts() {
    const rows = [...state.metrics.values()].sort((a, b) => a.step - b.step);
    const series = (key, name, dots = false) => ({ name, dots, points: rows.filter((r) => r[key] !== undefined && r[key] !== null).map((r) => [r.step, r[key]]) });
    const xMax = TERMINAL.has(state.job.status) ? null : progressInfo().total;
    if (isRft()) {
      el.hint.textContent = "The mean reward should rise. If the training reward keeps climbing while the validation " +
        "reward does not, the model may be reward hacking: check the grader against a few answers.";
      // Reinforcement: the grader's mean reward (training samples each step; the whole validation file every
      // eval_interval steps). Diverging curves hint at reward hacking.
      fill(el.charts,
        lineChart({ title: "Mean reward", xMax, series: [series("train_reward_mean", "Training"), series("valid_reward_mean", "Validation", true)] }),
        lineChart({ title: "KL to the starting model", xMax, series: [series("train_kl", "Training")] }),
        lineChart({ title: "Answer length (tokens)", xMax,
          series: [series("train_completion_tokens_mean", "Training"), series("valid_completion_tokens_mean", "Validation", true)] }));
      return;
    }
    const accuracy = isDpo() ? { title: "Reward accuracy", key: "reward_accuracy" } : { title: "Token accuracy", key: "mean_token_accuracy" };
    fill(el.charts,
      lineChart({ title: "Loss", xMax, series: [series("train_loss", "Training"), series("valid_loss", "Validation"), series("full_valid_loss", "Full validation", true)] }),
      lineChart({ title: accuracy.title, xMax, yFormat: (v) => `${(v * 100).toFixed(1)}%`, bounds: [0, 1], percent: true,
        series: [series(`train_${accuracy.key}`, "Training"), series(`valid_${accuracy.key}`, "Validation"),
          series(`full_valid_${accuracy.key}`, "Full validation", true)] }),
      isDpo() ? lineChart({ title: "Reward margin", xMax,
        series: [series("train_reward_margin", "Training"), series("valid_reward_margin", "Validation"),
          series("full_valid_reward_margin", "Full validation", true)] }) : null);
  }

  // DPO jobs chart how often the chosen reply out-scores the rejected one instead of token accuracy.
  function isDpo() { return Boolean(state.job.method && state.job.method.type === "dpo"); }
  // Reinforcement jobs chart the grader's reward instead of a loss.
  function isRft() { return Boolean(state.job.method && state.job.method.type === "reinforcement"); }

  function drawCheckpoints() {
    const metric = (key) => (c) => formatMetric(c.metrics[key]);
    fill(el.checkpoints, table([
      { label: "Step", cell: (c) => String(c.step_number), class: "num" },
      { label: "Model", cell: (c) => h("code", { class: "wrap" }, c.fine_tuned_model_checkpoint), class: "col-model hide-sm" },
      ...(isRft() ? [
        { label: "Training reward", cell: metric("train_reward_mean"), class: "num" },
        { label: "Validation reward", cell: metric("valid_reward_mean"), class: "num hide-sm" },
      ] : [
        { label: "Training loss", cell: metric("train_loss"), class: "num" },
        { label: "Validation loss", cell: metric("valid_loss"), class: "num hide-sm" },
        { label: "Full validation loss", cell: metric("full_valid_loss"), class: "num hide-sm" },
      ]),
      isRft() ? null : isDpo() ? { label: "Reward accuracy", cell: metric("full_valid_reward_accuracy"), class: "num hide-sm" }
        : { label: "Token accuracy", cell: metric("train_mean_token_accuracy"), class: "num hide-sm" },
      state.job && state.job.evals ? { label: "Eval pass rate", class: "num", cell: (c) => {
        const best = state.job.best_checkpoint && state.job.best_checkpoint.step_number === c.step_number;
        const rate = c.metrics.eval_pass_rate;
        return h("span", { class: best ? "best-checkpoint" : null }, rate === undefined ? "…" : `${(100 * rate).toFixed(1)} %`,
          best ? h("strong", {}, " ★ best") : null);
      } } : null,
      { label: "Created", cell: (c) => formatTime(c.created_at), class: "num hide-lg" },
      { label: "Actions", cell: (c) => h("button", {
        type: "button", class: "btn btn-small", "aria-label": `Deploy step ${c.step_number}`,
        onclick: () => openDeployDialog(c.fine_tuned_model_checkpoint, { step: c.step_number }),
      }, "Deploy") },
    ].filter(Boolean), state.checkpoints, { caption: "Checkpoints", empty: "Checkpoints appear at the end of each epoch (and when a job pauses)." }));
  }

  function drawEvents(fresh) {
    const item = (e) => h("li", { class: `event level-${e.level}` },
      h("time", { datetime: new Date(e.created_at * 1000).toISOString() }, formatTime(e.created_at)),
      e.level !== "info" ? badge(e.level) : null,
      h("span", { class: "message" }, e.message));
    if (fresh === null) fill(el.events, state.events.map(item));
    else el.events.prepend(...fresh.map(item));
  }

  /** New events since the last look: newest first, following `after` until a known one. */
  async function fetchEvents() {
    const fresh = [];
    let after = null;
    for (let pages = 0; pages < 50; pages++) {
      const page = await api(`${jobPath(id)}/events?limit=100${after ? `&after=${after}` : ""}`);
      let known = false;
      for (const e of page.data) {
        if (state.seen.has(e.id)) { known = true; break; }
        fresh.push(e);
      }
      if (known || !page.has_more || !page.data.length) break;
      after = page.data[page.data.length - 1].id;
    }
    for (const e of fresh) {
      state.seen.add(e.id);
      if (e.type === "metrics" && e.data && !state.csv) state.metrics.set(e.data.step, { ...state.metrics.get(e.data.step), ...e.data });
      const m = /^Step (\d+)\/(\d+)/.exec(e.message);
      if (m && !state.total) state.total = Number(m[2]);
    }
    const initial = state.events.length === 0;
    state.events = [...fresh, ...state.events];
    if (fresh.length) drawEvents(initial ? null : fresh);
    return fresh.length;
  }

  async function refresh() {
    const before = state.job && state.job.status;
    state.job = await api(jobPath(id));
    learnProject(state.job.organization_id);
    const changed = await fetchEvents();
    if (state.job.status !== before) { drawHeader(); drawDetails(); }
    const needCheckpoints = changed || state.job.status !== before;
    if (needCheckpoints) {
      state.checkpoints = (await api(`${jobPath(id)}/checkpoints?limit=100`)).data;
      drawCheckpoints();
    }
    if (state.job.status === "succeeded" && state.job.result_files.length && !state.csv) {
      try {
        const rows = fromCsv(await fileText(state.job.result_files[0]));
        state.metrics = new Map(rows.filter((r) => r.step !== undefined).map((r) => [r.step, r]));
        state.csv = true;
      } catch (error) { console.warn("results.csv", error); }
    }
    if (changed || state.job.status !== before) drawCharts();
    drawSummary();
    // One more look after the job ends: its last events and results.csv may land just after the status.
    if (TERMINAL.has(state.job.status)) { if (state.settled) stop(); state.settled = true; }
  }

  let stopped = false;
  let timer = null;
  const stop = () => { stopped = true; clearTimeout(timer); };
  const loop = async () => {
    try { await refresh(); } catch (error) { alert.show(error); if (error.status === 404) stop(); }
    if (!stopped) timer = setTimeout(loop, 1500);
  };
  await loop();
  const ticker = setInterval(tick, 1000);
  return () => { stop(); clearInterval(ticker); };
}
