// Data files: upload (pick or drop, with progress), the list with statuses, and one file's
// statistics or its problems line by line (the File object's `validation` extension).

import { api, fileText, listAll, uploadFile } from "./api.js";
import { byNewest, byOldest, byText, listView } from "./lists.js";
import {
  alertBox, badge, details, fill, formatBytes, formatDate, formatNumber, h, notice, pageHeader, poll, progressBar, table,
} from "./ui.js";

const CHECKING = new Set(["pending", "running", "uploaded"]);

/** An upload control: a real file input inside a drop zone, a progress bar and an alert. */
export function uploader({ onUploaded, label = "Upload a JSONL file" } = {}) {
  const id = `upload-${Math.random().toString(36).slice(2, 8)}`;
  const input = h("input", { id, type: "file", accept: ".jsonl,.json,application/jsonl,application/json" });
  const bar = progressBar("Upload progress");
  bar.hidden = true;
  const alert = alertBox();
  const zone = h("div", { class: "dropzone", role: "group", "aria-label": `${label}: choose or drop a file` },
    h("label", { for: id }, h("strong", {}, label), h("span", { class: "muted" }, " — choose a file or drop it here")),
    input, bar, alert);

  async function send(file) {
    alert.show(null);
    bar.hidden = false;
    bar.set(0, `Uploading ${file.name}…`);
    try {
      const created = await uploadFile(file, {
        onProgress: (loaded, total) => bar.set(total ? loaded / total : 0,
          `${Math.round((total ? loaded / total : 0) * 100)}% of ${formatBytes(total)} sent`),
      });
      bar.set(1, `Uploaded ${file.name} (${formatBytes(created.bytes)}). Checking the examples…`);
      input.value = "";
      if (onUploaded) await onUploaded(created);
    } catch (error) {
      bar.hidden = true;
      alert.show(error);
    }
  }

  input.addEventListener("change", () => input.files[0] && send(input.files[0]));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    const file = e.dataTransfer.files[0];
    if (file) send(file);
  });
  zone.progress = bar;
  /** The upload went through but the file's checks failed: no full (success-coloured) bar, an alert instead. */
  zone.failed = (...message) => {
    bar.hidden = true;
    alert.hidden = false;
    fill(alert, ...message);
  };
  return zone;
}

/** Wait for a file's checks to finish; resolves with the final File object. */
export async function waitForFile(id, { interval = 500, onUpdate } = {}) {
  for (;;) {
    const file = await api(`/files/${encodeURIComponent(id)}`);
    if (onUpdate) onUpdate(file);
    if (!CHECKING.has(file.status)) return file;
    await new Promise((r) => setTimeout(r, interval));
  }
}

export function fileSummary(file) {
  const stats = file.validation && file.validation.statistics;
  if (file.status === "error") return `${formatNumber(file.validation ? file.validation.problem_count : 0)} problem(s)`;
  if (stats) return `${formatNumber(stats.examples)} examples · ${formatNumber(stats.tokens_total)} tokens`;
  return CHECKING.has(file.status) ? "Checking…" : "—";
}

export async function list(main) {
  const alert = alertBox();
  const view = listView({
    id: "files",
    caption: "Files",
    empty: "No files yet. Upload a JSONL file above to start.",
    columns: [
      { label: "Name", cell: (f) => h("a", { href: `#/files/${f.id}` }, f.filename) },
      { label: "Status", cell: (f) => h("span", { title: f.status_details || "" }, badge(f.status)) },
      { label: "Purpose", cell: (f) => f.purpose, class: "hide-sm" },
      { label: "Contents", cell: fileSummary },
      { label: "Size", cell: (f) => formatBytes(f.bytes), class: "num hide-sm" },
      { label: "Uploaded", cell: (f) => formatDate(f.created_at), class: "hide-sm" },
      { label: "ID", cell: (f) => h("code", {}, f.id), class: "hide-md" },
    ],
    text: (f) => `${f.filename} ${f.id}`,
    filter: { label: "Status", options: [
      ["processed", "Processed", (f) => f.status === "processed"],
      ["error", "With problems", (f) => f.status === "error"],
      ["checking", "Being checked", (f) => CHECKING.has(f.status)],
    ] },
    sorts: [
      ["newest", "Newest first", byNewest("created_at")],
      ["oldest", "Oldest first", byOldest("created_at")],
      ["name", "Name", byText("filename")],
      ["size", "Largest first", byNewest("bytes")],
    ],
  });
  const holder = h("section", { "aria-labelledby": "files-list" }, h("h2", { id: "files-list" }, "Your files"), view);
  const upload = uploader({
    onUploaded: async (created) => {
      await refresh();
      const done = await waitForFile(created.id);
      if (done.status === "processed") upload.progress.set(1, `${done.filename} is ready: ${fileSummary(done)}.`);
      else {
        upload.failed(`${done.filename} has problems (${fileSummary(done)}) — `,
          h("a", { href: `#/files/${done.id}` }, "see each one"), ".");
      }
      await refresh();
    },
  });
  fill(main,
    pageHeader("Data files"),
    h("p", { class: "lead" }, "Training and validation data in JSONL: one chat example per line. ",
      "Each upload is checked line by line with the base model's tokenizer."),
    h("section", { class: "card", "aria-label": "Upload" }, upload),
    alert,
    holder);

  async function refresh() {
    try {
      const items = await listAll("/files");
      view.update(items);
      return items.some((f) => CHECKING.has(f.status));
    } catch (error) {
      alert.show(error);
      return false;
    }
  }
  return poll(refresh, 3000);
}

