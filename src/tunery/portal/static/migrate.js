// Migrate: move fine-tuning jobs from another OpenAI-compatible service (OpenAI, Azure OpenAI, another Tunery)
// here. A form for POST /migrations (a preview is its dry run), what the server has recorded so far while it
// works (GET /migrations), the report it answers — what moved, what did not and why, old → new ids and the
// aliases, old and new answers side by side — and everything moved before.

import { api } from "./api.js";
import { alertBox, badge, fill, formatDate, formatDuration, h, pageHeader, sentence, table } from "./ui.js";

const STATUS_TEXT = {
  moved: "moved", already_moved: "moved before", not_moved: "not moved", would_move: "would move",
};

export async function render(main) {
  const [modelList, history] = await Promise.all([api("/models"), api("/migrations")]);
  const bases = modelList.data.filter((m) => !m.fine_tune && !m.model && (!m.capabilities || m.capabilities.fine_tune));

  const alert = alertBox();
  const status = h("div", { role: "status", "aria-live": "polite", class: "migration-status" });
  const report = h("section", { "aria-labelledby": "report-h", hidden: true });
  const past = h("section", { "aria-labelledby": "past-h" });
  const url = h("input", { id: "source-url", name: "source_url", type: "url", required: true, spellcheck: "false",
    placeholder: "https://api.openai.com/v1", autocomplete: "url", "aria-describedby": "source-url-hint" });
  const key = h("input", { id: "source-key", name: "api_key", type: "password", required: true, autocomplete: "off",
    spellcheck: "false", "aria-describedby": "source-key-hint" });
  const base = h("select", { id: "base-model", name: "base_model", "aria-describedby": "base-model-hint" },
    h("option", { value: "" }, "The server's default base model"),
    bases.map((m) => h("option", { value: m.id }, m.id)));
  const compare = h("input", { id: "compare", name: "compare", type: "checkbox", checked: true });
  const preview = h("button", { type: "submit", class: "btn", value: "preview" }, "Preview (dry run)");
  const run = h("button", { type: "submit", class: "btn btn-primary", value: "run" }, "Migrate");
  const form = h("form", { class: "card", "aria-labelledby": "form-h" },
    h("h2", { id: "form-h" }, "Source"),
    h("div", { class: "field" }, h("label", { for: "source-url" }, "Source URL"), url,
      h("p", { class: "hint", id: "source-url-hint" }, "Its OpenAI-layout address, ending in ", h("code", {}, "/v1"),
        ": ", h("code", { class: "wrap" }, "https://api.openai.com/v1"), ", ",
        h("code", { class: "wrap" }, "https://NAME.openai.azure.com/openai/v1"), " or another Tunery's.")),
    h("div", { class: "field" }, h("label", { for: "source-key" }, "Source API key"), key,
      h("p", { class: "hint", id: "source-key-hint" }, "Sent with this request only; Tunery does not store it.")),
    h("div", { class: "field" }, h("label", { for: "base-model" }, "Base model here"), base,
      h("p", { class: "hint", id: "base-model-hint" },
        "The open model each job is recreated on, with the same data, hyperparameters, seed, suffix and metadata.")),
    h("label", { class: "toggle", for: "compare" }, compare, "Compare old and new answers where both models answer"),
    h("div", { class: "form-actions" }, preview, run));

  fill(main,
    pageHeader("Migrate"),
    h("p", { class: "lead" }, "Move your fine-tuning jobs from OpenAI, Azure OpenAI or another OpenAI-compatible service. ",
      "Their training files are copied here and each job runs again on an open base model; the old model ids keep ",
      "working here as aliases, so your code changes only its base URL. Running it again moves nothing twice."),
    form, alert, status, report, past);
  showHistory(past, history.data);

  let working = false;
  let stopProgress = () => {};
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (working) return;
    const dryRun = event.submitter ? event.submitter.value === "preview" : false;
    const source = url.value.trim();
    const body = { source_url: source, api_key: key.value, base_model: base.value || null, compare: compare.checked,
      dry_run: dryRun };
    working = true;
    preview.disabled = run.disabled = true;
    alert.show(null);
    report.hidden = true;
    stopProgress = showProgress(status, source, dryRun);
    try {
      const answer = await api("/migrations", { method: "POST", body });
      stopProgress();
      fill(status);
      showReport(report, answer);
      report.querySelector("h2").focus();
      if (!dryRun) showHistory(past, (await api("/migrations")).data);
    } catch (error) {
      stopProgress();
      fill(status);
      alert.show(error);
      const field = { source_url: url, api_key: key, base_model: base }[error.param];
      if (field) field.focus();
    } finally {
      working = false;
      preview.disabled = run.disabled = false;
    }
  });
  return () => stopProgress();  // leaving the page: no more polling (the server finishes the migration anyway)
}

/** While the request runs: the time it has taken and the jobs the server has recorded for this source so far. */
function showProgress(status, source, dryRun) {
  const started = Date.now();
  const line = h("p", { class: "notice" });
  const recorded = h("p", { class: "hint" });
  fill(status, line, dryRun ? null : recorded);
  const normalized = source.replace(/\/+$/, "");
  let stopped = false;
  let busy = false;
  const tick = async () => {
    const seconds = (Date.now() - started) / 1000;
    line.textContent = dryRun
      ? `Listing the source's fine-tuning jobs… ${formatDuration(seconds)}`
      : `Migrating: listing the source's jobs, copying their files and creating the jobs here… ${formatDuration(seconds)}`;
    if (dryRun || busy || seconds < 2) return;
    busy = true;
    try {
      const since = Math.floor(started / 1000) - 1;
      const page = await api("/migrations");
      const rows = page.data.filter((m) => m.source_url === normalized && m.created_at >= since);
      if (!stopped && rows.length) {
        recorded.textContent = `${rows.length} job${rows.length === 1 ? "" : "s"} recorded so far: ` +
          rows.map((m) => `${m.source_job_id} ${STATUS_TEXT[m.status] || m.status}`).join(", ") + ".";
      }
    } catch (e) { console.warn(e); } finally { busy = false; }
  };
  tick();
  const id = setInterval(tick, 1000);
  return () => { stopped = true; clearInterval(id); };
}

