"""The portal's job pages, second pass (issue 16): what a first-time user tripped over, in a real browser.

One short job that succeeds (step-0 validation kept, file names, chart controls, checkpoints that go with a
deleted model), then a long job with a second one waiting behind it (why it waits, only legal actions, every
step charted, hover at one step, ETA with its certainty, pause without a finish time, errors as sentences,
a notification when it ends), then the list (search, filter, compare, clone).
Run: ``.venv/bin/pytest -m browser tests/browser/test_portal_jobs.py``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import CHROMIUM
from tests.browser.test_portal import accept_dialogs, api, chart_points, colour_jsonl, shot
from tests.ceilings import ceiling, ceiling_ms
from tests.integration.harness import Server

pytestmark = pytest.mark.browser

JOB_TIMEOUT_S = ceiling(60)


@pytest.fixture(scope="module")
def page(request: pytest.FixtureRequest, portal_server: Server) -> Iterator[Page]:
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium)")
    browser: Browser = request.getfixturevalue("browser")
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(ceiling_ms(5))
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto(portal_server.url)
    tab.get_by_label("API key").fill(portal_server.key)
    tab.get_by_label("API key").press("Enter")
    expect(tab.get_by_role("navigation", name="Main")).to_be_visible()
    yield tab
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    return {}


def wait_for(client: httpx.Client, path: str, done: Any, timeout_s: float = JOB_TIMEOUT_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body = client.get(path).json()
        if done(body):
            return body
        assert time.monotonic() < deadline, f"{path} never got there: {body}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def files(portal_server: Server) -> dict[str, str]:
    ids = {}
    with api(portal_server) as client:
        for key, name, data in (
            ("train", "jobs-train.jsonl", colour_jsonl(40)),
            ("valid", "jobs-valid.jsonl", colour_jsonl(10, 300)),
        ):
            created = client.post("/files", files={"file": (name, data)}, data={"purpose": "fine-tune"}).json()
            wait_for(client, f"/files/{created['id']}", lambda f: f["status"] == "processed")
            ids[key] = created["id"]
    return ids


def create_job(server: Server, files: dict[str, str], suffix: str, epochs: int, batch: int) -> dict[str, Any]:
    body = {
        "model": "tiny-llama", "training_file": files["train"], "validation_file": files["valid"], "suffix": suffix,
        "metadata": {"team": "colours"},
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs, "batch_size": batch}}},
    }  # fmt: skip
    with api(server) as client:
        created = client.post("/fine_tuning/jobs", json=body)
        assert created.status_code == 200, created.text
        return created.json()


HOVER = """(fraction) => {
    const svg = [...document.querySelectorAll('[role=img]')].find((e) => e.ariaLabel.startsWith('Loss:'));
    const box = svg.querySelector('path[data-series=Training]').getBoundingClientRect();  // the drawn steps
    svg.dispatchEvent(new PointerEvent('pointermove', {
        clientX: box.left + box.width * fraction, clientY: box.top + box.height / 2, bubbles: true}));
    return svg.closest('figure').querySelector('.chart-readout').textContent;
}"""


def status_region(page: Page) -> Any:
    return page.get_by_role("region", name="Status")


# ------------------------------------------------------------------------------------------------ a short job
def test_a_finished_job_keeps_step_zero_names_its_files_and_has_chart_controls(
    page: Page, portal_server: Server, files: dict[str, str], screenshots: Path, state: dict[str, Any]
) -> None:
    job = create_job(portal_server, files, "short", epochs=2, batch=4)  # 20 steps
    state["short"] = job
    page.goto(f"{portal_server.url}/#/jobs/{job['id']}")
    expect(status_region(page)).to_contain_text("succeeded", ignore_case=True, timeout=ceiling_ms(60))

    # Defect 11: file names on the job page, not ids.
    expect(page.get_by_role("link", name="jobs-train.jsonl")).to_be_visible()
    expect(page.get_by_role("link", name="jobs-valid.jsonl")).to_be_visible()

    # Defect 4: the step-0 (before training) validation point is still charted once the job has finished.
    loss = page.get_by_role("figure").filter(has=page.get_by_role("img", name=re.compile("^Loss:")))
    loss.locator("summary", has_text="Data table").click()
    table = loss.get_by_role("table", name="Loss by step")
    expect(table.get_by_role("row").nth(1).get_by_role("rowheader")).to_have_text("0")
    expect(table.get_by_role("row")).to_have_count(21 + 1)  # header + steps 0..20

    # Defect 5: the two validation lines are named and explained.
    expect(loss.get_by_role("button", name="Validation (one batch)")).to_be_visible()
    expect(page.get_by_role("region", name="Metrics")).to_contain_text("that is the line to judge")

    # Chart controls: series toggle, smoothing, log scale, CSV.
    before = chart_points(page, "Loss")
    loss.get_by_role("button", name="Validation (one batch)").click()
    expect(loss.get_by_role("button", name="Validation (one batch)")).to_have_attribute("aria-pressed", "false")
    assert chart_points(page, "Loss") < before
    page.get_by_label("Loss: smoothing").select_option("0.9")
    expect(loss.locator("path.raw")).to_have_count(1)  # the raw training line stays, faint, under the smoothed one
    page.get_by_label("Loss: log scale").check()
    expect(loss.locator("svg")).to_contain_text("log scale")
    with page.expect_download() as download:
        loss.get_by_role("button", name="Download Loss as CSV").click()
    text = Path(download.value.path()).read_text()
    assert text.startswith("step,Loss Training,Loss Validation (one batch),Loss Full validation\n0,")
    assert len(text.strip().splitlines()) == 22
    shot(page, screenshots, "jobs-01-finished-short-job")


def test_the_playground_takes_the_system_message_from_the_training_data_and_reports_speed(
    page: Page, portal_server: Server, state: dict[str, Any]
) -> None:
    with api(portal_server) as client:
        model = client.get(f"/fine_tuning/jobs/{state['short']['id']}").json()["fine_tuned_model"]
    page.goto(f"{portal_server.url}/#/playground?model={model}")
    expect(page.get_by_label("System message")).to_have_value("Name the colour code.")  # defect 11: prefilled
    page.get_by_label("Max tokens").fill("8")
    page.get_by_label("Message", exact=True).fill("Colour red number 3?")
    page.get_by_role("button", name="Send").click()
    status = page.get_by_role("status").filter(has_text="finish")
    expect(status).to_contain_text(re.compile(r"First token after \d+\.\d\d s"), timeout=ceiling_ms(20))
    expect(status).not_to_contain_text("chunks")  # defect 11: no jargon


def test_deleting_the_model_takes_its_checkpoints_as_the_dialog_says(
    page: Page, portal_server: Server, state: dict[str, Any]
) -> None:
    job = state["short"]
    page.goto(f"{portal_server.url}/#/jobs/{job['id']}")
    checkpoints = page.get_by_role("table", name="Checkpoints")
    model_row = checkpoints.get_by_role("row").filter(has_text="step-").first
    expect(checkpoints.get_by_role("row").nth(1)).to_contain_text("the fine-tuned model")  # defect 1: why kept
    expect(model_row).to_contain_text("one of the last 3")
    with api(portal_server) as client:
        model = client.get(f"/fine_tuning/jobs/{job['id']}").json()["fine_tuned_model"]
    page.get_by_role("link", name="Models").click()
    row = page.get_by_role("table", name="Fine-tuned models").get_by_role("row").filter(has_text=model)
    accept_dialogs(page)
    row.get_by_role("button", name=re.compile("^Delete")).click()
    expect(page.get_by_role("table", name="Fine-tuned models").get_by_role("row").filter(has_text=model)).to_have_count(
        0
    )
    page.goto(f"{portal_server.url}/#/jobs/{job['id']}")
    expect(page.get_by_text("was deleted, and its checkpoints with it")).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("^Deploy step"))).to_have_count(0)
    with api(portal_server) as client:
        assert client.get(f"/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"] == []
        assert client.get(f"/models/{model}:ckpt-step-10").status_code == 404


# ----------------------------------------------------------------------------------- a long job and one behind it
def test_a_waiting_job_says_why_and_offers_only_legal_actions(
    page: Page, portal_server: Server, files: dict[str, str], screenshots: Path, state: dict[str, Any]
) -> None:
    state["long"] = long = create_job(portal_server, files, "long", epochs=40, batch=1)  # 1600 steps: cancelled later
    with api(portal_server) as client:
        wait_for(client, f"/fine_tuning/jobs/{long['id']}", lambda j: j["status"] == "running")
    behind = create_job(portal_server, files, "behind", epochs=1, batch=1)
    page.goto(f"{portal_server.url}/#/jobs/{behind['id']}")
    status = status_region(page)
    expect(status).to_contain_text("pending", ignore_case=True)
    # Defect 3: the real reason it waits (a job training, its place in the queue), not a stock phrase.
    expect(status).to_contain_text("Next in the queue; 1 job training now")
    # Defect 2: no Pause on a job that cannot pause; Cancel is offered.
    expect(page.get_by_role("button", name="Cancel job")).to_be_visible()
    expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    shot(page, screenshots, "jobs-02-waiting-job")
    accept_dialogs(page)
    page.get_by_role("button", name="Cancel job").click()
    expect(status).to_contain_text("cancelled", ignore_case=True)
    # Defect 4: a cancelled job's charts do not wait for metrics forever.
    expect(page.get_by_text("No metrics: the job was cancelled before its first step.").first).to_be_visible()
    expect(page.get_by_text("Waiting for the first metrics")).to_have_count(0)


def test_a_running_job_charts_every_step_and_pauses_cleanly(
    page: Page, portal_server: Server, screenshots: Path, state: dict[str, Any]
) -> None:
    long = state["long"]
    page.goto(f"{portal_server.url}/#/jobs/{long['id']}")
    status = status_region(page)
    expect(status).to_contain_text("running", ignore_case=True)
    loss = page.get_by_role("img", name=re.compile("^Loss:"))
    # Defect 4: each step's training loss, not one point every few steps (this server reports every 5 steps).
    expect(loss).to_have_attribute("aria-label", re.compile(r"up to step ([3-9]\d|\d{3,})$"), timeout=ceiling_ms(30))
    label = loss.get_attribute("aria-label") or ""
    points, last = (int(n) for n in re.findall(r"\d+", label)[:2])
    assert points >= last, f"every step charted: {label}"
    # Defect 4: a steadier ETA that says how sure it is.
    expect(status).to_contain_text(re.compile(r"about .+ left \((rough|±|steady)"), timeout=ceiling_ms(15))

    # Chart controls survive new steps: the chart is updated in place, so focus stays on the menu.
    page.get_by_label("Loss: smoothing").focus()
    expect(loss).not_to_have_attribute("aria-label", loss.get_attribute("aria-label") or "", timeout=ceiling_ms(10))
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Loss: smoothing"

    # Defect 11: hovering reads every series at ONE step (validation only where it was measured).
    for fraction in (0.31, 0.47, 0.53, 0.62, 0.71, 0.83):
        text = page.evaluate(HOVER, fraction)  # move and read in one task: the chart redraws as steps arrive
        step = int(re.match(r"Step (\d+) · ", text).group(1))  # type: ignore[union-attr]
        if step % 5:
            assert "Validation" not in text, f"a validation value from another step: {text}"
            break
    else:
        pytest.fail("every hovered step was a validation step")

    page.get_by_role("button", name="Pause").click()
    expect(status).to_contain_text("paused", ignore_case=True, timeout=ceiling_ms(30))
    expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    # Defect 4: a paused job has no finish time, and its training time stops.
    details = page.get_by_role("region", name="Details")
    expect(details.get_by_text("Paused at")).to_be_visible()
    expect(details.get_by_text("Finished", exact=True)).to_have_count(0)
    expect(status).to_contain_text("ETA paused")
    trained = status.locator("span", has_text="Training time").locator("xpath=following-sibling::span").first
    first = trained.inner_text()
    page.wait_for_timeout(
        2500
    )  # the clock ticks every second: a paused job's must not move (a slow machine only waits longer)
    assert trained.inner_text() == first
    # Defect 1: the pause checkpoint says why it is kept.
    expect(page.get_by_role("table", name="Checkpoints")).to_contain_text("saved at a pause")
    shot(page, screenshots, "jobs-03-paused-job")

    # Defect 2: an API refusal reads as a sentence (no "Error 409:", no field name in parentheses).
    message = "Cannot resume job now: it is being deleted."
    page.route(
        "**/resume",
        lambda route: route.fulfill(
            status=409, content_type="application/json",
            json={"error": {"message": message, "type": "invalid_request_error", "param": "fine_tuning_job_id"}},
        ),
    )  # fmt: skip
    page.get_by_role("button", name="Resume").click()
    alert = page.get_by_role("alert").filter(has_text="Cannot resume")
    expect(alert).to_have_text(message)
    page.unroute("**/resume")
    page.get_by_role("button", name="Resume").click()
    expect(status).to_contain_text(re.compile("resuming|running", re.IGNORECASE))

    # Notifications: a browser notification when the job ends while the tab is open.
    page.evaluate(
        """() => { window.__notes = []; window.Notification = class {
            static permission = "granted"; constructor(t) { window.__notes.push(t); } }; }"""
    )
    accept_dialogs(page)
    page.get_by_role("button", name="Cancel job").click()
    expect(status).to_contain_text("cancelled", ignore_case=True)
    page.wait_for_function("window.__notes.length > 0")
    assert page.evaluate("window.__notes") == ["Fine-tuning job long cancelled."]


def test_the_list_searches_filters_and_compares_jobs(
    page: Page, portal_server: Server, screenshots: Path, state: dict[str, Any]
) -> None:
    page.goto(f"{portal_server.url}/#/jobs")
    jobs = page.get_by_role("table", name="Fine-tuning jobs")
    row = jobs.get_by_role("row").filter(has_text="short")
    expect(row).to_contain_text("jobs-train.jsonl")  # defect 11: suffix, file name, progress and tags in the list
    expect(row).to_contain_text("team: colours")
    expect(row).to_contain_text("done")
    page.get_by_label("Search").fill("long")
    expect(jobs.get_by_role("row")).to_have_count(2)
    page.get_by_label("Search").fill("")
    page.get_by_label("Status").select_option("cancelled")
    expect(jobs.get_by_role("row").filter(has_text="short")).to_have_count(0)
    expect(jobs.get_by_role("row").filter(has_text="behind")).to_have_count(1)
    page.get_by_label("Status").select_option("")
    page.get_by_label("Compare short").check()
    page.get_by_label("Compare long").check()
    page.get_by_role("button", name="Compare selected").click()
    expect(page.get_by_role("heading", name="Compare runs")).to_be_visible()
    chart = page.get_by_role("figure").filter(has=page.get_by_role("img", name=re.compile("^Training loss:")))
    expect(chart.get_by_role("button", name="short")).to_be_visible()
    expect(chart.get_by_role("button", name="long")).to_be_visible()
    shot(page, screenshots, "jobs-04-compare")
    # A manual dark mode, remembered across reloads, whatever the system prefers.
    page.emulate_media(color_scheme="light")
    page.get_by_label("Colour theme").select_option("dark")
    background = "getComputedStyle(document.body).backgroundColor"
    assert page.evaluate(background) == "rgb(18, 22, 27)"
    page.reload()
    expect(page.get_by_label("Colour theme")).to_have_value("dark")
    assert page.evaluate(background) == "rgb(18, 22, 27)"
    page.get_by_label("Colour theme").select_option("auto")
    assert page.evaluate(background) == "rgb(246, 247, 249)"
    page.get_by_role("link", name="Clone the settings of short").click()
    expect(page.get_by_role("heading", name="1. Method and base model")).to_be_visible()
    assert "n_epochs=2" in page.url
    assert "batch_size=4" in page.url


def test_the_new_job_pages_fit_a_phone(page: Page, portal_server: Server, state: dict[str, Any]) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    ids = f"{state['short']['id']},{state['long']['id']}"
    for route in ("#/jobs", f"#/jobs?compare={ids}", f"#/jobs/{state['long']['id']}"):
        page.goto(f"{portal_server.url}/{route}")
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        expect(page.get_by_text("Loading…")).to_have_count(0)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{route} scrolls sideways at phone width ({width}px)"
    page.set_viewport_size({"width": 1280, "height": 900})
