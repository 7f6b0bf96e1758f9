"""The portal's Evals page in Chromium against a real server: create an eval after testing its grader live,
run it on the tiny base model from the form and read each item's answer and grade, then compare two runs side
by side on the items where they differ. A job trained with per-checkpoint evals shows each checkpoint's eval
pass rate on its page, with the best checkpoint marked.

Run: ``.venv/bin/pytest -m browser tests/browser/test_evals_portal.py`` (needs ``apt-get install -y chromium``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import CHROMIUM
from tests.ceilings import ceiling
from tests.integration.harness import Server
from tests.integration.test_evals import CRITERION, ITEM_SCHEMA, data_source, evals_settled, shrug_jsonl
from tests.integration.test_fine_tuning import upload, wait_for

pytestmark = pytest.mark.browser

RUN_TIMEOUT_MS = 240_000


@pytest.fixture
def page(request: pytest.FixtureRequest, portal_server: Server) -> Iterator[Page]:
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium)")
    browser: Browser = request.getfixturevalue("browser")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto(portal_server.url + "/")
    tab.evaluate("key => localStorage.setItem('tunery.apiKey', key)", portal_server.key)
    yield tab
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def jsonl_run(server: Server, eval_id: str, name: str, answers: list[str]) -> None:
    rows = [{"item": {"question": q, "answer": a}, "sample": {"output_text": s}}
            for (q, a), s in zip([("What is 2 + 2?", "4"), ("What is 3 + 5?", "8")], answers, strict=True)]  # fmt: skip
    body = {"name": name, "data_source": {"type": "jsonl", "source": {"type": "file_content", "content": rows}}}
    answer = httpx.post(f"{server.url}/v1/evals/{eval_id}/runs", json=body,
                        headers={"Authorization": f"Bearer {server.key}"}, timeout=30)  # fmt: skip
    assert answer.status_code == 201, answer.text


def test_create_test_grader_run_and_compare(page: Page, portal_server: Server, screenshots: Path) -> None:
    page.goto(portal_server.url + "/#/evals")
    expect(page.get_by_role("heading", name="Evals")).to_be_visible()
    page.get_by_label("Name", exact=True).fill("arithmetic")
    page.get_by_role("button", name="Test grader").click()
    expect(page.locator(".grader-result")).to_contain_text("Reward 1")
    page.get_by_label("Model answer").fill("5")
    page.get_by_role("button", name="Test grader").click()
    expect(page.locator(".grader-result")).to_contain_text("Reward 0")
    page.screenshot(path=str(screenshots / "evals-new.png"), full_page=True)
    page.get_by_role("button", name="Create eval").click()
    expect(page.get_by_role("heading", name="arithmetic")).to_be_visible()
    eval_id = re.search(r"#/evals/(eval_[0-9a-f]+)", page.url).group(1)  # type: ignore[union-attr]

    page.get_by_label(re.compile("^Model")).fill("tiny-llama")
    page.get_by_label("Max tokens per answer").fill("4")
    page.get_by_role("button", name="Run", exact=True).click()
    row = page.locator(".runs tbody tr").first
    expect(row).to_contain_text("completed", timeout=RUN_TIMEOUT_MS)
    expect(row).to_contain_text("0.0 %")
    row.get_by_role("link").click()
    expect(page.get_by_role("heading", name="Eval run")).to_be_visible()
    items = page.locator("tbody tr")
    expect(items).to_have_count(2)
    expect(items.first).to_contain_text("exact answer: 0")
    page.screenshot(path=str(screenshots / "evals-run.png"), full_page=True)

    jsonl_run(portal_server, eval_id, "tuned", ["4", "8"])
    jsonl_run(portal_server, eval_id, "base", ["4", "9"])
    page.get_by_role("link", name="Back to the eval").click()
    expect(page.locator(".runs tbody tr")).to_have_count(3, timeout=RUN_TIMEOUT_MS)
    expect(page.locator(".runs tbody tr", has_text="tuned")).to_contain_text("100.0 %", timeout=RUN_TIMEOUT_MS)
    expect(page.locator(".runs tbody tr", has_text="base")).to_contain_text("50.0 %", timeout=RUN_TIMEOUT_MS)
    page.get_by_label("First run").select_option(label="tuned (100.0 %)")
    page.get_by_label("Second run").select_option(label="base (50.0 %)")
    page.get_by_role("button", name="Compare").click()
    compare = page.get_by_role("region", name="Compare runs")
    expect(compare).to_contain_text("1 of 2 items differ")
    expect(compare.locator("tbody tr")).to_have_count(1)
    expect(compare.locator("tbody tr")).to_contain_text("9")
    page.screenshot(path=str(screenshots / "evals-compare.png"), full_page=True)


def test_job_page_shows_each_checkpoints_eval_pass_rate_and_marks_the_best(
    page: Page, portal_server: Server, screenshots: Path
) -> None:
    client = openai.OpenAI(base_url=f"{portal_server.url}/v1", api_key=portal_server.key, max_retries=0)
    ev = client.evals.create(name="shrug", data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA},
                             testing_criteria=[CRITERION])  # type: ignore[list-item]  # fmt: skip
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=upload(client, shrug_jsonl(12), "shrug-portal.jsonl"),
        method={"type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 10}}},
        extra_body={"evals": [{"eval_id": ev.id, "data_source": data_source()}]},
    )  # fmt: skip
    done = wait_for(client, job.id, evals_settled, timeout=ceiling(240))
    assert done.status == "succeeded", done.error
    best = (done.model_extra or {})["best_checkpoint"]
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert len(checkpoints) >= 2

    page.goto(f"{portal_server.url}/#/jobs/{job.id}")
    table = page.locator("table", has=page.locator("caption", has_text="Checkpoints"))
    expect(table.get_by_role("columnheader", name="Eval pass rate")).to_be_visible()
    rows = table.locator("tbody tr")
    expect(rows).to_have_count(len(checkpoints))
    for checkpoint in checkpoints:
        rate = checkpoint.metrics.model_extra["eval_pass_rate"]  # type: ignore[union-attr]
        row = rows.filter(has=page.get_by_role("cell", name=str(checkpoint.step_number), exact=True))
        expect(row).to_contain_text(f"{100 * rate:.1f} %")
    marked = table.locator(".best-checkpoint")
    expect(marked).to_have_count(1)
    expect(marked).to_contain_text("best")
    best_row = rows.filter(has=page.get_by_role("cell", name=str(best["step_number"]), exact=True))
    expect(best_row.locator(".best-checkpoint")).to_contain_text("★ best")
    page.screenshot(path=str(screenshots / "job-checkpoint-evals.png"), full_page=True)
