"""A real Tunery server in a subprocess, on a free loopback port, with the tiny test model.

Integration tests drive it only through HTTP: the official ``openai`` client, or plain ``httpx``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Server, free_port, tunery, wait_until_healthy


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("server-data")
    port = free_port()
    env = {
        **os.environ,
        "TUNERY_DATA_DIR": str(data_dir),
        "TUNERY_MODELS__BASE_MODELS": f'["tiny-llama={tiny_model_dir}"]',
        "TUNERY_API__PORT": str(port),
        "PYTHONUNBUFFERED": "1",
        # Short python-grader limits, so a grader that loops forever is killed within seconds.
        "TUNERY_GRADERS__PYTHON_TIMEOUT_S": "5",
        "TUNERY_GRADERS__PYTHON_CPU_S": "4",
    }
    env.pop("TUNERY_STORAGE__DATABASE_URL", None)
    key = tunery(env, "keys", "create", "--project", "itest")
    other_key = tunery(env, "keys", "create", "--project", "intruder")
    log = data_dir / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tunery", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(proc, url, log)
        yield Server(url=url, key=key, other_key=other_key, data_dir=data_dir, env=env)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def start_server() -> Iterator[Callable[[dict[str, str], Path], tuple[subprocess.Popen[str], str]]]:
    """Start extra servers (own env, own log); each is killed at the end of the test."""
    started: list[subprocess.Popen[str]] = []

    def start(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[str], str]:
        port = free_port()
        with log.open("a") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tunery", "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(proc, url, log)
        return proc, url

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
