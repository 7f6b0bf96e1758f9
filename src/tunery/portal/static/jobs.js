// Fine-tuning jobs: the list (search, status filter, sort, compare), one job live — status, why it waits,
// progress, training time and a smoothed ETA, charts that get every step's loss as it arrives, checkpoints with
// why each is kept, the event log, and the actions legal in the job's state — and several jobs compared.

import { api, fileText, listAll } from "./api.js";
import { lineChart } from "./charts.js";
import { pager } from "./lists.js";
import { openDeployDialog } from "./models.js";
import {
  alertBox, badge, details, fill, formatDate, formatDuration, formatMetric, formatNumber, formatTime, h, now, pageHeader,
  poll, progressBar, shortId, table,
} from "./ui.js";

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const WAITING = new Set(["pending", "queued", "validating_files", "resuming"]);
const JOBS_PAGE = 20;
const COMPARE_MAX = 6;

const jobPath = (id) => `/fine_tuning/jobs/${encodeURIComponent(id)}`;

function hyper(job) {
  const method = job.method && job.method.type;
  return (method && job.method[method] && job.method[method].hyperparameters) || job.hyperparameters || {};
}

function jobDuration(job) {
  if (!job.finished_at) return TERMINAL.has(job.status) ? "—" : formatDuration(now() - job.created_at);
  return formatDuration(job.finished_at - job.created_at);
}

const jobName = (job) => job.user_provided_suffix || job.suffix || shortId(job.id);

/** The wizard, filled with this job's settings (the wizard reads them from the query). */
export function cloneLink(job) {
  const hp = hyper(job);
  const q = new URLSearchParams();
  const put = (k, v) => { if (v !== null && v !== undefined && v !== "" && v !== "auto") q.set(k, String(v)); };
  put("method", (job.method && job.method.type) || "supervised");
  put("model", job.model);
  put("training_file", job.training_file);
  put("validation_file", job.validation_file);
  for (const k of ["n_epochs", "batch_size", "learning_rate_multiplier", "beta"]) put(k, hp[k]);
  put("suffix", job.user_provided_suffix);
  put("seed", job.seed);
  const lora = job.lora || {};
  put("lora_rank", lora.rank);
  put("lora_alpha", lora.alpha);
  put("lora_target_modules", (lora.target_modules || []).join(", "));
  put("max_seq_len", job.max_seq_len);
  put("warmup_ratio", job.warmup_ratio);
  return `#/jobs/new?${q}`;
}

/** id -> filename for the project's files (the job pages show names, not ids). */
async function fileNames() {
  try {
    return new Map((await listAll("/files", { max: 2000 })).map((f) => [f.id, f.filename]));
  } catch { return new Map(); }
}

function jobProgress(job) {
  if (job.status === "succeeded") return h("span", { class: "muted" }, "done");
  const p = job.progress;
  if (!p || !p.total_steps) return TERMINAL.has(job.status) ? "—" : h("span", { class: "muted" }, "not started");
  const pct = Math.round((100 * p.step) / p.total_steps);
  return h("span", { class: "mini-progress", title: `Step ${p.step} of ${p.total_steps}` },
    h("progress", { max: 100, value: pct, "aria-label": `${jobName(job)} progress` }), ` ${pct}%`);
}

