// The portal shell: sign-in, the header, and a hash router (#/files, #/jobs/ftjob-..., ...).
// Each page module exports functions render(main, route) that may return a cleanup function
// (stop polling, abort streams) which the router calls before showing the next page.
// Each page draws into a view of its own: a page whose data arrives after the user has moved on draws into a
// detached view (and is cleaned up at once), never over the page now shown.

import { api, clearKey, getKey, setKey } from "./api.js";
import * as evals from "./evals.js";
import * as files from "./files.js";
import * as jobs from "./jobs.js";
import * as migrate from "./migrate.js";
import * as models from "./models.js";
import * as playground from "./playground.js";
import { alertBox, fill, h, shortId } from "./ui.js";
import * as webhooks from "./webhooks.js";
import * as wizard from "./wizard.js";

const ROUTES = [
  [/^\/files$/, files.list, "files", "Data files"],
  [/^\/files\/([^/]+)$/, files.detail, "files", "Data file"],
  [/^\/jobs$/, jobs.list, "jobs", "Fine-tuning"],
  [/^\/jobs\/new$/, wizard.render, "jobs", "Create a fine-tuned model"],
  [/^\/jobs\/([^/]+)$/, jobs.detail, "jobs", "Fine-tuning job"],
  [/^\/models$/, models.models, "models", "Models"],
  [/^\/deployments$/, models.deployments, "deployments", "Deployments"],
  [/^\/playground$/, playground.render, "playground", "Playground"],
  [/^\/evals$/, evals.list, "evals", "Evals"],
  [/^\/evals\/([^/]+)$/, evals.detail, "evals", "Eval"],
  [/^\/evals\/([^/]+)\/runs\/([^/]+)$/, evals.run, "evals", "Eval run"],
  [/^\/webhooks$/, webhooks.render, "webhooks", "Webhooks"],
  [/^\/migrate$/, migrate.render, "migrate", "Migrate"],
];
const PROJECT_STORAGE = "tunery.project";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const account = document.getElementById("account");
let cleanup = null;
let current = null; // the view the shown page draws into
let checkingKey = false; // a 401 while signing in is the sign-in form's to report

export function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function parse() {
  const [path, search = ""] = (location.hash.slice(1) || "/jobs").split("?");
  return { path, query: new URLSearchParams(search) };
}

async function route() {
  if (cleanup) { try { cleanup(); } catch (e) { console.warn(e); } cleanup = null; }
  current = null;
  if (!getKey()) return showSignIn();
  const { path, query } = parse();
  const found = ROUTES.map(([re, page, section, title]) => ({ m: path.match(re), page, section, title })).find((r) => r.m);
  renderChrome(found ? found.section : null);
  const view = h("div", { class: "view" });
  current = view;
  main.replaceChildren(view);
  if (!found) {
    view.append(h("h1", { tabindex: "-1" }, "Page not found"), h("p", {}, h("a", { href: "#/jobs" }, "Go to fine-tuning jobs")));
    return;
  }
  document.title = `${found.title} · Tunery`;
  try {
    const result = await found.page(view, { params: found.m.slice(1).map(decodeURIComponent), query, navigate, learnProject });
    if (typeof result === "function") {
      if (current === view) cleanup = result;
      else try { result(); } catch (e) { console.warn(e); } // the user moved on while it loaded
    }
  } catch (error) {
    if (current !== view) return;
    // No half-drawn page ("Loading…", empty sections): a heading that says what happened, the error, a way back.
    const box = alertBox();
    box.show(error);
    const missing = error.status === 404;
    if (missing) document.title = `${found.title} not found · Tunery`;
    view.replaceChildren(h("h1", { tabindex: "-1" }, missing ? `${found.title} not found` : found.title), box,
      h("p", {}, h("a", { href: `#/${found.section}` }, "Back to the list")));
  }
  if (current !== view) return;
  const heading = view.querySelector("h1");
  if (heading && document.activeElement === document.body) heading.focus({ preventScroll: true });
}

function renderChrome(section) {
  for (const link of nav.querySelectorAll("a")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  nav.hidden = false;
  const key = getKey();
  const project = localStorage.getItem(PROJECT_STORAGE);
  fill(account,
    h("span", { class: "who" },
      project ? h("span", { title: `Project ${project} (the organization_id of your jobs)` }, "Project ", h("code", {}, shortId(project))) : null,
      h("span", { title: "Signed in with this API key" }, "Key ", h("code", {}, `${key.slice(0, 8)}…`))),
    h("button", { type: "button", class: "btn btn-quiet", onclick: signOut }, "Sign out"));
}

/** Jobs carry organization_id (the project); remember it for the header. */
function learnProject(projectId) {
  if (!projectId || localStorage.getItem(PROJECT_STORAGE) === projectId) return;
  localStorage.setItem(PROJECT_STORAGE, projectId);
  renderChrome(parse().path.split("/")[1] || "jobs");
}

function signOut() {
  clearKey();
  localStorage.removeItem(PROJECT_STORAGE);
  route();
}

function showSignIn(message) {
  nav.hidden = true;
  account.replaceChildren();
  document.title = "Sign in · Tunery";
  const input = h("input", { id: "api-key", name: "api-key", type: "password", autocomplete: "off", required: true, spellcheck: "false" });
  const alert = alertBox();
  const button = h("button", { type: "submit", class: "btn btn-primary" }, "Sign in");
  const form = h("form", { class: "card signin" },
    h("h1", { tabindex: "-1" }, "Sign in"),
    h("p", { class: "muted" }, "Tunery's portal calls the same REST API as your scripts, with your API key. ",
      "The key stays in this browser (local storage) and is sent only to this server."),
    h("label", { for: "api-key" }, "API key"),
    input,
    h("p", { class: "hint" }, "Create one with ", h("code", {}, "tunery keys create --project NAME"),
      "; ", h("code", {}, "tunery serve"), " prints the first key when it starts."),
    alert,
    h("div", { class: "form-actions" }, button));
  if (message) alert.show({ message });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    setKey(input.value.trim());
    checkingKey = true;
    try {
      await api("/models");
      const page = await api("/fine_tuning/jobs?limit=1");
      if (page.data[0]) localStorage.setItem(PROJECT_STORAGE, page.data[0].organization_id);
      route();
    } catch (error) {
      clearKey();
      alert.show(error.status === 401 ? { message: "That key was not accepted. Check it and try again." } : error);
      button.disabled = false;
      input.focus();
    } finally {
      checkingKey = false;
    }
  });
  fill(main, form);
  input.focus();
}

window.addEventListener("tunery:unauthorized", () => {
  if (!getKey() || checkingKey) return;
  clearKey();
  if (cleanup) { cleanup(); cleanup = null; }
  current = null;
  showSignIn("The server no longer accepts your key. Sign in again.");
});
window.addEventListener("hashchange", route);
route();

// A manual theme (Auto follows the system): a menu in the footer, remembered in this browser.
const THEME_STORAGE = "tunery.theme";
function applyTheme(theme) {
  if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}
applyTheme(localStorage.getItem(THEME_STORAGE));
document.querySelector(".footer")?.append(" · ", h("label", { class: "theme-choice" }, "Theme ",
  h("select", { "aria-label": "Colour theme", onchange: (e) => { localStorage.setItem(THEME_STORAGE, e.target.value); applyTheme(e.target.value); } },
    [["auto", "Auto (system)"], ["light", "Light"], ["dark", "Dark"]].map(([v, t]) =>
      h("option", { value: v, selected: (localStorage.getItem(THEME_STORAGE) || "auto") === v }, t)))));
