"""The portal's second pass (issue 16) in a real browser: what a first-time user tripped over on the files,
wizard, playground, models and deployments pages, phone width, and an axe-core scan of every page.

Its own project (a key made for this module), so the other browser modules' files and jobs do not show.
Run: ``.venv/bin/pytest -m browser tests/browser/test_portal_pages.py`` (needs ``apt-get install -y chromium``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import CHROMIUM
from tests.ceilings import ceiling, ceiling_ms
from tests.integration.harness import Server, tunery

pytestmark = pytest.mark.browser

AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
PHONE = {"width": 390, "height": 844}
NAV = ["Data files", "Fine-tuning", "Models", "Deployments", "Playground", "Evals", "Webhooks", "Migrate"]


def chat_jsonl(n: int, tag: str = "c") -> bytes:
    """Chat examples; the second one has two assistant turns, the first of them weight 0 (not trained)."""
    rows = []
    for i in range(n):
        messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": f"Say {tag} {i}"}]
        if i == 1:
            messages += [{"role": "assistant", "content": "hm", "weight": 0}, {"role": "user", "content": "Again"}]
        messages.append({"role": "assistant", "content": f"{tag} {i}"})
        rows.append({"messages": messages})
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def project(portal_server: Server) -> dict[str, Any]:
    """A fresh project with a training file, a finished job (its model) and a deployment of the base model."""
    key = tunery(portal_server.env, "keys", "create", "--project", "pages")
    client = httpx.Client(base_url=f"{portal_server.url}/openai/v1", headers={"api-key": key}, timeout=ceiling(10))
    train = client.post("/files", files={"file": ("pages-train.jsonl", chat_jsonl(12))}, data={"purpose": "fine-tune"})
    train_id = train.json()["id"]
    deadline = time.monotonic() + ceiling(20)
    while (status := client.get(f"/files/{train_id}").json()["status"]) != "processed":
        assert status != "error", client.get(f"/files/{train_id}").json()
        assert time.monotonic() < deadline, "the training file was never processed"
        time.sleep(0.2)
    hyper = {"n_epochs": 1, "batch_size": 4}
    body = {"model": "tiny-llama", "training_file": train_id, "suffix": "pages",
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}}}  # fmt: skip
    job = client.post("/fine_tuning/jobs", json=body)
    assert job.status_code == 200, job.text
    put = client.put("/deployments/base-chat", json={
        "sku": {"name": "standard", "capacity": 1},
        "properties": {"model": {"format": "OpenAI", "name": "tiny-llama", "version": "1"}},
    })  # fmt: skip
    assert put.status_code in (200, 201), put.text
    yield {"key": key, "client": client, "train": train_id, "job": job.json()["id"]}
    client.close()


def finished_job(project: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + ceiling(60)
    while (job := project["client"].get(f"/fine_tuning/jobs/{project['job']}").json())["status"] != "succeeded":
        assert job["status"] not in ("failed", "cancelled"), job
        assert time.monotonic() < deadline, f"the job did not finish: {job['status']}"
        time.sleep(0.3)
    return job


@pytest.fixture(scope="module")
def page(request: pytest.FixtureRequest, project: dict[str, Any]) -> Iterator[Page]:
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium)")
    browser: Browser = request.getfixturevalue("browser")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(ceiling_ms(5))
    context.add_init_script(f"localStorage.setItem('tunery.apiKey', {json.dumps(project['key'])})")
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def open_page(page: Page, server: Server, route: str) -> None:
    page.goto(f"{server.url}/{route}")
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    expect(page.get_by_text("Loading…")).to_have_count(0)


def upload_in_page(page: Page, name: str, data: bytes) -> None:
    page.get_by_role("group", name=re.compile("^Upload a JSONL file")).get_by_label(
        "Upload a JSONL file"
    ).set_input_files({"name": name, "mimeType": "application/jsonl", "buffer": data})


# ----------------------------------------------------------------------------------------------- defects
def test_a_small_file_meant_for_validation_is_processed_not_an_error(page: Page, portal_server: Server) -> None:
    """Defect 6: a 4-example file was marked error ("must have at least 10") at upload."""
    open_page(page, portal_server, "#/files")
    upload_in_page(page, "small-valid.jsonl", chat_jsonl(4, "v"))
    expect(page.get_by_text("small-valid.jsonl is ready: 4 examples")).to_be_visible(timeout=ceiling_ms(15))
    row = page.get_by_role("table", name="Files").get_by_role("row").filter(has_text="small-valid.jsonl")
    expect(row).to_contain_text("processed", ignore_case=True)
    page.goto(f"{portal_server.url}/#/jobs/new")
    page.get_by_role("button", name="Validation data", exact=True).click()
    expect(page.get_by_label("Validation file").locator("option", has_text="small-valid.jsonl")).to_have_count(1)


def test_a_json_array_is_one_problem_and_the_failed_check_is_not_a_green_bar(page: Page, portal_server: Server) -> None:
    """Defect 10: a pretty-printed JSON array gave hundreds of invalid_json rows under a full green bar."""
    rows = [json.loads(line) for line in chat_jsonl(30).splitlines()]
    open_page(page, portal_server, "#/files")
    upload_in_page(page, "array.json", json.dumps(rows, indent=2).encode())
    zone = page.get_by_role("group", name=re.compile("^Upload a JSONL file"))
    expect(zone.get_by_role("alert")).to_contain_text("array.json has problems", timeout=ceiling_ms(15))
    expect(zone.get_by_role("progressbar")).to_be_hidden()
    zone.get_by_role("link", name="see each one").click()
    problems = page.get_by_role("table", name="Problems by line")
    expect(problems.get_by_role("row")).to_have_count(2)  # the header and one problem
    expect(problems).to_contain_text("this is a JSON array; JSONL needs one object per line")
    expect(page.get_by_role("heading", name="Problems (1)")).to_be_visible()


@pytest.mark.parametrize(
    ("route", "heading"),
    [("#/files/file-doesnotexist", "File not found"), ("#/evals/eval_doesnotexist", "Eval not found")],
)
def test_not_found_pages_say_so(page: Page, portal_server: Server, route: str, heading: str) -> None:
    """Defect 10: a missing file or eval kept "Loading…" or empty sections."""
    page.goto(f"{portal_server.url}/{route}")
    expect(page.get_by_role("heading", level=1)).to_have_text(heading)
    expect(page.get_by_text("Loading…")).to_have_count(0)
    expect(page.locator("main a").last).to_be_visible()  # a way back


def test_a_page_still_loading_when_the_user_moves_on_does_not_draw_over_the_next(
    page: Page, portal_server: Server, project: dict
) -> None:
    """Defect (CI, stop 21): Migrate's data arrived after the user had opened a job, and Migrate replaced it."""
    held: list[Any] = []
    page.route("**/openai/v1/migrations", lambda route: held.append(route))
    try:
        open_page(page, portal_server, "#/jobs")
        with page.expect_request("**/openai/v1/migrations"):
            page.evaluate("location.hash = '#/migrate'")
        page.evaluate(f"location.hash = '#/jobs/{project['job']}'")
        expect(page.locator(".crumbs")).to_be_visible()
        job_heading = page.get_by_role("heading", level=1).inner_text()
        assert len(held) == 1
        with page.expect_response("**/openai/v1/migrations"):
            held[0].continue_()
        # Migrate's page has its data once the body's parse has run; two frames later its drawing would be done.
        page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
        page.wait_for_load_state("networkidle")
        expect(page.get_by_role("heading", level=1)).to_have_text(job_heading)
        expect(page.get_by_role("heading", name="Migrate")).to_have_count(0)
    finally:
        page.unroute("**/openai/v1/migrations")


