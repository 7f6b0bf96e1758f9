// Evals: list and create evals (with a live "test grader" against /fine_tuning/alpha/graders/run), run one
// on any model Tunery serves, watch the run, read each item's answer and grades, and compare two runs
// (e.g. base vs fine-tune) side by side on the items where they differ. All through the public API.

import { api, listAll } from "./api.js";
import { alertBox, badge, details, fill, formatDate, h, pageHeader, poll, shortId, table } from "./ui.js";

const evalPath = (id) => `/evals/${encodeURIComponent(id)}`;
const runPath = (evalId, runId) => `${evalPath(evalId)}/runs/${encodeURIComponent(runId)}`;
const pretty = (value) => JSON.stringify(value, null, 2);
const rate = (counts) => (counts && counts.total ? `${((100 * counts.passed) / counts.total).toFixed(1)} %` : "—");
const criterionName = (id) => id.replace(/-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/, "");
const answerOf = (item) => (item.sample && item.sample.output && item.sample.output[0] ? item.sample.output[0].content : "");

const DEFAULT_SCHEMA = { type: "object", properties: { question: { type: "string" }, answer: { type: "string" } }, required: ["question", "answer"] };
const DEFAULT_GRADER = { type: "string_check", name: "exact answer", input: "{{sample.output_text}}", reference: "{{item.answer}}", operation: "eq" };
const DEFAULT_TEMPLATE = [{ role: "user", content: "{{item.question}}" }];
const DEFAULT_ROWS = '{"item": {"question": "What is 2 + 2?", "answer": "4"}}\n{"item": {"question": "What is 3 + 5?", "answer": "8"}}';

function field(id, label, control, hint) {
  control.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hint ? h("p", { class: "hint" }, hint) : null);
}

function parseJson(text, what) {
  try { return JSON.parse(text); } catch (e) { throw { message: `${what} is not valid JSON: ${e.message}`, param: what }; }
}

/** #/evals: the project's evals and a form to create one. */
export async function list(main, { navigate }) {
  const alert = alertBox();
  const evals = await listAll("/evals");
  const name = h("input", { type: "text", value: "", autocomplete: "off" });
  const schema = h("textarea", { rows: 6, spellcheck: "false", value: pretty(DEFAULT_SCHEMA) });
  const grader = h("textarea", { rows: 8, spellcheck: "false", value: pretty(DEFAULT_GRADER) });
  const sample = h("input", { type: "text", value: "4", autocomplete: "off" });
  const item = h("input", { type: "text", value: '{"question": "What is 2 + 2?", "answer": "4"}', autocomplete: "off" });
  const testResult = h("p", { class: "grader-result", role: "status" });
  const testButton = h("button", { type: "button", class: "btn" }, "Test grader");
  testButton.addEventListener("click", async () => {
    alert.show(null);
    try {
      const result = await api("/fine_tuning/alpha/graders/run", { method: "POST", body: {
        grader: parseJson(grader.value, "grader"), model_sample: sample.value, item: parseJson(item.value, "item") } });
      const errors = Object.entries(result.metadata.errors).filter(([, v]) => v === true).map(([k]) => k);
      fill(testResult, "Reward ", h("strong", { class: "reward" }, String(result.reward)),
        errors.length ? ` · errors: ${errors.join(", ")}` : " · no errors");
    } catch (error) { alert.show(error); }
  });
  const create = h("button", { type: "submit", class: "btn btn-primary" }, "Create eval");
  const form = h("form", { class: "card", "aria-label": "New eval" },
    h("h2", {}, "New eval"),
    field("eval-name", "Name", name),
    field("eval-schema", "Item schema (JSON schema of one row's item)", schema),
    field("eval-grader", "Testing criterion (grader JSON)", grader,
      "string_check, text_similarity (with pass_threshold), python, score_model or label_model; templates use {{item.*}} and {{sample.output_text}}."),
    h("fieldset", { class: "grader-test" }, h("legend", {}, "Try the grader on one sample"),
      field("test-sample", "Model answer", sample), field("test-item", "Item (JSON)", item), testButton, testResult),
    alert,
    h("div", { class: "form-actions" }, create));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    alert.show(null);
    create.disabled = true;
    try {
      const created = await api("/evals", { method: "POST", body: {
        name: name.value.trim(), data_source_config: { type: "custom", item_schema: parseJson(schema.value, "item_schema") },
        testing_criteria: [parseJson(grader.value, "grader")] } });
      navigate(`#/evals/${created.id}`);
    } catch (error) { alert.show(error); create.disabled = false; }
  });
  fill(main, pageHeader("Evals"),
    h("p", { class: "muted" }, "An eval grades a model's answers to your items. Run it on a base model and on a fine-tune to see which is better."),
    table([
      { label: "Name", cell: (e) => h("a", { href: `#/evals/${e.id}` }, e.name || shortId(e.id)) },
      { label: "Criteria", cell: (e) => e.testing_criteria.map((c) => c.name).join(", ") },
      { label: "Created", cell: (e) => formatDate(e.created_at) },
    ], evals.slice().reverse(), { caption: "Evals", empty: "No evals yet: create one below." }),
    form);
}

