"""The engine in its own process, on a real server: kill it mid-request, twice (a streamed and a plain request);
then, on a server with a short hang timeout, stop it (SIGSTOP) twice, which the supervisor must notice as a hang.

Each killed (or hung) request gets a 503 (``engineRestarted``; inside the stream for a streamed one), the next
request is answered by the restarted engine exactly as before, and the API and portal never stop answering
meanwhile.
Run alone: ``.venv/bin/pytest tests/integration/test_engine_process.py``
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.ceilings import ceiling
from tests.integration.harness import Server, tunery

pytestmark = pytest.mark.integration

LONG = 900  # tokens (of the 1024 the tiny model reads): a request that runs long after its first piece


def engine_status(server: Server) -> dict[str, Any]:
    status: dict[str, Any] = httpx.get(f"{server.url}/health", timeout=10).json()["engine"]
    return status


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + ceiling(30)
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Watcher:
    """Calls the API and the portal over and over in a thread; records every failure and the slowest answer."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._stop = threading.Event()
        self.failures: list[str] = []
        self.calls = 0
        self.slowest = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(ceiling(10))

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self._server.key}"}
        with httpx.Client(base_url=self._server.url, timeout=ceiling(5)) as http:
            while not self._stop.is_set():
                for path in ("/health", "/v1/models", "/"):
                    started = time.monotonic()
                    try:
                        status = http.get(path, headers=headers).status_code
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{path}: {exc!r}")
                        continue
                    self.slowest = max(self.slowest, time.monotonic() - started)
                    self.calls += 1
                    if status != 200:
                        self.failures.append(f"{path}: HTTP {status}")
                self._stop.wait(0.05)


@pytest.fixture
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0) as client:
        yield client


def long_prompt(client: openai.OpenAI) -> list[dict[str, str]]:
    """A prompt the tiny model answers greedily with ``LONG`` tokens (no end-of-turn on the way)."""
    for i in range(12):
        messages = [{"role": "user", "content": f"Tell me a long story number {i}."}]
        reply = client.chat.completions.create(model="tiny-llama", messages=messages, temperature=0, max_tokens=LONG)  # type: ignore[arg-type]
        if reply.choices[0].finish_reason == "length":
            return messages
    pytest.skip("the tiny model ended every probe prompt early")


def test_killing_the_engine_mid_request_is_a_503_and_the_restarted_engine_answers_next(
    server: Server, client: openai.OpenAI
) -> None:
    messages = long_prompt(client)

    def ask() -> str:
        reply = client.chat.completions.create(model="tiny-llama", messages=messages, temperature=0, max_tokens=12)  # type: ignore[arg-type]
        return reply.choices[0].message.content or ""

    before = ask()
    status = engine_status(server)
    assert status["isolation"] == "process"
    assert status["state"] == "running"
    assert status["rss_mb"] > 0
    assert status["memory_limit_mb"] > 0
    restarts = status["restarts"]

    with Watcher(server) as watcher:
        # 1. Streamed, killed right after the first piece (the other ~900 tokens take far longer to generate):
        # the stream has started, so the 503 arrives as the stream's error event.
        first_pid = engine_status(server)["pid"]
        stream = client.chat.completions.create(
            model="tiny-llama", messages=messages, temperature=0, max_tokens=LONG, stream=True  # type: ignore[arg-type]
        )  # fmt: skip
        chunks = iter(stream)
        next(chunks)
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(openai.APIError) as streamed:
            for _ in chunks:
                pass
        assert streamed.value.code == "engineRestarted"
        assert "Retry the request" in streamed.value.message
        assert ask() == before  # answered by the new engine process
        second_pid = engine_status(server)["pid"]
        assert second_pid != first_pid

        # 2. Plain: the engine is frozen (SIGSTOP) before the request reaches it, so the request is surely still
        # in the engine when it is killed; the server waits for the whole answer, so it is an HTTP 503.
        os.kill(second_pid, signal.SIGSTOP)
        with ThreadPoolExecutor(max_workers=1) as pool:
            reply = pool.submit(
                client.chat.completions.create,
                model="tiny-llama", messages=messages, temperature=0, max_tokens=LONG,  # type: ignore[arg-type]
            )  # fmt: skip
            wait_for(lambda: engine_status(server)["active_requests"] >= 1, "the request to reach the engine")
            os.kill(second_pid, signal.SIGKILL)
            with pytest.raises(openai.APIStatusError) as plain:
                reply.result(timeout=ceiling(30))
        assert plain.value.status_code == 503
        assert plain.value.code == "engineRestarted"
        assert plain.value.response.headers.get("retry-after")
        # Two deaths soon after starting count as a crash loop: the supervisor pauses (1 s) before the next
        # start and answers 503 meanwhile, as the retry-after says. Wait for the engine to be up, as a client
        # honouring retry-after would.
        wait_for(lambda: engine_status(server)["state"] == "running", "the engine to be restarted")
        assert ask() == before

    status = engine_status(server)
    assert status["restarts"] == restarts + 2
    assert status["pid"] not in {first_pid, second_pid}
    assert status["last_exit"] == "killed by signal 9"
    # The API and the portal answered all along, each call in well under the time a request takes.
    assert watcher.failures == []
    assert watcher.calls >= 3
    assert watcher.slowest < ceiling(2)


