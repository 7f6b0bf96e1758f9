"""The portal's flows in a real browser against a real server: sign in, upload, the wizard, a job training
live, deploy a checkpoint, streamed chat, side-by-side compare, cancel.

The tests run in file order and share one browser page and one server (a user's session, step by step).
Screenshots of every page land in ``test-artifacts/screenshots/``.
Run: ``.venv/bin/pytest -m browser tests/browser`` (needs ``apt-get install -y chromium``).
"""

from __future__ import annotations

import json
import re
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Locator, Page, expect

from tests.browser.conftest import CHROMIUM
from tests.ceilings import ceiling, ceiling_ms
from tests.integration.harness import Server

pytestmark = pytest.mark.browser

WORDS = ["red", "blue", "green", "amber", "violet", "black", "white", "olive", "coral", "ivory", "teal", "gold"]
TRAIN_EXAMPLES = 40
EPOCHS = 10  # × 40 examples × batch 1 = 400 steps: long enough to watch on a fast CPU (120 took 7 s)
STEPS = TRAIN_EXAMPLES * EPOCHS
JOB_TIMEOUT_MS = ceiling_ms(60)  # the wizard job (400 tiny steps) takes ~30 s on a quiet machine


def colour_jsonl(n: int, offset: int = 0) -> bytes:
    rows = []
    for i in range(offset, offset + n):
        word = WORDS[i % len(WORDS)]
        rows.append({"messages": [
            {"role": "system", "content": "Name the colour code."},
            {"role": "user", "content": f"Colour {word} number {i}?"},
            {"role": "assistant", "content": f"The code for {word} is {word.upper()}-{len(word)}."},
        ]})  # fmt: skip
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


BAD_JSONL = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\nnot json\n'
BAD_JSONL += b'{"messages": [{"role": "wizard", "content": "hi"}]}\n'


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("uploads")
    files = {
        "train": ("colours-train.jsonl", colour_jsonl(TRAIN_EXAMPLES)),
        "valid": ("colours-valid.jsonl", colour_jsonl(10, offset=500)),
        "bad": ("broken.jsonl", BAD_JSONL),
    }
    out = {}
    for key, (name, data) in files.items():
        (folder / name).write_bytes(data)
        out[key] = folder / name
    return out


@pytest.fixture(scope="module")
def page(request: pytest.FixtureRequest) -> Iterator[Page]:
    """One tab for the whole module: the portal keeps the key in this context's localStorage."""
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium)")
    browser: Browser = request.getfixturevalue("browser")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(ceiling_ms(5))
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    return {}


def shot(page: Page, folder: Path, name: str, *, full_page: bool = True) -> None:
    page.wait_for_timeout(150)  # let the last poll paint
    if full_page:
        page.evaluate("window.scrollTo(0, 0)")  # the sticky header stays at the top of a full-page shot
    page.screenshot(path=str(folder / f"{name}.png"), full_page=full_page)


def api(server: Server) -> httpx.Client:
    return httpx.Client(base_url=f"{server.url}/openai/v1", headers={"api-key": server.key}, timeout=ceiling(10))


def chart_points(page: Page, title: str) -> int:
    label = page.get_by_role("img", name=re.compile(f"^{title}:")).get_attribute("aria-label") or ""
    match = re.search(r": (\d+) points?", label)
    return int(match.group(1)) if match else 0