/** #/evals/{id}: runs (polled), a form to start one, and a side-by-side comparison of two runs. */
export async function detail(main, { params }) {
  const [evalId] = params;
  const ev = await api(evalPath(evalId));
  const models = (await api("/models")).data.map((m) => m.id);
  const alert = alertBox();
  const model = h("input", { type: "text", list: "eval-models", value: models[0] || "", required: true, autocomplete: "off" });
  const datalist = h("datalist", { id: "eval-models" }, models.map((m) => h("option", { value: m })));
  const rows = h("textarea", { rows: 5, spellcheck: "false", value: DEFAULT_ROWS });
  const template = h("textarea", { rows: 4, spellcheck: "false", value: pretty(DEFAULT_TEMPLATE) });
  const maxTokens = h("input", { type: "number", min: 1, value: 32 });
  const start = h("button", { type: "submit", class: "btn btn-primary" }, "Run");
  const form = h("form", { class: "card", "aria-label": "Run the eval" },
    h("h2", {}, "Run on a model"),
    field("run-model", "Model (base, fine-tune, checkpoint, deployment, or <model>:best)", model), datalist,
    field("run-rows", "Items (JSONL, one {\"item\": {...}} per line)", rows),
    field("run-template", "Prompt template (messages; {{item.*}} is filled per row)", template),
    field("run-max-tokens", "Max tokens per answer", maxTokens),
    alert, h("div", { class: "form-actions" }, start));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    alert.show(null);
    start.disabled = true;
    try {
      const content = rows.value.split("\n").filter((l) => l.trim()).map((l, i) => parseJson(l, `items line ${i + 1}`));
      await api(`${evalPath(evalId)}/runs`, { method: "POST", body: { name: model.value.trim(), data_source: {
        type: "completions", model: model.value.trim(), source: { type: "file_content", content },
        input_messages: { type: "template", template: parseJson(template.value, "template") },
        sampling_params: { temperature: 0, max_completion_tokens: Number(maxTokens.value) } } } });
      await refresh();
    } catch (error) { alert.show(error); } finally { start.disabled = false; }
  });
  const runsBox = h("div", { class: "runs" });
  const compareBox = h("section", { class: "card compare", "aria-label": "Compare runs" });
  let runs = [];
  const left = h("select", { "aria-label": "First run" });
  const right = h("select", { "aria-label": "Second run" });
  const compareOut = h("div");
  const compareButton = h("button", { type: "button", class: "btn" }, "Compare");
  compareButton.addEventListener("click", () => compare(evalId, left.value, right.value, runs, compareOut).catch((e) => alert.show(e)));
  fill(compareBox, h("h2", {}, "Compare two runs"), h("p", { class: "muted" }, "Items where the two runs' grades differ, answers side by side."),
    h("div", { class: "compare-pick" }, left, right, compareButton), compareOut);

  async function refresh() {
    runs = (await listAll(`${evalPath(evalId)}/runs`)).slice().reverse();
    fill(runsBox, table([
      { label: "Run", cell: (r) => h("a", { href: `#/evals/${evalId}/runs/${r.id}` }, r.name || shortId(r.id)) },
      { label: "Model", cell: (r) => h("code", {}, r.model || "—") },
      { label: "Status", cell: (r) => badge(r.status) },
      { label: "Progress", cell: (r) => `${r.progress ? r.progress.done : r.result_counts.total} / ${r.progress ? r.progress.total : "?"}` },
      { label: "Passed", cell: (r) => String(r.result_counts.passed), class: "num" },
      { label: "Pass rate", cell: (r) => rate(r.result_counts), class: "num" },
    ], runs, { caption: "Runs", empty: "No runs yet." }));
    const done = runs.filter((r) => r.status === "completed");
    for (const select of [left, right]) {
      const keep = select.value;
      fill(select, done.map((r) => h("option", { value: r.id }, `${r.name || shortId(r.id)} (${rate(r.result_counts)})`)));
      if (keep) select.value = keep;
    }
    if (!left.value && done[0]) left.value = done[0].id;
    if (done[1] && (!right.value || right.value === left.value)) right.value = done[1].id;
  }

  fill(main, pageHeader(ev.name || "Eval"),
    details([["Eval", h("code", {}, ev.id)], ["Created", formatDate(ev.created_at)],
      ["Criteria", ev.testing_criteria.map((c) => `${c.name} (${c.type})`).join(", ")]]),
    h("h2", {}, "Runs"), runsBox, form, compareBox);
  return poll(refresh, 1500);
}