export async function list(main, { learnProject, query }) {
  if (query && query.get("compare")) return compare(main, query.get("compare").split(",").filter(Boolean));
  const alert = alertBox();
  const listing = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const chosen = new Set();
  const ui = {
    search: h("input", { type: "search", id: "job-search", placeholder: "Suffix, id, model, file or tag", autocomplete: "off" }),
    status: h("select", { id: "job-status" },
      [["", "All statuses"], ["active", "Active (waiting, running, paused)"], ["succeeded", "Succeeded"], ["failed", "Failed"], ["cancelled", "Cancelled"]]
        .map(([v, t]) => h("option", { value: v }, t))),
    sort: h("select", { id: "job-sort" },
      [["new", "Newest first"], ["old", "Oldest first"], ["name", "Name (suffix)"], ["status", "Status"], ["duration", "Longest first"]]
        .map(([v, t]) => h("option", { value: v }, t))),
    compare: h("button", { type: "button", class: "btn", disabled: true }, "Compare selected"),
  };
  const pages = pager({ pageSize: JOBS_PAGE, onChange: () => draw() });
  ui.compare.addEventListener("click", () => { location.hash = `#/jobs?compare=${[...chosen].join(",")}`; });
  const filters = h("div", { class: "list-filters", role: "search", "aria-label": "Filter jobs" },
    h("div", { class: "field" }, h("label", { for: "job-search" }, "Search"), ui.search),
    h("div", { class: "field" }, h("label", { for: "job-status" }, "Status"), ui.status),
    h("div", { class: "field" }, h("label", { for: "job-sort" }, "Sort"), ui.sort),
    h("div", { class: "field filter-actions" }, ui.compare));
  fill(main,
    pageHeader("Fine-tuning", h("a", { class: "btn btn-primary", href: "#/jobs/new" }, "Create a fine-tuned model")),
    h("p", { class: "lead" }, "Jobs train a LoRA adapter on your data. Training runs in the background; ",
      "open a job to watch its loss fall, its checkpoints appear and its events as they happen. ",
      "Tick two or more jobs to overlay their loss curves."),
    alert, filters, listing, pages.el);

  let jobs = [];
  let names = new Map();
  const text = (j) => [j.id, j.user_provided_suffix, j.model, j.fine_tuned_model, j.status, names.get(j.training_file),
    names.get(j.validation_file), ...Object.entries(j.metadata || {}).flat()].filter(Boolean).join(" ").toLowerCase();
  const ORDER = ["running", "pausing", "resuming", "queued", "pending", "validating_files", "paused", "failed", "cancelled", "succeeded"];

  function draw() {
    const words = ui.search.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const status = ui.status.value;
    let shown = jobs.filter((j) => words.every((w) => text(j).includes(w)));
    if (status === "active") shown = shown.filter((j) => !TERMINAL.has(j.status));
    else if (status) shown = shown.filter((j) => j.status === status);
    const took = (j) => (j.finished_at || now()) - j.created_at;
    const by = {
      new: (a, b) => b.created_at - a.created_at,
      old: (a, b) => a.created_at - b.created_at,
      name: (a, b) => jobName(a).localeCompare(jobName(b)),
      status: (a, b) => ORDER.indexOf(a.status) - ORDER.indexOf(b.status),
      duration: (a, b) => took(b) - took(a),
    }[ui.sort.value];
    shown = [...shown].sort(by);
    ui.compare.disabled = chosen.size < 2;
    const focused = document.activeElement && listing.contains(document.activeElement) ? document.activeElement.id : null;
    const file = (fid) => (fid ? names.get(fid) || shortId(fid) : "—");
    fill(listing, table([
      { label: h("span", { class: "sr-only" }, "Compare"), cell: (j) => h("input", {
        type: "checkbox", id: `pick-${j.id}`, "aria-label": `Compare ${jobName(j)}`, checked: chosen.has(j.id),
        disabled: !chosen.has(j.id) && chosen.size >= COMPARE_MAX,
        onchange: (e) => { if (e.target.checked) chosen.add(j.id); else chosen.delete(j.id); draw(); },
      }) },
      { label: "Job", cell: (j) => h("div", { class: "job-name" },
        h("a", { href: `#/jobs/${j.id}` }, j.user_provided_suffix ? h("strong", {}, j.user_provided_suffix) : h("code", {}, shortId(j.id))),
        j.user_provided_suffix ? h("code", { class: "muted small" }, shortId(j.id)) : null,
        Object.entries(j.metadata || {}).map(([k, v]) => h("span", { class: "tag" }, `${k}: ${v}`))) },
      { label: "Status", cell: (j) => badge(j.status) },
      { label: "Progress", cell: jobProgress, class: "hide-sm" },
      { label: "Training file", cell: (j) => file(j.training_file), class: "hide-sm" },
      { label: "Base model", cell: (j) => h("code", {}, j.model), class: "hide-md" },
      { label: "Method", cell: (j) => (j.method && j.method.type) || "supervised", class: "hide-md" },
      { label: "Fine-tuned model", cell: (j) => (j.fine_tuned_model ? h("code", { class: "wrap" }, j.fine_tuned_model) : "—"), class: "hide-lg" },
      { label: "Created", cell: (j) => formatDate(j.created_at), class: "hide-sm" },
      { label: "Duration", cell: jobDuration, class: "num hide-sm" },
    ], pages.view(shown, jobs.length), { caption: "Fine-tuning jobs", empty: jobs.length ? "No job matches these filters." : "No fine-tuning jobs yet. Upload data, then create a fine-tuned model." }));
    if (focused) document.getElementById(focused)?.focus();
  }
  for (const control of [ui.search, ui.status]) control.addEventListener("input", () => { pages.reset(); draw(); });
  ui.sort.addEventListener("input", draw);

  async function refresh() {
    try {
      const [found, files] = await Promise.all([listAll("/fine_tuning/jobs", { max: 200 }), names.size ? null : fileNames()]);
      jobs = found;
      if (files) names = files;
      if (jobs.some((j) => !names.has(j.training_file))) names = await fileNames();
      if (jobs[0]) learnProject(jobs[0].organization_id);
      alert.show(null);
      draw();
    } catch (error) {
      alert.show(error);
    }
  }
  return poll(refresh, 3000);
}

