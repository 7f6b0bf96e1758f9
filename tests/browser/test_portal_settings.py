"""The portal follows the server's own settings, not the defaults it was written with: a server that keeps 2
checkpoints a job (``TUNERY_WORKER__KEEP_CHECKPOINTS``) and trains LoRA rank 8, alpha 24, 512-token rows.

Its own server (the shared one runs the defaults). Run: ``.venv/bin/pytest -m browser
tests/browser/test_portal_settings.py`` (needs ``apt-get install -y chromium``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import CHROMIUM, serve
from tests.browser.test_portal_pages import chat_jsonl
from tests.ceilings import ceiling, ceiling_ms
from tests.integration.harness import Server

pytestmark = pytest.mark.browser

SETTINGS = {
    "TUNERY_WORKER__KEEP_CHECKPOINTS": "2",
    "TUNERY_WORKER__LORA_R": "8",
    "TUNERY_WORKER__LORA_ALPHA": "24",
    "TUNERY_WORKER__MAX_SEQ_LEN": "512",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    with serve(tmp_path_factory.mktemp("settings-data"), tiny_model_dir, **SETTINGS) as started:
        yield started


@pytest.fixture(scope="module")
def finished(server: Server) -> Iterator[dict[str, Any]]:
    """A 3-epoch job (one step an epoch, so 3 checkpoints saved), run to the end."""
    client = httpx.Client(base_url=f"{server.url}/v1", headers={"Authorization": f"Bearer {server.key}"},
                          timeout=ceiling(10))  # fmt: skip
    train = client.post("/files", files={"file": ("kept.jsonl", chat_jsonl(10))}, data={"purpose": "fine-tune"})
    train_id = train.json()["id"]
    hyper = {"n_epochs": 3, "batch_size": 10}
    body = {"model": "tiny-llama", "training_file": train_id, "suffix": "kept",
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}}}  # fmt: skip
    deadline = time.monotonic() + ceiling(20)
    while (created := client.post("/fine_tuning/jobs", json=body)).status_code != 200:
        assert time.monotonic() < deadline, created.text  # the file is still being checked
        time.sleep(0.2)
    job_id = created.json()["id"]
    deadline = time.monotonic() + ceiling(60)
    while (job := client.get(f"/fine_tuning/jobs/{job_id}").json())["status"] != "succeeded":
        assert job["status"] not in ("failed", "cancelled"), job
        assert time.monotonic() < deadline, f"the job did not finish: {job['status']}"
        time.sleep(0.3)
    checkpoints = client.get(f"/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
    yield {"job": job, "train": train_id, "checkpoints": checkpoints}
    client.close()


@pytest.fixture(scope="module")
def page(request: pytest.FixtureRequest, server: Server) -> Iterator[Page]:
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium)")
    browser: Browser = request.getfixturevalue("browser")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(ceiling_ms(5))
    context.add_init_script(f"localStorage.setItem('tunery.apiKey', {json.dumps(server.key)})")
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def test_kept_because_counts_the_checkpoints_this_server_keeps(
    page: Page, server: Server, finished: dict[str, Any]
) -> None:
    assert [c["step_number"] for c in finished["checkpoints"]] == [3, 2], "the server kept its 2 newest"
    page.goto(f"{server.url}/#/jobs/{finished['job']['id']}")
    checkpoints = page.get_by_role("table", name="Checkpoints")
    expect(checkpoints.get_by_role("row")).to_have_count(3)  # the header and 2 checkpoints
    expect(page.get_by_text("This server keeps the last 2 checkpoints, the fine-tuned model")).to_be_visible()
    expect(checkpoints.get_by_role("row").nth(1)).to_contain_text("the fine-tuned model; one of the last 2")
    expect(checkpoints.get_by_role("row").nth(2)).to_contain_text("one of the last 2")
    expect(page.get_by_text("one of the last 3")).to_have_count(0)


def test_the_wizard_shows_this_servers_defaults(page: Page, server: Server, finished: dict[str, Any]) -> None:
    page.goto(f"{server.url}/#/jobs/new?training_file={finished['train']}")
    page.get_by_role("button", name="Parameters", exact=True).click()
    page.get_by_text("Advanced: LoRA, sequence length, warm-up").click()
    expect(page.get_by_label("LoRA rank")).to_have_attribute("placeholder", "8")
    expect(page.get_by_label("LoRA alpha")).to_have_attribute("placeholder", "24")
    expect(page.get_by_label("Max sequence length")).to_have_attribute("placeholder", "512")
    expect(page.locator("#lora_rank-hint")).to_contain_text("default 8)")
    expect(page.locator("#max_seq_len-hint")).to_contain_text("default 512)")