HANG_S = ceiling(0.5)  # the hang timeout of the server below; a tiny-model pass takes milliseconds


def test_a_hung_engine_is_killed_its_requests_get_a_503_and_the_restarted_engine_answers_next(
    tmp_path: Path, tiny_model_dir: Path, start_server: Callable[..., tuple[subprocess.Popen[str], str]]
) -> None:
    env = {
        **os.environ,
        "TUNERY_DATA_DIR": str(tmp_path / "data"),
        "TUNERY_MODELS__BASE_MODELS": f'["tiny-llama={tiny_model_dir}"]',
        "TUNERY_INFERENCE__HANG_TIMEOUT_S": str(HANG_S),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("TUNERY_STORAGE__DATABASE_URL", None)
    key = tunery(env, "keys", "create", "--project", "hangs")
    _proc, url = start_server(env, tmp_path / "server.log")
    server = Server(url=url, key=key, other_key="", data_dir=tmp_path / "data", env=env)
    with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client:
        messages = long_prompt(client)

        def ask() -> str:
            reply = client.chat.completions.create(model="tiny-llama", messages=messages, temperature=0, max_tokens=12)  # type: ignore[arg-type]
            return reply.choices[0].message.content or ""

        before = ask()
        status = engine_status(server)
        assert status["hang_timeout_s"] == HANG_S
        assert status["adapters"] == {
            "tiny-llama": {"loaded": 0, "loaded_bytes": 0, "budget_bytes": 256 * 2**20, "loaded_mb": 0.0,
                           "budget_mb": 256.0}
        }  # fmt: skip
        with Watcher(server) as watcher:
            # 1. Streamed: the engine is stopped (SIGSTOP: alive, but nothing runs) right after the first piece.
            first_pid = status["pid"]
            stream = client.chat.completions.create(
                model="tiny-llama", messages=messages, temperature=0, max_tokens=LONG, stream=True  # type: ignore[arg-type]
            )  # fmt: skip
            chunks = iter(stream)
            next(chunks)
            os.kill(first_pid, signal.SIGSTOP)
            with pytest.raises(openai.APIError) as streamed:
                for _ in chunks:
                    pass
            assert streamed.value.code == "engineRestarted"
            assert "it hung: nothing came from it for" in streamed.value.message
            assert "Retry the request" in streamed.value.message
            assert ask() == before  # answered by the new engine process
            second_pid = engine_status(server)["pid"]
            assert second_pid != first_pid

            # 2. Plain: stopped before the request reaches it; the request waits in its pipe until the hang check.
            os.kill(second_pid, signal.SIGSTOP)
            with pytest.raises(openai.APIStatusError) as plain:
                client.chat.completions.create(
                    model="tiny-llama", messages=messages, temperature=0, max_tokens=LONG, timeout=ceiling(30)  # type: ignore[arg-type]
                )  # fmt: skip
            assert plain.value.status_code == 503
            assert plain.value.code == "engineRestarted"
            assert plain.value.response.headers.get("retry-after")
            wait_for(lambda: engine_status(server)["state"] == "running", "the engine to be restarted")
            assert ask() == before

        status = engine_status(server)
        assert (status["restarts"], status["hangs"]) == (2, 2)
        assert status["pid"] not in {first_pid, second_pid}
        assert status["last_exit"].startswith("it hung: nothing came from it for")
        assert watcher.failures == []
        assert watcher.calls >= 3
        assert watcher.slowest < ceiling(2)