def test_wizard_checks_ranges_as_typed_with_the_api_rules(page: Page, portal_server: Server, project: dict) -> None:
    """Defect 7: 100 epochs was accepted and refused only at submit, with the param path twice."""
    rules = project["client"].get("/fine_tuning/rules").json()["hyperparameters"]
    epochs = rules["n_epochs"]
    page.goto(f"{portal_server.url}/#/jobs/new?training_file={project['train']}")
    page.get_by_role("button", name="Parameters", exact=True).click()
    expect(page.get_by_text(f"Full passes over the training data ({epochs['min']}–{epochs['max']})")).to_be_visible()
    field = page.get_by_label("Number of epochs")
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and "/fine_tuning/jobs" in r.url else None)
    field.press_sequentially(str(epochs["max"] * 2))
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_text(f"Must be between {epochs['min']} and {epochs['max']}")).to_be_visible()
    assert "hyperparameters" not in (page.locator(".field-error:visible").first.text_content() or "")
    field.press("Enter")
    expect(page.get_by_role("heading", name="4. Parameters")).to_be_visible()  # not sent on
    expect(field).to_be_focused()
    multiplier = page.get_by_label("Learning rate multiplier")
    multiplier.fill("0")
    expect(
        page.get_by_text(f"Must be greater than 0 and at most {rules['learning_rate_multiplier']['max']}")
    ).to_be_visible()
    multiplier.fill("")
    field.fill("2")
    expect(field).not_to_have_attribute("aria-invalid", "true")
    expect(page.locator(".field-error:visible")).to_have_count(0)
    # Before submit: tokens × epochs and the steps (12 examples, batch auto).
    expect(page.get_by_text(re.compile(r"Trained tokens: [\d,]+ \([\d,]+ tokens × 2 epochs\)"))).to_be_visible()
    expect(page.get_by_text(re.compile(r"About \d+ training steps"))).to_be_visible()
    assert not posts, "nothing was submitted while a value was out of range"