export async function detail(main, { params: [id], navigate }) {
  const alert = alertBox();
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  fill(main, h("p", { class: "crumbs" }, h("a", { href: "#/files" }, "Data files")), body);
  let stop = null;

  async function draw(file) {
    const v = file.validation;
    const remove = h("button", { type: "button", class: "btn btn-danger" }, "Delete");
    remove.addEventListener("click", async () => {
      if (!confirm(`Delete ${file.filename}?`)) return;
      try {
        await api(`/files/${encodeURIComponent(file.id)}`, { method: "DELETE" });
        navigate("#/files");
      } catch (error) { alert.show(error); }
    });
    const download = h("button", { type: "button", class: "btn" }, "Download");
    download.addEventListener("click", async () => {
      try {
        const url = URL.createObjectURL(new Blob([await fileText(file.id)], { type: "application/jsonl" }));
        h("a", { href: url, download: file.filename }).click();
        setTimeout(() => URL.revokeObjectURL(url), 1000);
      } catch (error) { alert.show(error); }
    });
    const use = file.status === "processed" && file.purpose === "fine-tune"
      ? h("a", { class: "btn btn-primary", href: `#/jobs/new?training_file=${file.id}` }, "Fine-tune with this file") : null;
    const broken = file.status === "error";
    fill(body,
      pageHeader(file.filename, use, download, remove),
      alert,
      broken ? problems(file) : null,  // what to fix comes first, above the facts
      h("div", { class: broken ? "card file-facts" : "card" }, details([
        ["Status", badge(file.status)],
        ["ID", h("code", {}, file.id)],
        ["Purpose", file.purpose],
        ["Format", v && v.format ? (v.format === "preference" ? "preference (DPO)" : "chat (supervised)") : "—"],
        ["Size", formatBytes(file.bytes)],
        ["Uploaded", formatDate(file.created_at)],
      ])),
      CHECKING.has(file.status) ? notice("Checking the examples… this page updates by itself.") : null,
      v && v.statistics ? statistics(v.statistics) : null,
      file.status === "processed" && file.status_details ? notice(file.status_details, "ok") : null,
      file.status === "processed" ? preview(file) : null);
  }

  let first;
  try {
    first = await api(`/files/${encodeURIComponent(id)}`);
  } catch (error) {
    if (error.status !== 404) throw error;
    document.title = "File not found · Tunery";
    fill(body, pageHeader("File not found"),
      h("p", {}, "There is no file ", h("code", {}, id), " in this project: it may have been deleted, or the link is wrong."),
      h("p", {}, h("a", { href: "#/files" }, "See your data files")));
    return null;
  }
  await draw(first);
  if (CHECKING.has(first.status)) {
    stop = poll(async () => {
      const file = await api(`/files/${encodeURIComponent(id)}`);
      if (!CHECKING.has(file.status)) { stop(); await draw(file); }
    }, 1000);
  }
  return () => stop && stop();
}

function statistics(s) {
  const stat = (label, value, note) => h("div", { class: "stat" },
    h("div", { class: "stat-value" }, value), h("div", { class: "stat-label" }, label), note ? h("div", { class: "stat-note" }, note) : null);
  return h("section", { "aria-labelledby": "stats-h" },
    h("h2", { id: "stats-h" }, "Statistics"),
    h("div", { class: "stats" },
      stat("Examples", formatNumber(s.examples)),
      stat("Tokens in total", formatNumber(s.tokens_total)),
      stat("Trainable tokens", formatNumber(s.trainable_tokens), "assistant tokens the loss is computed on"),
      stat("Tokens per example", `${formatNumber(s.tokens_min)} / ${formatNumber(s.tokens_mean, 1)} / ${formatNumber(s.tokens_max)}`, "min / mean / max"),
      stat("Over the context", formatNumber(s.examples_over_context), `examples longer than ${formatNumber(s.context_length)} tokens`),
      stat("Tokenizer", s.tokenizer || "—")));
}