function showReport(section, r) {
  const entries = r.entries || [];
  const summary = r.dry_run
    ? [`${r.would_move} would move`, `${r.already_moved} moved before`, `${r.not_moved} would not move`]
    : [`${r.moved} moved`, `${r.already_moved} moved before`, `${r.not_moved} not moved`];
  const aliases = entries.filter((e) => e.source_model && e.job_id && e.status !== "not_moved");
  const compared = entries.filter((e) => e.comparisons && e.comparisons.length);
  section.hidden = false;
  fill(section,
    h("h2", { id: "report-h", tabindex: "-1" }, r.dry_run ? "Preview" : "Migration report"),
    h("p", { class: `notice ${r.not_moved ? "notice-warn" : "notice-ok"}`, "data-testid": "migration-summary" },
      `From `, h("code", { class: "wrap" }, r.source_url), ` onto `, h("code", {}, r.base_model), `: `,
      summary.join(", "), ".", r.dry_run ? " Nothing was created; files are checked when they move." : ""),
    table([
      { label: "Source job", cell: (e) => h("code", { class: "wrap" }, e.source_job_id) },
      { label: "Old model", cell: (e) => (e.source_model ? h("code", { class: "wrap" }, e.source_model) : "—") },
      { label: "Status", cell: (e) => badge(e.status) },
      { label: "New job", cell: (e) => (e.job_id ? h("a", { href: `#/jobs/${e.job_id}` }, h("code", { class: "wrap" }, e.job_id)) : "—") },
      { label: "New model", cell: (e) => (e.fine_tuned_model ? h("code", { class: "wrap" }, e.fine_tuned_model)
        : e.job_id ? "when its job finishes" : "—") },
      { label: "Reason", cell: (e) => (e.reason ? sentence(e.reason) : "—") },
    ], entries, { caption: "Source jobs", empty: "The source has no fine-tuning jobs." }),
    aliases.length ? h("section", { "aria-labelledby": "aliases-h" },
      h("h3", { id: "aliases-h" }, r.dry_run ? "Old ids already answering here" : "Old ids answering here"),
      h("p", { class: "hint" }, "Requests here that name an old model id reach the new fine-tune once its job has finished."),
      h("ul", { class: "aliases" }, aliases.map((e) => h("li", {},
        h("code", { class: "wrap" }, e.source_model), " → ",
        e.fine_tuned_model ? h("code", { class: "wrap" }, e.fine_tuned_model)
          : h("span", {}, "the model of ", h("a", { href: `#/jobs/${e.job_id}` }, h("code", { class: "wrap" }, e.job_id))))))) : null,
    compared.length ? h("section", { "aria-labelledby": "compare-h" },
      h("h3", { id: "compare-h" }, "Old and new answers"),
      compared.map((e) => h("div", { class: "card comparison" },
        h("p", {}, h("code", { class: "wrap" }, e.source_model), " and ", h("code", { class: "wrap" }, e.fine_tuned_model)),
        e.comparisons.map((row) => h("div", { class: "comparison-row" },
          h("p", { class: "hint" }, "Prompt: ", promptText(row.messages)),
          h("div", { class: "panes two" },
            answer("Old answer", row.old, row.old_error || "the old model did not answer"),
            answer("New answer", row.new, "the new model did not answer")))))))
      : null);
}

/** One side of a comparison: the text as the model wrote it (scrollable when long), or why there is none. */
function answer(label, text, missing) {
  const body = text === null || text === undefined ? h("p", { class: "muted" }, sentence(`No answer: ${missing}`))
    : !text.trim() ? h("p", { class: "muted" }, "An empty answer (only spaces or line breaks).")
      : h("p", { class: "answer", tabindex: "0", "aria-label": label }, text);
  return h("div", {}, h("strong", {}, label), body);
}

function promptText(messages) {
  const user = [...(messages || [])].reverse().find((m) => m.role === "user");
  return user ? String(user.content) : "—";
}

function showHistory(section, rows) {
  fill(section,
    h("h2", { id: "past-h" }, "Moved before"),
    table([
      { label: "Source job", cell: (m) => h("code", { class: "wrap" }, m.source_job_id) },
      { label: "Old model", cell: (m) => (m.source_model ? h("code", { class: "wrap" }, m.source_model) : "—") },
      { label: "Status", cell: (m) => badge(m.status) },
      { label: "New job", cell: (m) => (m.job_id ? h("a", { href: `#/jobs/${m.job_id}` }, h("code", { class: "wrap" }, m.job_id)) : "—") },
      { label: "Reason", cell: (m) => (m.reason ? sentence(m.reason) : "—") },
      { label: "Source", cell: (m) => h("code", { class: "wrap" }, m.source_url), class: "hide-md" },
      { label: "When", cell: (m) => formatDate(m.created_at), class: "hide-sm" },
    ], rows, { caption: "Jobs moved before", empty: "Nothing has been migrated into this project yet." }));
}