def test_the_wizard_estimates_duration_from_this_servers_measured_speed(
    page: Page, portal_server: Server, project: dict
) -> None:
    job = finished_job(project)
    assert job["trained_tokens"] > 0
    open_page(page, portal_server, "#/jobs")
    page.goto(f"{portal_server.url}/#/jobs/new?training_file={project['train']}")
    page.get_by_role("button", name="Parameters", exact=True).click()
    estimate = page.locator(".estimate-time")
    expect(estimate).to_contain_text(
        re.compile(r"Expected duration: about .+ on this server \(measured [\d,.]+ tokens/s")
    )
    expect(estimate).to_contain_text("last 1 finished job on tiny-llama")


def test_the_wizards_advanced_settings_explain_themselves_and_the_job_echoes_them(
    page: Page, portal_server: Server, project: dict
) -> None:
    """LoRA rank, alpha, target modules, max sequence length and warm-up: collapsed, each with its help and this
    server's default, checked as typed with the API's ranges, sent, echoed on the job and cloned."""
    rules = project["client"].get("/fine_tuning/rules").json()["advanced"]
    page.goto(f"{portal_server.url}/#/jobs/new?training_file={project['train']}")
    page.get_by_role("button", name="Parameters", exact=True).click()
    rank = page.get_by_label("LoRA rank")
    expect(rank).to_be_hidden()  # collapsed until asked for
    page.get_by_text("Advanced: LoRA, sequence length, warm-up").click()
    expect(rank).to_have_attribute("placeholder", str(rules["lora_rank"]["default"]))
    expect(page.locator("#lora_rank-hint")).to_contain_text(f"(1–256; default {rules['lora_rank']['default']})")
    expect(page.locator("#max_seq_len-hint")).to_contain_text(f"default {rules['max_seq_len']['default']}")
    expect(page.locator("#warmup_ratio-hint")).to_contain_text("when the loss jumps or spikes in the first steps")
    expect(page.locator("#lora_target_modules-hint")).to_contain_text("q_proj, k_proj, v_proj")
    rank.fill(str(rules["lora_rank"]["max"] + 1))
    expect(rank).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_text(f"Must be between 1 and {rules['lora_rank']['max']}")).to_be_visible()
    targets = page.get_by_label("Target modules")
    targets.fill("q_proj, v-proj")
    expect(page.get_by_text("“v-proj” is not a layer name")).to_be_visible()
    rank.fill("4")
    page.get_by_label("LoRA alpha").fill("8")
    targets.fill("q_proj, v_proj")
    page.get_by_label("Max sequence length").fill("256")
    page.get_by_label("Warm-up ratio").fill("0.1")
    page.get_by_label("Number of epochs").fill("1")
    expect(page.locator(".field-error:visible")).to_have_count(0)
    page.get_by_role("button", name="Next", exact=True).click()
    request = page.get_by_label("Request JSON")
    expect(request).to_contain_text('"target_modules": [')
    expect(request).to_contain_text('"warmup_ratio": 0.1')
    page.get_by_role("button", name="Start fine-tuning").click()
    page.wait_for_url(re.compile(r"#/jobs/ftjob-\w+$"))
    job_id = page.url.rsplit("/", 1)[-1]
    client = project["client"]
    try:
        job = client.get(f"/fine_tuning/jobs/{job_id}").json()
        assert job["lora"] == {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
        assert (job["max_seq_len"], job["warmup_ratio"]) == (256, 0.1)
        details = page.get_by_role("region", name="Details")
        expect(details).to_contain_text("LoRA rank4")
        expect(details).to_contain_text("q_proj, v_proj")
        page.get_by_role("link", name="Clone settings").first.click()
        page.get_by_role("button", name="Parameters", exact=True).click()
        expect(page.get_by_label("LoRA rank")).to_have_value("4")  # opened: the clone differs from the defaults
        expect(page.get_by_label("Warm-up ratio")).to_have_value("0.1")
    finally:
        client.post(f"/fine_tuning/jobs/{job_id}/cancel")


def test_the_jobs_list_pages(page: Page, portal_server: Server, project: dict) -> None:
    """More jobs than a page: 20 a page, Previous/Next, and a search starts again at page one."""
    client = project["client"]
    body = {"model": "tiny-llama", "training_file": project["train"],
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}}}  # fmt: skip
    for i in range(22):  # cancelled at once: none trains, and none counts against the waiting-jobs limit
        created = client.post("/fine_tuning/jobs", json={**body, "suffix": f"bulk-{i:02d}"})
        assert created.status_code == 200, created.text
        client.post(f"/fine_tuning/jobs/{created.json()['id']}/cancel")
    total = len(client.get("/fine_tuning/jobs?limit=100").json()["data"])
    assert total > 22
    open_page(page, portal_server, "#/jobs")
    table = page.get_by_role("table", name="Fine-tuning jobs")
    expect(page.get_by_text(f"Showing 1–20 of {total}", exact=True)).to_be_visible()
    expect(table.get_by_role("row")).to_have_count(21)  # the header and 20 jobs
    expect(page.get_by_role("button", name="Previous page")).to_be_disabled()
    page.get_by_role("button", name="Next page").click()
    expect(page.get_by_text(f"Showing 21–{min(40, total)} of {total}", exact=True)).to_be_visible()
    expect(table.get_by_role("row")).to_have_count(min(40, total) - 20 + 1)
    expect(table).not_to_contain_text("bulk-21")  # newest first: the newest are on page one
    page.get_by_label("Search").fill("bulk-0")
    expect(page.get_by_text(f"Showing 1–10 of 10 ({total} in all)", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Next page")).to_be_hidden()


def test_compare_turned_on_mid_chat_sends_both_sides_the_same_history(page: Page, portal_server: Server) -> None:
    """Defect 8: the side added by "Compare" started empty while the other had the whole conversation."""
    open_page(page, portal_server, "#/playground?model=base-chat")
    page.get_by_label("Max tokens").fill("4")
    page.get_by_label("Message", exact=True).fill("first question")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("button", name="Send")).to_be_enabled(timeout=ceiling_ms(15))
    page.get_by_label("Compare side by side").check()
    left = page.get_by_role("log", name="Compare with conversation")
    expect(left.get_by_role("article", name="You said")).to_contain_text("first question")
    bodies: list[dict[str, Any]] = []
    page.on(
        "request",
        lambda r: bodies.append(json.loads(r.post_data or "{}")) if r.url.endswith("/chat/completions") else None,
    )
    page.get_by_label("Message", exact=True).fill("second question")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("button", name="Send")).to_be_enabled(timeout=ceiling_ms(15))
    assert len(bodies) == 2
    histories = [[(m["role"], m["content"]) for m in b["messages"] if m["role"] != "system"] for b in bodies]
    assert histories[0] == histories[1], histories
    assert [m for m in histories[0] if m[0] == "user"] == [("user", "first question"), ("user", "second question")]
    assert histories[0][1][0] == "assistant"
    # Time to first token and tokens/s instead of "chunks".
    expect(page.get_by_role("status").filter(has_text="first token after").first).to_contain_text("tokens")


