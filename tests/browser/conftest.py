"""Browser-tier fixtures: a real ``tunery serve`` (API + portal + worker) and Debian's chromium.

``playwright install`` cannot download browsers here, so Playwright drives ``/usr/bin/chromium``
(``apt-get install -y chromium``); without it every browser test is skipped with that reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.ceilings import ceiling, ceiling_ms
from tests.integration.harness import Server, free_port, tunery, wait_until_healthy

# Playwright's assertions retry until their condition holds; their default ceiling (5 s) is a quiet machine's.
expect.set_options(timeout=ceiling_ms(5))

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


@pytest.fixture(scope="session")
def browser_type_launch_args() -> dict[str, Any]:
    return {
        "executable_path": str(CHROMIUM),
        "headless": True,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    }


@contextmanager
def serve(data_dir: Path, tiny_model_dir: Path, **settings: str) -> Iterator[Server]:
    """``python -m tunery serve`` on a free port with the tiny model (``settings``: more ``TUNERY_…`` variables),
    exactly as the integration tier runs it; stopped on exit."""
    port = free_port()
    env = {
        **os.environ,
        "TUNERY_DATA_DIR": str(data_dir),
        "TUNERY_MODELS__BASE_MODELS": f'["tiny-llama={tiny_model_dir}"]',
        "TUNERY_API__PORT": str(port),
        "TUNERY_WORKER__METRICS_EVERY": "5",  # more chart points per second of training
        "TUNERY_WORKER__POLL_INTERVAL_S": "0.3",
        "TUNERY_WEBHOOKS__ALLOW_PRIVATE_URLS": "true",  # the webhooks page test's receiver is on 127.0.0.1
        "PYTHONUNBUFFERED": "1",
        **settings,
    }
    env.pop("TUNERY_STORAGE__DATABASE_URL", None)
    key = tunery(env, "keys", "create", "--project", "browser")
    other_key = tunery(env, "keys", "create", "--project", "other")
    log = data_dir / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tunery", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(proc, url, log)
        yield Server(url=url, key=key, other_key=other_key, data_dir=data_dir, env=env)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=ceiling(3))
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def portal_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    """The browser tier's server, shared by its modules (each keeps to its own project where it can)."""
    with serve(tmp_path_factory.mktemp("portal-data"), tiny_model_dir) as server:
        yield server


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