def wait_for_more_points(page: Page, title: str, *, than: int, timeout_s: float = ceiling(20)) -> int:
    """Poll the chart's point count, read together with the job's status, until the chart shows more than
    ``than`` points while the job still runs (the trainer reports in bursts on a busy CPU)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        label, status = page.evaluate(
            """(title) => [
                [...document.querySelectorAll('[role=img]')].find((e) => e.ariaLabel.startsWith(title))?.ariaLabel,
                document.querySelector('[aria-label=Status]')?.textContent]""",
            title,
        )
        match = re.search(r": (\d+) points?", label or "")
        points = int(match.group(1)) if match else 0
        assert "running" in (status or "").lower(), f"the job stopped running while we watched: {status}"
        if points > than:
            return points
        page.wait_for_timeout(300)
    raise AssertionError(f"the {title} chart stayed at {than} points for {timeout_s}s")


def choose(select: Locator, text: str) -> None:
    """Pick the option whose label contains ``text`` (labels also carry example and token counts)."""
    value = select.locator("option", has_text=text).get_attribute("value")
    assert value, f"no option mentions {text}"
    select.select_option(value)


def signed_in(page: Page, server: Server) -> None:
    """Sign in with the server's key unless this tab already is (so a test does not need ``test_sign_in``)."""
    if not page.url.startswith(server.url):
        page.goto(server.url)
    if page.evaluate("localStorage.getItem('tunery.apiKey')") != server.key:
        page.get_by_label("API key").fill(server.key)
        page.get_by_label("API key").press("Enter")
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()


def accept_dialogs(page: Page) -> None:
    def accept(dialog: Dialog) -> None:
        dialog.accept()

    page.once("dialog", accept)


# ------------------------------------------------------------------------------------------------------------ flows
def test_sign_in(page: Page, portal_server: Server, screenshots: Path) -> None:
    page.goto(portal_server.url)
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("API key").fill("tny-not-a-real-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not accepted")
    shot(page, screenshots, "01-sign-in")

    page.get_by_label("API key").fill(portal_server.key)
    page.get_by_label("API key").press("Enter")  # forms submit with Enter
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    expect(page.get_by_text(f"{portal_server.key[:8]}…")).to_be_visible()
    expect(page.get_by_role("heading", name="Fine-tuning", level=1)).to_be_visible()
    assert page.evaluate("localStorage.getItem('tunery.apiKey')") == portal_server.key


def test_upload_good_and_bad_files(page: Page, data_files: dict[str, Path], screenshots: Path) -> None:
    page.get_by_role("link", name="Data files").click()
    expect(page.get_by_role("heading", name="Data files")).to_be_visible()
    zone = page.get_by_role("group", name=re.compile("^Upload a JSONL file"))
    upload = zone.get_by_label("Upload a JSONL file")

    upload.set_input_files(data_files["train"])
    expect(page.get_by_role("progressbar", name="Upload progress")).to_have_attribute("value", "100")
    expect(page.get_by_text("colours-train.jsonl is ready: 40 examples")).to_be_visible()
    row = page.get_by_role("row").filter(has_text="colours-train.jsonl")
    expect(row).to_contain_text("processed", ignore_case=True)

    # Drop a file on the upload area, as from a file manager.
    dropped = page.evaluate_handle(
        """([name, text]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([text], name, {type: "application/jsonl"}));
            return transfer;
        }""",
        [data_files["valid"].name, data_files["valid"].read_text()],
    )
    zone.dispatch_event("drop", {"dataTransfer": dropped})
    expect(page.get_by_text("colours-valid.jsonl is ready")).to_be_visible()
    upload.set_input_files(data_files["bad"])
    expect(page.get_by_text("broken.jsonl has problems")).to_be_visible()
    expect(page.get_by_role("row").filter(has_text="broken.jsonl")).to_contain_text("error", ignore_case=True)
    shot(page, screenshots, "02-files")

    page.get_by_role("link", name="colours-train.jsonl").click()
    expect(page.get_by_role("heading", name="Statistics")).to_be_visible()
    expect(page.get_by_text("Trainable tokens")).to_be_visible()
    expect(page.get_by_text("Examples", exact=True)).to_be_visible()
    shot(page, screenshots, "03-file-statistics")

    page.get_by_role("link", name="Data files").first.click()
    page.get_by_role("link", name="broken.jsonl").click()
    problems = page.get_by_role("table", name="Problems by line")
    expect(problems.get_by_role("row").filter(has_text="invalid_json")).to_contain_text("2")
    expect(problems.get_by_role("row").filter(has_text="unrecognized_role")).to_contain_text("3")
    expect(problems).to_contain_text("not valid JSON")
    shot(page, screenshots, "04-file-problems")