# ---------------------------------------------------------------------------------------------- features
def test_a_file_page_previews_examples_with_the_trained_spans_marked(
    page: Page, portal_server: Server, project: dict
) -> None:
    open_page(page, portal_server, f"#/files/{project['train']}")
    preview = page.get_by_role("region", name="Preview")
    examples = preview.get_by_role("article")
    expect(examples).to_have_count(3)
    first, second = examples.nth(0), examples.nth(1)
    expect(first).to_contain_text("Say c 0")
    expect(first.locator(".msg-assistant")).to_contain_text("trained")
    expect(second.locator(".msg-assistant").first).to_contain_text("not trained (weight 0)")
    expect(second.locator(".msg-assistant").last).to_contain_text("trained")
    expect(first.locator(".msg-user .span-tag")).to_have_count(0)  # the prompt is context, not trained


def test_deployment_snippets_run_as_copied(page: Page, portal_server: Server, project: dict) -> None:
    open_page(page, portal_server, "#/deployments")
    snippets = page.get_by_role("region", name="Call a deployment")
    expect(snippets.get_by_label("Deployment")).to_have_value("base-chat")
    ids = {"curl": "curl", "Python: OpenAI": "openai-python", "Python: AzureOpenAI": "azure-python"}
    texts = {label: snippets.locator(f"pre[aria-labelledby=snippet-{i}]").inner_text() for label, i in ids.items()}
    env = {**os.environ, "TUNERY_API_KEY": project["key"]}
    assert portal_server.url in texts["curl"]
    assert '"base-chat"' in texts["curl"]
    out = subprocess.run(["bash", "-c", texts["curl"]], env=env, capture_output=True, text=True, timeout=ceiling(30))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["object"] == "chat.completion", out.stdout
    for label in ("Python: OpenAI", "Python: AzureOpenAI"):
        script = texts[label].replace('"Hello"}])', '"Hello"}], max_tokens=4)')
        ran = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=ceiling(60)
        )
        assert ran.returncode == 0, f"{label}: {ran.stderr}"