function problems(file) {
  const v = file.validation || { problems: [], problem_count: 0 };
  const shown = v.problems.length;
  return h("section", { "aria-labelledby": "problems-h" },
    h("h2", { id: "problems-h" }, `Problems (${formatNumber(v.problem_count)})`),
    h("p", { class: "muted" }, "Fix these lines and upload the file again.",
      v.problem_count > shown ? ` Showing the first ${shown}.` : ""),
    table([
      { label: "Line", cell: (p) => (p.line === null ? "whole file" : String(p.line)), class: "num" },
      { label: "Problem", cell: (p) => h("code", {}, p.code) },
      { label: "Details", cell: (p) => p.message },
    ], v.problems, { caption: "Problems by line", empty: file.status_details || "No details." }),
    file.status_details ? h("details", {}, h("summary", {}, "Full report"), h("pre", {}, file.status_details)) : null);
}

// ------------------------------------------------------------------------------------------ dataset preview
const PREVIEW_EXAMPLES = 3;
const PREVIEW_BYTES = 256 * 1024;

/** The first few JSON lines of a file, reading at most PREVIEW_BYTES of it (files can be large). */
async function firstExamples(id) {
  const response = await api(`/files/${encodeURIComponent(id)}/content`, { raw: true });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const rows = [];
  try {
    while (rows.length < PREVIEW_EXAMPLES && text.length < PREVIEW_BYTES) {
      const { value, done } = await reader.read();
      if (value) text += value;
      const lines = text.split("\n");
      text = done ? "" : lines.pop();
      lines.forEach((line) => line.trim() && rows.length < PREVIEW_EXAMPLES && rows.push(line));
      if (done) break;
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  return rows.map((line) => { try { return JSON.parse(line); } catch { return null; } }).filter(Boolean);
}

function contentText(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map((p) => (typeof p === "string" ? p : p.text || `[${p.type}]`)).join("");
  return content === null || content === undefined ? "" : JSON.stringify(content);
}

/** One message as a chat bubble; `mark` is the visible tag for spans the loss is (or is not) computed on. */
function bubble(message, mark) {
  const role = message.role || "?";
  const calls = message.tool_calls ? JSON.stringify(message.tool_calls) : "";
  return h("div", { class: `msg msg-${role === "assistant" ? "assistant" : role === "user" ? "user" : "other"}${mark ? ` ${mark.cls}` : ""}` },
    h("span", { class: "who" }, role, mark ? h("span", { class: `span-tag ${mark.cls}` }, mark.text) : null),
    h("div", { class: "text" }, contentText(message.content) || (calls ? "" : "—"), calls ? h("code", {}, calls) : null));
}

const TRAINED = { cls: "trained", text: "trained" };
const NOT_TRAINED = { cls: "not-trained", text: "not trained (weight 0)" };
const PREFERRED = { cls: "trained", text: "preferred: trained toward" };
const REJECTED = { cls: "rejected", text: "non-preferred: trained away from" };

function example(row, n) {
  let parts;
  if (Array.isArray(row.messages)) {
    parts = row.messages.map((m) => bubble(m, m.role === "assistant" ? (m.weight === 0 ? NOT_TRAINED : TRAINED) : null));
    if (!row.messages.some((m) => m.role === "assistant")) {
      parts.push(h("p", { class: "hint" }, "No assistant turn: a prompt (reinforcement fine-tuning samples the answer)."));
    }
  } else if (row.input && Array.isArray(row.input.messages)) {
    parts = [
      ...row.input.messages.map((m) => bubble(m, null)),
      ...(row.preferred_output || []).map((m) => bubble(m, PREFERRED)),
      ...(row.non_preferred_output || []).map((m) => bubble(m, REJECTED)),
    ];
  } else {
    parts = [h("pre", {}, JSON.stringify(row, null, 2))];
  }
  return h("article", { class: "example card", "aria-label": `Example ${n}` }, h("h3", {}, `Example ${n}`), parts);
}

/** A few conversations rendered as chat, with the spans the loss is computed on marked. */
function preview(file) {
  const holder = h("div", { class: "examples" }, h("p", { class: "muted" }, "Loading the first examples…"));
  const section = h("section", { "aria-labelledby": "preview-h" },
    h("h2", { id: "preview-h" }, "Preview"),
    h("p", { class: "muted" }, `The first ${PREVIEW_EXAMPLES} examples as the model sees them. `,
      "Spans tagged ", h("span", { class: "span-tag trained" }, "trained"),
      " are what the model learns to write; the rest is context."),
    holder);
  firstExamples(file.id)
    .then((rows) => fill(holder, rows.length ? rows.map((row, i) => example(row, i + 1)) : h("p", { class: "empty" }, "No examples to show.")))
    .catch((error) => fill(holder, h("p", { class: "empty" }, `The preview could not be loaded: ${error.message}`)));
  return section;
}