def test_wizard_starts_a_job_and_its_charts_grow(page: Page, screenshots: Path, state: dict[str, Any]) -> None:
    page.get_by_role("link", name="Fine-tuning").click()
    page.get_by_role("link", name="Create a fine-tuned model").click()
    expect(page.get_by_role("heading", name="1. Method and base model")).to_be_visible()
    expect(page.get_by_label("Supervised fine-tuning")).to_be_checked()
    expect(page.get_by_label("Base model", exact=True)).to_have_value("tiny-llama")
    shot(page, screenshots, "05-wizard-model")
    page.get_by_role("button", name="Next").click()

    choose(page.get_by_label("Training file"), "colours-train.jsonl")
    page.get_by_role("button", name="Next").click()
    choose(page.get_by_label("Validation file"), "colours-valid.jsonl")
    page.get_by_role("button", name="Next").click()

    expect(page.get_by_text("Epochs: 3")).to_be_visible()  # auto for 40 examples: 40 × 3 = 120 ≥ 100
    # auto batch for 40 short examples: token-filled steps, but at least 24 steps in the run: 120 // 24 = 5
    expect(page.get_by_text("Batch size: 5")).to_be_visible()
    expect(page.get_by_text(re.compile(r"tokens a step at \d+ tokens an example"))).to_be_visible()
    expect(page.get_by_text(re.compile(r"multiplier √5 = 2\.236"))).to_be_visible()
    page.get_by_label("Number of epochs").fill("300")
    page.get_by_label("Batch size").fill("1")
    page.get_by_label("Suffix (optional)").fill("browser")
    page.get_by_label("Seed (optional)").fill("7")
    expect(page.get_by_text("About 12,000 training steps")).to_be_visible()
    shot(page, screenshots, "06-wizard-parameters")
    page.get_by_label("Seed (optional)").press("Enter")

    # 300 epochs is out of the API's range: said as it is typed, and the wizard does not move on.
    epochs = page.get_by_label("Number of epochs")
    expect(epochs).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_text("Must be between 1 and 50")).to_be_visible()
    expect(page.get_by_role("heading", name="4. Parameters")).to_be_visible()
    epochs.fill(str(EPOCHS))
    expect(epochs).not_to_have_attribute("aria-invalid", "true")
    page.get_by_role("button", name="Next").click()
    request = page.get_by_label("Request JSON")
    expect(request).to_contain_text(f'"n_epochs": {EPOCHS},')
    expect(request).to_contain_text('"learning_rate_multiplier": "auto"')
    shot(page, screenshots, "07-wizard-review")
    page.get_by_role("button", name="Start fine-tuning").click()

    expect(page).to_have_url(re.compile(r"#/jobs/ftjob-"))
    state["job_id"] = page.url.rsplit("/", 1)[1]
    expect(page.get_by_role("heading", level=1)).to_contain_text("browser")
    status = page.get_by_role("region", name="Status")
    expect(status).to_contain_text("running", ignore_case=True, timeout=ceiling_ms(15))

    first = wait_for_more_points(page, "Loss", than=0)
    second = wait_for_more_points(page, "Loss", than=first)
    assert second > first > 0, f"the loss chart grows while the job runs ({first} → {second} points)"
    expect(page.get_by_role("log", name="Events, newest first")).to_contain_text("training loss=")
    expect(page.get_by_text(re.compile(rf"Step \d+ of {STEPS}"))).to_be_visible()
    shot(page, screenshots, "08-job-running")

    status = page.get_by_role("region", name="Status")
    expect(status).to_contain_text("succeeded", ignore_case=True, timeout=JOB_TIMEOUT_MS)
    expect(page.get_by_text(f"Step {STEPS} of {STEPS}")).to_be_visible()
    checkpoints = page.get_by_role("table", name="Checkpoints")
    expect(checkpoints.get_by_role("row")).to_have_count(4)  # header + the last 3 epochs
    expect(page.get_by_role("log", name="Events, newest first")).to_contain_text("Job succeeded.")
    assert chart_points(page, "Loss") >= STEPS, "a finished job charts every step from results.csv"
    assert page.get_by_role("button", name="Cancel job").count() == 0
    shot(page, screenshots, "09-job-succeeded")