async function compare(evalId, a, b, runs, out) {
  if (!a || !b || a === b) { fill(out, h("p", { class: "empty" }, "Pick two different completed runs.")); return; }
  const [itemsA, itemsB] = await Promise.all([a, b].map((id) => listAll(`${runPath(evalId, id)}/output_items`)));
  const byId = new Map(itemsB.map((i) => [i.datasource_item_id, i]));
  const differ = itemsA.filter((i) => byId.has(i.datasource_item_id) && byId.get(i.datasource_item_id).status !== i.status);
  const label = (id) => { const r = runs.find((x) => x.id === id); return r ? r.name || r.model : shortId(id); };
  fill(out, h("p", {}, `${differ.length} of ${itemsA.length} items differ.`), table([
    { label: "#", cell: (i) => String(i.datasource_item_id), class: "num" },
    { label: "Item", cell: (i) => h("code", { class: "wrap" }, JSON.stringify(i.datasource_item)) },
    { label: label(a), cell: (i) => h("div", {}, badge(i.status === "pass" ? "passed" : "failed"), " ", answerOf(i)) },
    { label: label(b), cell: (i) => { const o = byId.get(i.datasource_item_id); return h("div", {}, badge(o.status === "pass" ? "passed" : "failed"), " ", answerOf(o)); } },
  ], differ, { caption: "Items that differ", empty: "The two runs grade every item alike." }));
}

/** #/evals/{id}/runs/{run}: the counts and every item with the model's answer and each grade. */
export async function run(main, { params }) {
  const [evalId, runId] = params;
  const box = h("div");
  async function refresh() {
    const r = await api(runPath(evalId, runId));
    const items = await listAll(`${runPath(evalId, runId)}/output_items`);
    fill(box,
      details([["Run", h("code", {}, r.id)], ["Model", h("code", {}, r.model || "—")], ["Status", badge(r.status)],
        ["Passed", `${r.result_counts.passed} of ${r.result_counts.total} (${rate(r.result_counts)})`],
        ["Failed / errored", `${r.result_counts.failed} / ${r.result_counts.errored}`],
        r.error && r.error.code ? ["Error", `${r.error.code}: ${r.error.message}`] : null]),
      table([
        { label: "#", cell: (i) => String(i.datasource_item_id), class: "num" },
        { label: "Status", cell: (i) => badge(i.status === "pass" ? "passed" : "failed") },
        { label: "Item", cell: (i) => h("code", { class: "wrap" }, JSON.stringify(i.datasource_item)) },
        { label: "Answer", cell: (i) => h("span", { class: "answer" }, answerOf(i)) },
        { label: "Grades", cell: (i) => h("ul", { class: "grades" }, i.results.map((g) =>
          h("li", {}, `${criterionName(g.name)}: ${g.score}`, g.passed ? " ✓" : " ✗", g.error ? ` (${g.error.code})` : ""))) },
      ], items, { caption: "Output items", empty: "No items graded yet." }));
    return r.status;
  }
  fill(main, pageHeader("Eval run", h("a", { class: "btn", href: `#/evals/${evalId}` }, "Back to the eval")), box);
  return poll(refresh, 1500);
}