/** Every step's metrics after `after` (Tunery's /metrics extension), lowest step first. */
async function stepMetrics(id, after = -1) {
  const rows = [];
  for (let pages = 0; pages < 50; pages++) {
    const page = await api(`${jobPath(id)}/metrics?after_step=${after}&limit=1000`);
    rows.push(...page.data);
    if (!page.has_more || !page.data.length) break;
    after = page.data[page.data.length - 1].step;
  }
  return rows;
}

/** Several jobs' curves on one chart each (training loss, full validation loss) and their settings side by side. */
async function compare(main, ids) {
  const alert = alertBox();
  const charts = h("div", { class: "charts" });
  const settings = h("div");
  fill(main, h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Fine-tuning")),
    pageHeader("Compare runs"), alert,
    h("section", { "aria-labelledby": "cmp-charts-h" }, h("h2", { id: "cmp-charts-h" }, "Curves"), charts),
    h("section", { "aria-labelledby": "cmp-settings-h" }, h("h2", { id: "cmp-settings-h" }, "Settings"), settings));
  try {
    const jobs = await Promise.all(ids.slice(0, COMPARE_MAX).map((id) => api(jobPath(id))));
    const rows = await Promise.all(jobs.map((j) => stepMetrics(j.id)));
    const names = await fileNames();
    const series = (key) => jobs.map((j, i) => ({ name: jobName(j), dots: key.startsWith("full_"),
      points: rows[i].filter((r) => r.metrics[key] !== undefined).map((r) => [r.step, r.metrics[key]]) }));
    const views = { train: { smoothing: 0.8 }, valid: {} };
    fill(charts,
      lineChart({ title: "Training loss", series: series("train_loss"), view: views.train, empty: "None of these jobs has trained a step." }),
      lineChart({ title: "Full validation loss", series: series("full_valid_loss"), view: views.valid,
        empty: "None of these jobs has a validation file (or reached an epoch end)." }));
    const cell = (fn) => (j) => fn(j) ?? "—";
    fill(settings, table([
      { label: "Job", cell: (j) => h("a", { href: `#/jobs/${j.id}` }, jobName(j)) },
      { label: "Status", cell: (j) => badge(j.status) },
      { label: "Training file", cell: (j) => names.get(j.training_file) || j.training_file, class: "hide-sm" },
      { label: "Epochs", cell: cell((j) => String(hyper(j).n_epochs)), class: "num" },
      { label: "Batch size", cell: cell((j) => String(hyper(j).batch_size)), class: "num" },
      { label: "LR multiplier", cell: cell((j) => String(hyper(j).learning_rate_multiplier)), class: "num" },
      { label: "Last training loss", cell: (j) => { const r = rows[jobs.indexOf(j)].filter((x) => x.metrics.train_loss !== undefined); return r.length ? formatMetric(r[r.length - 1].metrics.train_loss) : "—"; }, class: "num" },
      { label: "Clone", cell: (j) => h("a", { href: cloneLink(j), "aria-label": `Clone the settings of ${jobName(j)}` }, "Clone settings") },
    ], jobs, { caption: "Compared jobs" }));
  } catch (error) { alert.show(error); }
  return null;
}