def test_deploy_a_checkpoint_from_the_job_page(page: Page, screenshots: Path, state: dict[str, Any]) -> None:
    if "job_id" not in state:
        pytest.skip("needs the job from the wizard test")
    page.get_by_role("button", name=f"Deploy step {STEPS}").click()
    dialog = page.get_by_role("dialog", name="Deploy model")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Deployment name").fill("colours-final")
    dialog.get_by_role("button", name="Deploy").click()
    expect(dialog.get_by_role("status")).to_contain_text("Succeeded", timeout=ceiling_ms(15))
    shot(page, screenshots, "10-deploy-dialog", full_page=False)
    dialog.get_by_role("link", name="Open in playground").click()
    expect(page.get_by_role("heading", name="Playground")).to_be_visible()
    expect(page.get_by_label("Model", exact=True)).to_have_value("colours-final")


def _assistant_lengths_while_streaming(page: Page) -> list[int]:
    """Send the message, recording the reply's length at every DOM change until it is no longer busy."""
    return page.evaluate(
        """() => new Promise((resolve) => {
            const lengths = [];
            const root = document.querySelector('[role=log]');
            const seen = new MutationObserver(() => {
                const replies = root.querySelectorAll('[role=article][aria-label^="Reply from"]');
                const last = replies[replies.length - 1];
                if (!last) return;
                lengths.push(last.textContent.length);
                if (!last.hasAttribute('aria-busy')) { seen.disconnect(); resolve(lengths); }
            });
            seen.observe(root, {subtree: true, childList: true, characterData: true, attributes: true});
            document.getElementById('message').form.requestSubmit();
        })"""
    )


def test_playground_streams_a_reply(page: Page, screenshots: Path, state: dict[str, Any]) -> None:
    if "job_id" not in state:
        pytest.skip("needs the deployment")
    page.get_by_label("System message").fill("Name the colour code.")
    page.get_by_label("Max tokens").fill("48")
    # Streaming is watched on the random base model, which writes until max tokens; the fine-tune's answer is a
    # code of a few tokens (its length depends on how this run's job trained), too short to watch grow.
    model = page.get_by_label("Model", exact=True)
    model.select_option("tiny-llama")
    page.get_by_label("Message", exact=True).fill("Colour teal number 7?")
    lengths = _assistant_lengths_while_streaming(page)
    growing = [n for n in lengths if n > 0]
    assert growing, "the reply has text"
    assert len(set(growing)) >= 3, f"the reply grew piece by piece as it streamed: {lengths}"
    page.get_by_role("button", name="Clear chat").click()
    model.select_option("colours-final")
    page.get_by_label("Message", exact=True).fill("Colour teal number 7?")
    page.get_by_role("button", name="Send").click()
    log = page.get_by_role("log", name="Model conversation")
    expect(log.get_by_role("article", name="You said")).to_contain_text("Colour teal number 7?")
    expect(log.get_by_role("article", name="Reply from colours-final")).to_be_visible()
    expect(page.get_by_role("status").filter(has_text="finish")).to_be_visible()

    page.get_by_label("Message", exact=True).fill("And gold?")
    page.get_by_label("Message", exact=True).press("Enter")  # Enter sends
    expect(log.get_by_role("article", name="You said").last).to_contain_text("And gold?")
    expect(log.get_by_role("article", name="Reply from colours-final")).to_have_count(2)
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    shot(page, screenshots, "11-playground")


def test_compare_side_by_side(page: Page, screenshots: Path, state: dict[str, Any]) -> None:
    if "job_id" not in state:
        pytest.skip("needs the deployment")
    page.get_by_role("button", name="Clear chat").click()
    page.get_by_label("Compare side by side").check()
    expect(page.get_by_label("Compare with", exact=True)).to_have_value("tiny-llama")
    expect(page.get_by_label("Fine-tuned model", exact=True)).to_have_value("colours-final")
    page.get_by_label("Message", exact=True).fill("Colour red number 1?")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("button", name="Send")).to_be_enabled(timeout=ceiling_ms(10))
    for name, model in (("Compare with conversation", "tiny-llama"), ("Model conversation", "colours-final")):
        pane = page.get_by_role("log", name=name)
        expect(pane.get_by_role("article", name="You said")).to_contain_text("Colour red number 1?")
        reply = pane.get_by_role("article", name=f"Reply from {model}")
        expect(reply).to_be_visible()
        assert reply.inner_text().strip() != model, f"{model} answered with text"
    shot(page, screenshots, "12-playground-compare")


