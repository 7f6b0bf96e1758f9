"""The portal's Evals page in Chromium against a real server: create an eval after testing its grader live,
run it on the tiny base model from the form and read each item's answer and grade, then compare two runs side
by side on the items where they differ.

Run: ``.venv/bin/pytest -m browser tests/browser/test_evals_portal.py`` (needs ``apt-get install -y chromium``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import CHROMIUM
from tests.integration.harness import Server

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