/** Seconds spent training: from each start/resume event to the next pause or end (paused time not counted). */
export function trainingSeconds(events, job) {
  let total = 0;
  let since = null;
  for (const e of [...events].sort((a, b) => a.created_at - b.created_at)) {
    const m = e.message;
    if (m === "Job started." || m.startsWith("Job resumed")) since ??= e.created_at;
    else if (since !== null && (m.startsWith("Job paused at step") || m === "Job succeeded." || m.startsWith("Job failed") || m === "Job cancelled.")) {
      total += e.created_at - since;
      since = null;
    }
  }
  if (since !== null) total += (TERMINAL.has(job.status) || job.status === "paused" ? job.finished_at || since : now()) - since;
  return total;
}

/**
 * A steadier ETA: the median of the last few server estimates, and how sure it is (their spread, or "rough"
 * while only a few steps have run).
 */
export function steadyEta(samples, step) {
  if (!samples.length) return null;
  const recent = samples.slice(-8).map((x) => x.finish).sort((a, b) => a - b);
  const finish = recent[Math.floor(recent.length / 2)];
  const spread = (recent[recent.length - 1] - recent[0]) / 2;
  const rough = step < 10 || recent.length < 3;
  return { finish, spread, rough };
}

export async function detail(main, { params: [id], learnProject }) {
  const alert = alertBox();
  const state = { job: null, kept: undefined, events: [], seen: new Set(), metrics: new Map(), lastStep: -1, checkpoints: [], total: null,
    deployed: new Map(), names: new Map(), eta: [], views: {}, figures: {}, notified: false };
  const el = {
    header: h("div"), summary: h("section", { class: "card summary", "aria-label": "Status" }),
    charts: h("div", { class: "charts" }), checkpoints: h("div"), details: h("div", { class: "card" }),
    events: h("ol", { class: "events" }),
    notice: h("p", { class: "sr-only", role: "status" }),
    keptNote: null,
  };
  fill(main,
    h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Fine-tuning")),
    el.header, alert, el.summary, el.notice,
    h("section", { "aria-labelledby": "metrics-h" }, h("h2", { id: "metrics-h" }, "Metrics"),
      el.hint = h("p", { class: "muted" }), el.charts),
    h("section", { "aria-labelledby": "ckpt-h" }, h("h2", { id: "ckpt-h" }, "Checkpoints"),
      el.keptNote = h("p", { class: "muted" }),
      el.checkpoints),
    h("div", { class: "two-col" },
      h("section", { "aria-labelledby": "details-h" }, h("h2", { id: "details-h" }, "Details"), el.details),
      h("section", { "aria-labelledby": "events-h" }, h("h2", { id: "events-h" }, "Events"), h("div", { class: "card events-card", role: "log", "aria-live": "polite", "aria-label": "Events, newest first", tabindex: "0" }, el.events))));

  const progress = progressBar("Training progress");
  const clock = { elapsed: h("span"), eta: h("span") };

  async function act(action, button) {
    alert.show(null);
    button.disabled = true;
    try {
      const before = state.job.status;
      state.job = await api(`${jobPath(id)}/${action}`, { method: "POST" });
      announceEnd(before);
      state.eta = [];
      drawHeader();
      drawSummary();
      await refresh();
    } catch (error) {
      alert.show(error);
      button.disabled = false;
    }
  }

  function drawHeader() {
    const job = state.job;
    const buttons = [];
    const step = (job.progress && job.progress.step) || 0;
    // Each action only where the API allows it: pause a running job that has trained a step, resume a paused one.
    if (job.status === "running" || job.status === "pausing") {
      const b = h("button", { type: "button", class: "btn", disabled: job.status === "pausing" || step < 1,
        title: step < 1 ? "A job can pause once it has trained a step" : null }, job.status === "pausing" ? "Pausing…" : "Pause");
      b.addEventListener("click", () => act("pause", b));
      buttons.push(b);
    }
    if (job.status === "paused") {
      const b = h("button", { type: "button", class: "btn btn-primary" }, "Resume");
      b.addEventListener("click", () => act("resume", b));
      buttons.push(b);
    }
    if (!TERMINAL.has(job.status) && "Notification" in window && Notification.permission !== "granted" && Notification.permission !== "denied") {
      buttons.push(h("button", { type: "button", class: "btn btn-quiet", onclick: async (e) => {
        await Notification.requestPermission();
        e.target.remove();
      } }, "Notify me when it ends"));
    }
    buttons.push(h("a", { class: "btn", href: cloneLink(job) }, "Clone settings"));
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

  /** Why a job that has not started yet is waiting, in the server's words (queue position, model preparation). */
  function waitingReason() {
    const job = state.job;
    const preparing = state.events.find((e) => e.message.startsWith("Preparing the base model"));
    if (preparing && job.status === "queued") return preparing.message;
    const q = job.queue;
    if (!q) return job.status === "queued" ? "Starting: a worker has checked the files." : "Waiting for a worker.";
    const jobs = (n) => `${n} job${n === 1 ? "" : "s"}`;
    const place = q.ahead ? `${jobs(q.ahead)} ahead of it in the queue` : "Next in the queue";
    const busy = q.training ? `; ${jobs(q.training)} training now, so it starts when a worker is free` : "; it starts as soon as a worker takes it";
    const then = job.status === "resuming" ? " (it resumes from its saved state)" : job.status === "pending" ? " (its files are checked first)" : "";
    return `${place}${busy}${then}.`;
  }

  function tick() {
    const job = state.job;
    if (!job) return;
    const trained = trainingSeconds(state.events, job);
    clock.elapsed.textContent = trained > 0 || job.status === "running" ? formatDuration(trained) : "not started";
    if (job.status === "running" && state.eta.length) {
      const eta = steadyEta(state.eta, progressInfo().step);
      const left = eta.finish - now();
      const sure = eta.rough ? " (rough: only a few steps so far)" : eta.spread >= 1 ? ` (± ${formatDuration(eta.spread)})` : " (steady)";
      clock.eta.textContent = left > 0 ? `about ${formatDuration(left)} left${sure}, around ${formatTime(eta.finish)}` : "any moment now";
    } else {
      clock.eta.textContent = job.status === "succeeded" ? "finished" : job.status === "paused" ? "paused"
        : TERMINAL.has(job.status) ? "—" : job.status === "pausing" ? "pausing…"
          : WAITING.has(job.status) ? "once training starts" : "estimating…";
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
        h("div", {}, h("span", { class: "label", title: "Time spent training; paused time is not counted" }, "Training time "), clock.elapsed),
        h("div", {}, h("span", { class: "label" }, "ETA "), clock.eta),
        h("div", {}, h("span", { class: "label" }, "Trained tokens "), formatNumber(tokens))),
      progress,
      WAITING.has(job.status) ? h("p", { class: "waiting" }, h("span", { class: "label" }, "Waiting: "), waitingReason()) : null,
      job.error ? h("p", { class: "alert", role: "alert" }, h("strong", {}, "The job failed: "), job.error.message,
        job.error.code ? h("span", { class: "muted" }, ` (${job.error.code})`) : null) : null,
      job.fine_tuned_model ? h("p", {}, "Fine-tuned model: ", h("code", {}, job.fine_tuned_model), " ",
        h("a", { href: `#/playground?model=${encodeURIComponent(job.fine_tuned_model)}` }, "Try it in the playground")) : null);
    tick();
  }

  function drawDetails() {
    const job = state.job;
    const hp = hyper(job);
    const link = (fid) => (fid ? h("a", { href: `#/files/${fid}` }, state.names.get(fid) || h("code", {}, fid)) : "none");
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
      // Reinforcement: every validation evaluation is a run of the job's eval, with each graded answer.
      job.eval_id ? ["Validation evals", h("a", { href: `#/evals/${job.eval_id}` }, "Graded answers of each evaluation")] : null,
      ["Seed", String(job.seed)],
      ["Suffix", job.user_provided_suffix || "—"],
      job.lora && job.lora.rank !== undefined ? ["LoRA rank", String(job.lora.rank)] : null,
      job.lora && job.lora.alpha !== undefined ? ["LoRA alpha", String(job.lora.alpha)] : null,
      job.lora && job.lora.target_modules ? ["Target modules", job.lora.target_modules.join(", ")] : null,
      job.max_seq_len !== undefined ? ["Max sequence length", String(job.max_seq_len)] : null,
      job.warmup_ratio !== undefined ? ["Warm-up ratio", String(job.warmup_ratio)] : null,
      Object.keys(job.metadata || {}).length ? ["Tags", Object.entries(job.metadata).map(([k, v]) => h("span", { class: "tag" }, `${k}: ${v}`))] : null,
      job.trainingType ? ["Training type", job.trainingType] : null,
      ["Created", formatDate(job.created_at)],
      // A paused job's finished_at is when it paused; only an ended job has finished.
      job.status === "paused" ? ["Paused at", formatDate(job.finished_at)] : ["Finished", TERMINAL.has(job.status) ? formatDate(job.finished_at) : "—"],
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
    const empty = TERMINAL.has(state.job.status) ? `No metrics: the job ${state.job.status === "succeeded" ? "recorded none" : `was ${state.job.status}`} before its first step.`
      : WAITING.has(state.job.status) ? "The chart starts when training does." : undefined;
    const view = (title) => (state.views[title] ??= {});
    // A chart is made once and then updated in place, so a reader's open menu or focus survives new steps.
    const chart = (options) => {
      const made = state.figures[options.title];
      if (made) { made.update({ xMax, empty, ...options }); return made; }
      return (state.figures[options.title] = lineChart({ xMax, empty, view: view(options.title), ...options }));
    };
    const show = (...figures) => {
      const wanted = figures.filter(Boolean);
      if (wanted.length !== el.charts.children.length || wanted.some((f, i) => el.charts.children[i] !== f)) fill(el.charts, wanted);
    };
    if (isRft()) {
      el.hint.textContent = "The mean reward should rise. If the training reward keeps climbing while the validation " +
        "reward does not, the model may be reward hacking: check the grader against a few answers.";
      // Reinforcement: the grader's mean reward (training samples each step; the whole validation file every
      // eval_interval steps). Diverging curves hint at reward hacking.
      // A multi grader's children each have a reward pair (train_reward_mean:<key>, valid_reward_mean:<key>),
      // charted below the overall reward as OpenAI's dashboard does.
      const children = [...new Set(rows.flatMap((r) => Object.keys(r)).filter((k) => k.startsWith("train_reward_mean:"))
        .map((k) => k.slice("train_reward_mean:".length)))];
      show(
        chart({ title: "Mean reward", series: [series("train_reward_mean", "Training"), series("valid_reward_mean", "Validation", true)] }),
        children.length ? chart({ title: "Mean reward per grader",
          series: children.flatMap((c) => [series(`train_reward_mean:${c}`, `${c} (training)`), series(`valid_reward_mean:${c}`, `${c} (validation)`, true)]) }) : null,
        chart({ title: "KL to the starting model", series: [series("train_kl", "Training")] }),
        // Tunery's models answer without separate reasoning: reasoning tokens are the answer's tokens.
        chart({ title: "Reasoning tokens (answer length)",
          series: [series("train_reasoning_tokens_mean", "Training"), series("valid_reasoning_tokens_mean", "Validation", true)] }),
        chart({ title: "Validation parse errors", yFormat: (v) => `${(v * 100).toFixed(1)}%`, bounds: [0, 1], percent: true,
          series: [series("full_valid_mean_parse_error", "Validation", true)] }));
      return;
    }
    el.hint.textContent = "Training loss is measured on each step's batch and should fall (smooth it to see the trend). " +
      "“Validation (one batch)” is one small validation batch every few steps: it is noisy and can rise and fall " +
      "without meaning much. “Full validation” is the whole validation file at each epoch end: that is the line to " +
      "judge. If full validation loss rises while training loss keeps falling, the model is overfitting: try fewer " +
      "epochs or a smaller learning rate multiplier.";
    const accuracy = isDpo() ? { title: "Reward accuracy", key: "reward_accuracy" } : { title: "Token accuracy", key: "mean_token_accuracy" };
    show(
      chart({ title: "Loss", series: [series("train_loss", "Training"), series("valid_loss", "Validation (one batch)"), series("full_valid_loss", "Full validation", true)] }),
      chart({ title: accuracy.title, yFormat: (v) => `${(v * 100).toFixed(1)}%`, bounds: [0, 1], percent: true,
        series: [series(`train_${accuracy.key}`, "Training"), series(`valid_${accuracy.key}`, "Validation (one batch)"),
          series(`full_valid_${accuracy.key}`, "Full validation", true)] }),
      isDpo() ? chart({ title: "Reward margin",
        series: [series("train_reward_margin", "Training"), series("valid_reward_margin", "Validation (one batch)"),
          series("full_valid_reward_margin", "Full validation", true)] }) : null);
  }

  // DPO jobs chart how often the chosen reply out-scores the rejected one instead of token accuracy.
  function isDpo() { return Boolean(state.job.method && state.job.method.type === "dpo"); }
  // Reinforcement jobs chart the grader's reward instead of a loss.
  function isRft() { return Boolean(state.job.method && state.job.method.type === "reinforcement"); }

  /** Why retention keeps this checkpoint (the server's rules: the model, deployed, a pause, the newest few). */
  function keptBecause(c) {
    const reasons = [];
    if (c.fine_tuned_model_checkpoint === state.job.fine_tuned_model) reasons.push("the fine-tuned model");
    const deployments = state.deployed.get(c.fine_tuned_model_checkpoint);
    if (deployments) reasons.push(`deployed as ${deployments.join(", ")}`);
    if (c.saved_at_pause) reasons.push("saved at a pause");
    const newest = [...state.checkpoints].sort((a, b) => b.step_number - a.step_number).slice(0, state.kept ?? 0);
    if (newest.includes(c)) reasons.push(state.kept === 1 ? "the newest" : `one of the last ${state.kept}`);
    return reasons.length ? reasons.join("; ") : "another job starts from it";
  }

  function drawCheckpoints() {
    const metric = (key) => (c) => formatMetric(c.metrics[key]);
    const gone = state.job.fine_tuned_model && !state.checkpoints.length && TERMINAL.has(state.job.status);
    fill(el.checkpoints, table([
      { label: "Step", cell: (c) => String(c.step_number), class: "num" },
      { label: "Model", cell: (c) => h("code", { class: "wrap" }, c.fine_tuned_model_checkpoint), class: "col-model hide-sm" },
      { label: "Kept because", cell: keptBecause },
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
    ].filter(Boolean), state.checkpoints, { caption: "Checkpoints", empty: gone
      ? `The fine-tuned model ${state.job.fine_tuned_model} was deleted, and its checkpoints with it.`
      : "Checkpoints appear at the end of each epoch (and when a job pauses)." }));
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
      // Metrics events carry the step-0 validation (before training); /metrics has every optimizer step.
      if (e.type === "metrics" && e.data) state.metrics.set(e.data.step, { ...state.metrics.get(e.data.step), ...e.data });
      const m = /^Step (\d+)\/(\d+)/.exec(e.message);
      if (m && !state.total) state.total = Number(m[2]);
    }
    const initial = state.events.length === 0;
    state.events = [...fresh, ...state.events];
    if (fresh.length) drawEvents(initial ? null : fresh);
    return fresh.length;
  }

  /** Each optimizer step's metrics since the last look (a resume from an earlier state drops later steps). */
  async function fetchMetrics() {
    const step = state.job.progress ? state.job.progress.step : null;
    if (step !== null && step < state.lastStep && state.job.status === "running") {
      for (const k of [...state.metrics.keys()]) if (k > step) state.metrics.delete(k);
      state.lastStep = step;
    }
    let rows;
    try { rows = await stepMetrics(id, state.lastStep); } catch (error) {
      if (error.status === 404) return 0;
      throw error;
    }
    for (const r of rows) {
      state.metrics.set(r.step, { ...state.metrics.get(r.step), ...r.metrics, step: r.step });
      state.lastStep = Math.max(state.lastStep, r.step);
    }
    return rows.length;
  }

  function announceEnd(before) {
    const job = state.job;
    if (!before || TERMINAL.has(before) || !TERMINAL.has(job.status) || state.notified) return;
    state.notified = true;
    const text = `Fine-tuning job ${jobName(job)} ${job.status}.`;
    el.notice.textContent = text;
    if ("Notification" in window && Notification.permission === "granted") {
      try { new Notification(text, { body: job.fine_tuned_model || (job.error && job.error.message) || "", tag: job.id }); } catch (e) { console.warn(e); }
    }
  }

  async function refresh() {
    const before = state.job && state.job.status;
    state.job = await api(jobPath(id));
    learnProject(state.job.organization_id);
    if (state.kept === undefined) {  // this server's retention setting (GET /fine_tuning/rules: checkpoints_kept)
      const rules = await api("/fine_tuning/rules").catch(() => null);
      state.kept = rules && Number.isInteger(rules.checkpoints_kept) ? rules.checkpoints_kept : null;
      const newest = state.kept === null ? "the newest checkpoints" : state.kept === 1 ? "the newest checkpoint" : `the last ${state.kept} checkpoints`;
      fill(el.keptNote, `This server keeps ${newest}, the fine-tuned model, and any older checkpoint that is `,
        "deployed, was saved at a pause, or is the starting point of another job; it deletes the rest.");
    }
    if (!state.names.size || !state.names.has(state.job.training_file)) state.names = await fileNames();
    if (state.job.status === "running" && state.job.estimated_finish) {
      const last = state.eta[state.eta.length - 1];
      if (!last || last.finish !== state.job.estimated_finish) state.eta.push({ at: now(), finish: state.job.estimated_finish });
    } else if (state.job.status !== "running") state.eta = [];
    const changed = await fetchEvents();
    const grown = await fetchMetrics();
    if (state.job.status !== before) { drawHeader(); drawDetails(); }
    else if (state.job.status === "running" && state.job.progress && state.job.progress.step >= 1 && el.header.querySelector("button[disabled][title]")) drawHeader();
    if (changed || state.job.status !== before) {
      const page = await api(`${jobPath(id)}/checkpoints?limit=100`);
      const ids = page.data.map((c) => c.id).join();
      if (ids !== state.checkpoints.map((c) => c.id).join() || state.job.status !== before) {
        // Which checkpoints are deployed (a reason to keep them): looked up when the list or the status changes.
        const deployments = await api("/deployments").catch(() => ({ data: [] }));
        state.deployed = new Map();
        for (const d of deployments.data || []) state.deployed.set(d.model, [...(state.deployed.get(d.model) || []), d.id]);
      }
      state.checkpoints = page.data;
      drawCheckpoints();
    }
    if (changed || grown || state.job.status !== before) drawCharts();
    drawSummary();
    announceEnd(before);
    // One more look after the job ends: its last events and metrics may land just after the status.
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