def test_files_list_searches_filters_sorts_and_pages(page: Page, portal_server: Server, project: dict) -> None:
    client = project["client"]
    for i in range(20):
        client.post(
            "/files", files={"file": (f"bulk-{i:02d}.jsonl", chat_jsonl(2, f"b{i}"))}, data={"purpose": "fine-tune"}
        )
    open_page(page, portal_server, "#/files")
    table = page.get_by_role("table", name="Files")
    expect(page.get_by_text(re.compile(r"^Showing 1–20 of 2\d$"))).to_be_visible()
    page.get_by_role("button", name="Next page").click()
    expect(page.get_by_text(re.compile(r"^Showing 21–2\d of 2\d$"))).to_be_visible()
    page.get_by_label("Search").fill("bulk-1")
    expect(table.get_by_role("row")).to_have_count(11)  # bulk-10 … bulk-19 and the header
    page.get_by_label("Search").fill("")
    page.get_by_label("Status").select_option(label="With problems")
    expect(table.get_by_role("row").nth(1)).to_contain_text("array.json")
    page.get_by_label("Status").select_option(label="All")
    page.get_by_label("Sort by").select_option(label="Name")
    expect(table.get_by_role("row").nth(1)).to_contain_text("array.json")
    expect(table.get_by_role("row").nth(2)).to_contain_text("bulk-00.jsonl")


def test_models_list_searches(page: Page, portal_server: Server, project: dict) -> None:
    model = finished_job(project)["fine_tuned_model"]
    open_page(page, portal_server, "#/models")
    table = page.get_by_role("table", name="Fine-tuned models")
    expect(table.get_by_role("row").filter(has_text=model)).to_have_count(1)
    page.get_by_label("Search").fill("no-such-model")
    expect(page.get_by_text("Nothing matches the search or filter.")).to_be_visible()
    page.get_by_label("Search").fill("pages")
    expect(table.get_by_role("row").filter(has_text=model)).to_have_count(1)