def test_models_and_deployments(page: Page, screenshots: Path, state: dict[str, Any]) -> None:
    if "job_id" not in state:
        pytest.skip("needs the fine-tuned model")
    page.get_by_role("link", name="Models").click()
    models = page.get_by_role("table", name="Fine-tuned models")
    row = models.get_by_role("row").filter(has_text="-browser")
    expect(row).to_contain_text("tiny-llama")  # lineage: base → this model
    row.locator("summary", has_text="Download").click()
    with page.expect_download() as download:
        row.get_by_role("button", name="PEFT adapter (.tar)").click()
    assert download.value.suggested_filename.endswith("-browser-peft.tar")
    assert tarfile.is_tarfile(download.value.path())
    accept_dialogs(page)
    row.get_by_role("button", name=re.compile("^Delete")).click()
    expect(page.get_by_role("alert")).to_contain_text("has a deployment")  # refused while deployed, in words
    shot(page, screenshots, "13-models")

    page.get_by_role("link", name="Deployments").click()
    deployments = page.get_by_role("table", name="Deployments")
    row = deployments.get_by_role("row").filter(has_text="colours-final")
    expect(row).to_contain_text("Succeeded", ignore_case=True)
    shot(page, screenshots, "14-deployments")


def test_cancel_another_job(page: Page, portal_server: Server, screenshots: Path, state: dict[str, Any]) -> None:
    with api(portal_server) as client:
        train = next(f["id"] for f in client.get("/files").json()["data"] if f["filename"] == "colours-train.jsonl")
        job = client.post("/fine_tuning/jobs", json={
            "model": "tiny-llama", "training_file": train, "suffix": "to-cancel",
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 5, "batch_size": 1}}},
        }).json()  # fmt: skip
    page.goto(f"{portal_server.url}/#/jobs/{job['id']}")
    status = page.get_by_role("region", name="Status")
    expect(status).to_contain_text("running", ignore_case=True, timeout=ceiling_ms(15))
    accept_dialogs(page)
    page.get_by_role("button", name="Cancel job").click()
    expect(status).to_contain_text("cancelled", ignore_case=True)
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    expect(page.get_by_role("button", name="Pause")).to_have_count(0)

    page.get_by_role("link", name="Fine-tuning").first.click()
    jobs = page.get_by_role("table", name="Fine-tuning jobs")
    expect(jobs.get_by_role("row").filter(has_text=job["id"][:12])).to_contain_text("cancelled", ignore_case=True)
    shot(page, screenshots, "15-jobs")


