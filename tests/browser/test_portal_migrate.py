"""The portal's Migrate page in a real browser, with a second Tunery server as the source (it speaks the same
fine-tuning API as OpenAI): a preview moves nothing, a run lists the moved jobs and their aliases, a second run
moves nothing new and sets old and new answers side by side; an unreachable or unauthorised source is a sentence.

Its own project on the portal server (a key made for this module). Run:
``.venv/bin/pytest -m browser tests/browser/test_portal_migrate.py`` (needs ``apt-get install -y chromium``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import CHROMIUM
from tests.browser.test_portal_pages import AXE, PHONE
from tests.ceilings import ceiling, ceiling_ms
from tests.integration.harness import Server, free_port, tunery, wait_until_healthy
from tests.integration.test_fine_tuning import colour_jsonl, finished, upload, wait_for

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[dict[str, Any]]:
    """A second ``tunery serve`` (as the migration integration test's source) with two finished jobs."""
    data_dir = tmp_path_factory.mktemp("migration-source")
    port = free_port()
    env = {
        **os.environ,
        "TUNERY_DATA_DIR": str(data_dir),
        "TUNERY_MODELS__BASE_MODELS": f'["tiny-llama={tiny_model_dir}"]',
        "TUNERY_WORKER__POLL_INTERVAL_S": "0.3",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("TUNERY_STORAGE__DATABASE_URL", None)
    key = tunery(env, "keys", "create", "--project", "migration-source")
    log = data_dir / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tunery", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(proc, url, log)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=ceiling(20))
        hyper = {"n_epochs": 1, "batch_size": 5}
        validation = upload(client, colour_jsonl(10, offset=50), "held-out.jsonl")
        jobs = [
            client.fine_tuning.jobs.create(
                model="tiny-llama", training_file=upload(client, colour_jsonl(10, offset=i * 10), f"{suffix}.jsonl"),
                suffix=suffix, seed=7 + i, metadata={"team": suffix},
                method={"type": "supervised", "supervised": {"hyperparameters": hyper}},  # type: ignore[typeddict-item]
                **({"validation_file": validation} if i == 0 else {}),
            )
            for i, suffix in enumerate(("alpha", "beta"))
        ]  # fmt: skip
        done = [wait_for(client, job.id, finished, timeout=ceiling(60)) for job in jobs]
        assert all(job.status == "succeeded" for job in done), [job.error for job in done]
        yield {"url": f"{url}/v1", "key": key, "jobs": done}
        client.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=ceiling(3))
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def dest(portal_server: Server) -> Iterator[dict[str, Any]]:
    """This module's project on the portal server, and an API client for it."""
    key = tunery(portal_server.env, "keys", "create", "--project", "migrate")
    client = openai.OpenAI(base_url=f"{portal_server.url}/v1", api_key=key, max_retries=0, timeout=ceiling(20))
    yield {"key": key, "client": client}
    client.close()


@pytest.fixture(scope="module")
def page(request: pytest.FixtureRequest, dest: dict[str, Any]) -> Iterator[Page]:
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium)")
    browser: Browser = request.getfixturevalue("browser")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(ceiling_ms(5))
    context.add_init_script(f"localStorage.setItem('tunery.apiKey', {json.dumps(dest['key'])})")
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def open_migrate(page: Page, server: Server) -> None:
    page.goto(f"{server.url}/#/jobs")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Migrate", exact=True).click()
    expect(page.get_by_role("heading", name="Migrate", level=1)).to_be_visible()


def fill_form(page: Page, url: str, key: str) -> None:
    page.get_by_label("Source URL").fill(url)
    page.get_by_label("Source API key").fill(key)
    page.get_by_label("Base model here").select_option("tiny-llama")


def report_row(page: Page, job_id: str) -> Any:
    return page.get_by_role("table", name="Source jobs").get_by_role("row").filter(has_text=job_id)