# ---------------------------------------------------------------------------------- every page, phone, axe
def every_route(project: dict[str, Any]) -> list[str]:
    bad = next(
        f["id"] for f in project["client"].get("/files?limit=100").json()["data"] if f["filename"] == "array.json"
    )
    return [
        "#/files",
        f"#/files/{project['train']}",
        f"#/files/{bad}",
        "#/jobs",
        "#/jobs/new",
        f"#/jobs/{project['job']}",
        "#/models",
        "#/deployments",
        "#/playground",
        "#/evals",
        "#/webhooks",
        "#/migrate",
    ]


def test_phone_width_every_page_fits_and_every_nav_item_is_reachable(
    page: Page, portal_server: Server, project: dict
) -> None:
    """Defect 9: at 390 px the nav hid Playground off-screen, tables were cut off, a model id wrapped into a
    16-line column and a bad file's problems sat 2.5 screens down."""
    finished_job(project)
    page.set_viewport_size(PHONE)
    try:
        for route in every_route(project):
            open_page(page, portal_server, route)
            page.wait_for_load_state("networkidle")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"{route} scrolls sideways at phone width ({width}px)"
            cut = page.evaluate("""() => [...document.querySelectorAll('.table-wrap')]
                .filter((w) => w.scrollWidth > w.clientWidth + 1).length""")
            assert cut == 0, f"{route}: a table is cut off"
        for name in NAV:
            link = page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True)
            box = link.bounding_box()
            assert box is not None
            assert box["x"] >= 0, f"{name} is off-screen: {box}"
            assert box["x"] + box["width"] <= PHONE["width"], f"{name} is off-screen: {box}"
            link.click()
            expect(page.get_by_role("heading", level=1)).to_be_visible()
        open_page(page, portal_server, f"#/jobs/{project['job']}")
        expect(page.locator(".chart-grid text").first).to_be_visible()
        label = page.evaluate(
            "Math.min(...[...document.querySelectorAll('.chart-grid text')]"
            ".map((t) => t.getBoundingClientRect().height))"
        )
        assert label >= 10, f"chart labels are {label:.1f}px tall at phone width"
        open_page(page, portal_server, every_route(project)[2])
        top = page.get_by_role("heading", name=re.compile("^Problems")).bounding_box()
        assert top is not None
        assert top["y"] < PHONE["height"], f"the problems start below the first screen ({top})"
        open_page(page, portal_server, "#/models")
        model = page.get_by_role("table", name="Fine-tuned models").locator("code.wrap").first
        height = model.bounding_box()["height"]
        assert height < 4 * 22, f"a model id wraps into a tall column ({height}px)"
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})


@pytest.mark.parametrize(("width", "theme"), [(1280, "light"), (PHONE["width"], "light"), (1280, "dark")])
def test_axe_finds_no_serious_violations_on_any_page(
    page: Page, portal_server: Server, project: dict, width: int, theme: str
) -> None:
    """Every page, in the light theme at desktop and phone width and in the dark theme (the footer's Theme menu)."""
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(portal_server.url)
    page.evaluate("(theme) => localStorage.setItem('tunery.theme', theme)", theme)
    page.reload()  # the theme is applied as the portal loads
    found: dict[str, list[str]] = {}
    try:
        for route in every_route(project):
            open_page(page, portal_server, route)
            page.wait_for_load_state("networkidle")
            page.add_script_tag(path=str(AXE))
            result = page.evaluate("""async () => (await axe.run(document, {resultTypes: ['violations']}))
                .violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')
                .map((v) => `${v.id}: ${v.help} — ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`)""")
            assert page.evaluate("document.documentElement.dataset.theme") == theme
            if result:
                found[route] = result
    finally:
        page.evaluate("localStorage.removeItem('tunery.theme')")
        page.set_viewport_size({"width": 1280, "height": 900})
    assert not found, json.dumps(found, indent=2)