def test_a_dpo_job_from_the_wizard_charts_reward_accuracy(page: Page, portal_server: Server, screenshots: Path) -> None:
    signed_in(page, portal_server)
    prefs = Path(__file__).resolve().parents[1] / "data"
    with api(portal_server) as client:
        for name in ("preference_train.jsonl", "preference_valid.jsonl"):
            client.post("/files", files={"file": (name, (prefs / name).read_bytes())}, data={"purpose": "fine-tune"})
    page.get_by_role("link", name="Fine-tuning").first.click()
    page.get_by_role("link", name="Create a fine-tuned model").click()
    page.get_by_label("Direct preference optimization (DPO)").check()
    page.get_by_role("button", name="Next").click()
    expect(page.get_by_label("Training file").locator("option", has_text="preference_train.jsonl")).to_have_count(
        1, timeout=ceiling_ms(10)
    )
    choose(page.get_by_label("Training file"), "preference_train.jsonl")
    page.get_by_role("button", name="Next").click()
    choose(page.get_by_label("Validation file"), "preference_valid.jsonl")
    page.get_by_role("button", name="Next").click()
    page.get_by_label("Beta").fill("0.2")
    page.get_by_label("Number of epochs").fill("2")
    page.get_by_label("Batch size").fill("8")
    page.get_by_label("Suffix (optional)").fill("prefs")
    page.get_by_label("Suffix (optional)").press("Enter")
    request = page.get_by_label("Request JSON")
    expect(request).to_contain_text('"type": "dpo"')
    expect(request).to_contain_text('"beta": 0.2')
    page.get_by_role("button", name="Start fine-tuning").click()

    expect(page).to_have_url(re.compile(r"#/jobs/ftjob-"))
    status = page.get_by_role("region", name="Status")
    expect(status).to_contain_text("succeeded", ignore_case=True, timeout=JOB_TIMEOUT_MS)
    expect(page.get_by_role("img", name=re.compile("^Reward accuracy:"))).to_be_visible()
    expect(page.get_by_role("img", name=re.compile("^Reward margin:"))).to_be_visible()
    assert chart_points(page, "Reward accuracy") >= 16
    checkpoints = page.get_by_role("table", name="Checkpoints")
    expect(checkpoints.get_by_role("columnheader", name="Reward accuracy")).to_be_visible()
    expect(page.get_by_role("log", name="Events, newest first")).to_contain_text("reward accuracy=")
    shot(page, screenshots, "16-dpo-job")


def test_an_rft_job_page_charts_the_mean_reward(page: Page, portal_server: Server, screenshots: Path) -> None:
    signed_in(page, portal_server)

    def prompts(n: int) -> bytes:
        rows = [{"messages": [{"role": "user", "content": f"Say e {i}"}], "target": "e"} for i in range(n)]
        return "".join(json.dumps(r) + "\n" for r in rows).encode()

    grader = {
        "type": "python",
        "name": "e_share",
        "source": "def grade(sample, item):\n    t = sample['output_text']\n    return t.count('e') / max(len(t), 1)\n",
    }
    with api(portal_server) as client:
        ids = []
        for name in ("rft_train.jsonl", "rft_valid.jsonl"):
            created = client.post("/files", files={"file": (name, prompts(10))}, data={"purpose": "fine-tune"})
            ids.append(created.json()["id"])
        hyper = {"n_epochs": 1, "batch_size": 4, "compute_multiplier": 0.5, "eval_samples": 1}
        hyper["reasoning_effort"] = "low"
        body = {
            "model": "tiny-llama",
            "training_file": ids[0],
            "validation_file": ids[1],
            "method": {"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": hyper}},
        }
        deadline = time.monotonic() + ceiling(20)
        while (job := client.post("/fine_tuning/jobs", json=body)).status_code == 400 and time.monotonic() < deadline:
            time.sleep(0.3)  # the files are still being checked
        assert job.status_code == 200, job.text
    page.goto(f"{portal_server.url}/#/jobs/{job.json()['id']}")
    status = page.get_by_role("region", name="Status")
    expect(status).to_contain_text("succeeded", ignore_case=True, timeout=JOB_TIMEOUT_MS)
    expect(page.get_by_role("img", name=re.compile("^Mean reward:"))).to_be_visible()
    assert chart_points(page, "Mean reward") >= 3
    expect(page.get_by_role("img", name=re.compile("^Reasoning tokens \\(answer length\\):"))).to_be_visible()
    expect(page.get_by_role("img", name=re.compile("^Validation parse errors:"))).to_be_visible()
    expect(page.get_by_role("img", name=re.compile("^Mean reward per grader:"))).to_have_count(0)  # not a multi
    expect(page.get_by_role("region", name="Metrics")).to_contain_text("reward hacking")
    checkpoints = page.get_by_role("table", name="Checkpoints")
    expect(checkpoints.get_by_role("columnheader", name="Validation reward")).to_be_visible()
    expect(page.get_by_role("log", name="Events, newest first")).to_contain_text("train mean reward=")
    shot(page, screenshots, "17-rft-job")
    # Each validation evaluation is a run of the job's eval: the job links it, the runs show the graded answers.
    page.get_by_role("link", name="Graded answers of each evaluation").click()
    expect(page.get_by_role("link", name="step 0", exact=True)).to_be_visible()
    page.get_by_role("link", name="step 0", exact=True).click()
    expect(page.get_by_role("heading", name="Eval run", level=1)).to_be_visible()
    # The run lists every graded answer: its text and the grader's score, as the Evals API has them.
    eval_id = job.json()["eval_id"]
    with api(portal_server) as client:
        runs = client.get(f"/evals/{eval_id}/runs", params={"limit": 100}).json()["data"]
        step0 = next(r for r in runs if r["name"] == "step 0")
        items = client.get(f"/evals/{eval_id}/runs/{step0['id']}/output_items", params={"limit": 100}).json()["data"]
    assert len(items) == 10  # every validation prompt, eval_samples=1 answer each
    rows = page.get_by_role("table", name="Output items").locator("tbody tr")
    expect(rows).to_have_count(len(items))
    for item in items:
        row = rows.filter(
            has=page.locator("td[data-label='#']", has_text=re.compile(f"^{item['datasource_item_id']}$"))
        )
        expect(row).to_have_count(1)
        assert row.locator(".answer").text_content() == item["sample"]["output"][0]["content"]
        grade = row.locator("ul.grades li").first.text_content() or ""
        assert grade.startswith("e_share"), grade
        score = float(re.search(r": (\S+)", grade).group(1))  # type: ignore[union-attr]
        assert score == pytest.approx(item["results"][0]["score"], abs=1e-9)
    shot(page, screenshots, "17b-rft-eval-run")