def test_migrate_from_another_tunery_server_in_the_portal(
    page: Page, portal_server: Server, source: dict[str, Any], dest: dict[str, Any], screenshots: Path
) -> None:
    client: openai.OpenAI = dest["client"]
    old = source["jobs"]
    open_migrate(page, portal_server)
    expect(page.get_by_text("Nothing has been migrated into this project yet.")).to_be_visible()
    fill_form(page, source["url"], source["key"])

    page.get_by_role("button", name="Preview (dry run)").click()
    summary = page.get_by_test_id("migration-summary")
    expect(summary).to_contain_text("2 would move, 0 moved before, 0 would not move", timeout=ceiling_ms(10))
    for job in old:
        expect(report_row(page, job.id)).to_contain_text("would move")
        expect(report_row(page, job.id)).to_contain_text(job.fine_tuned_model)
    assert client.fine_tuning.jobs.list().data == [], "a preview creates nothing"

    page.get_by_role("button", name="Migrate", exact=True).click()
    expect(summary).to_contain_text("2 moved, 0 moved before, 0 not moved", timeout=ceiling_ms(30))
    new_ids = []
    for job in old:
        row = report_row(page, job.id)
        expect(row).to_contain_text("moved")
        link = row.get_by_role("link", name=re.compile("^ftjob-"))
        new_ids.append(link.inner_text())
        aliases = page.get_by_role("region", name="Old ids answering here")
        expect(aliases).to_contain_text(f"{job.fine_tuned_model} → the model of {new_ids[-1]}")
    history = page.get_by_role("table", name="Jobs moved before")
    expect(history.get_by_role("row")).to_have_count(3)  # the header and the two jobs
    created = {job.id: job for job in client.fine_tuning.jobs.list().data}
    assert set(created) == set(new_ids)
    assert {created[i].metadata["migrated_from"] for i in new_ids} == {job.id for job in old}  # type: ignore[index]

    moved = [wait_for(client, job_id, finished, timeout=ceiling(90)) for job_id in new_ids]
    assert all(job.status == "succeeded" for job in moved), [job.error for job in moved]
    page.get_by_role("button", name="Migrate", exact=True).click()
    expect(summary).to_contain_text("0 moved, 2 moved before, 0 not moved", timeout=ceiling_ms(30))
    answers = page.get_by_role("region", name="Old and new answers")
    expect(answers).to_be_visible()
    expect(answers.get_by_text("Prompt:")).to_have_count(len(old) * 3)  # the held-out prompts of each job
    expect(answers.get_by_text("Old answer", exact=True)).to_have_count(len(old) * 3)
    expect(answers.get_by_text("New answer", exact=True)).to_have_count(len(old) * 3)
    for job, new in zip(old, moved, strict=True):
        expect(report_row(page, job.id)).to_contain_text("already moved")
        expect(page.get_by_role("region", name="Old ids answering here")).to_contain_text(
            f"{job.fine_tuned_model} → {new.fine_tuned_model}"
        )
    assert len(client.fine_tuning.jobs.list().data) == 2, "a second run moves nothing new"

    # The page with its report: no sideways scroll at phone, tablet or desktop width, no serious axe findings.
    found: dict[int, list[str]] = {}
    try:
        for width in (PHONE["width"], 1024, 1280):  # 1024: the eight nav items take a row of their own
            page.set_viewport_size({"width": width, "height": 900})
            scroll = page.evaluate("document.documentElement.scrollWidth")
            assert scroll <= width, f"the migrate page scrolls sideways at {width}px ({scroll}px)"
            page.screenshot(path=str(screenshots / f"migrate-report-{width}.png"), full_page=True)
            page.add_script_tag(path=str(AXE))
            result = page.evaluate("""async () => (await axe.run(document, {resultTypes: ['violations']}))
                .violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')
                .map((v) => `${v.id}: ${v.help} — ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`)""")
            if result:
                found[width] = result
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})
    assert not found, json.dumps(found, indent=2)


def test_an_unreachable_or_unauthorised_source_is_a_sentence(
    page: Page, portal_server: Server, source: dict[str, Any], dest: dict[str, Any]
) -> None:
    open_migrate(page, portal_server)
    alert = page.get_by_role("alert")
    unreachable = f"http://127.0.0.1:{free_port()}/v1"
    fill_form(page, unreachable, "sk-anything")
    page.get_by_role("button", name="Migrate", exact=True).click()
    expect(alert).to_contain_text(f"Cannot reach the source {unreachable}", timeout=ceiling_ms(10))
    expect(alert).to_have_text(re.compile(r"^[A-Z].*\.$"))
    expect(page.get_by_label("Source URL")).to_be_focused()

    fill_form(page, source["url"], "wrong-key")
    page.get_by_role("button", name="Preview (dry run)").click()
    expect(alert).to_contain_text("refused the API key", timeout=ceiling_ms(10))
    expect(page.get_by_label("Source API key")).to_be_focused()
    expect(page.get_by_test_id("migration-summary")).to_have_count(0)