def test_webhooks_page_adds_an_endpoint_and_sends_a_test_event(page: Page, screenshots: Path) -> None:
    from tests.integration.test_webhooks import Receiver

    receiver = Receiver([200])
    try:
        page.get_by_role("link", name="Webhooks").click()
        expect(page.get_by_role("heading", name="Webhooks", level=1)).to_be_visible()
        page.get_by_label("Name").fill("ci-hook")
        page.get_by_label("URL").fill(receiver.url)
        page.get_by_role("button", name="Add endpoint").click()
        expect(page.get_by_test_id("signing-secret")).to_contain_text("whsec_")
        row = page.get_by_role("table", name="Webhook endpoints").get_by_role("row").filter(has_text="ci-hook")
        row.get_by_role("button", name="Send a test event to ci-hook").click()
        expect(page.get_by_text("Test event to ci-hook: HTTP 200")).to_be_visible()
        deliveries = page.get_by_role("table", name="Deliveries")
        expect(deliveries).to_contain_text("fine_tuning.job.succeeded")
        expect(deliveries).to_contain_text("HTTP 200")
        assert len(receiver.received) == 1
        shot(page, screenshots, "18-webhooks")
    finally:
        receiver.server.shutdown()


def test_phone_width_screenshots(page: Page, portal_server: Server, screenshots: Path, state: dict[str, Any]) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    routes = ["#/files", "#/jobs", "#/jobs/new", "#/models", "#/playground"]
    if "job_id" in state:
        routes.append(f"#/jobs/{state['job_id']}")
    for route in routes:
        page.goto(f"{portal_server.url}/{route}")
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{route} scrolls sideways at phone width ({width}px)"
        name = route.strip("#/").replace("/", "-").split("-ftjob")[0]
        shot(page, screenshots, f"phone-{name}{'-detail' if 'ftjob' in route else ''}")
    page.set_viewport_size({"width": 1280, "height": 900})


def test_static_files_do_not_shadow_the_api(portal_server: Server) -> None:
    with httpx.Client(base_url=portal_server.url) as client:
        index = client.get("/")
        assert index.status_code == 200
        assert '<script type="module" src="/static/app.js' in index.text
        script = client.get("/static/app.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert client.get("/static/../routes.py").status_code == 404
        assert client.get("/static/%2e%2e/routes.py").status_code == 404
        assert client.get("/v1/models").status_code == 401  # the API still answers, with its own errors
        assert client.get("/health").json()["status"] == "ok"
        assert "/static/{path}" not in client.get("/openapi.json").text
