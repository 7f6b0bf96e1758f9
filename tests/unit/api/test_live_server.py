"""A client that leaves stops generation: a real HTTP server (uvicorn in a thread) over the real engine on the
tiny model; the engine's own metrics (``active_rows``, ``generated_tokens``) show its rows leave the batch.

Run alone: ``.venv/bin/pytest tests/unit/api/test_disconnect.py`` (~10 s on a 2-core CPU).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import uvicorn

from tunery.api.app import create_app
from tunery.bootstrap import build_services
from tunery.config import ModelsSettings, Settings
from tunery.services.container import Services

MAX_TOKENS = 400
CEILING_S = 30.0  # generous for a loaded machine; the wait ends as soon as the condition holds


def wait_for(condition: Callable[[], bool], what: str, ceiling: float = CEILING_S) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > ceiling:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple[str, str, Services]]:
    data = tmp_path_factory.mktemp("disconnect")
    settings = Settings(data_dir=data, models=ModelsSettings(base_models=[f"tiny-llama={tiny_model_dir}"]))
    services = build_services(settings, background_checks=False)
    key = services.keys.create("p").secret
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(create_app(services, max_upload_bytes=1 << 20), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "the server to start")
    yield f"http://127.0.0.1:{port}", key, services
    server.should_exit = True
    thread.join(30)
    services.close()


def body(n: int, stream: bool) -> dict[str, Any]:
    # Greedy on the tiny random model runs to max_tokens (checked below), so a whole answer is 400 tokens.
    return {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "Tell me a long story"}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "n": n,
        "stream": stream,
    }


def test_a_whole_answer_is_max_tokens_long(served: tuple[str, str, Services]) -> None:
    url, key, _ = served
    response = httpx.post(
        f"{url}/v1/chat/completions", headers={"api-key": key}, json=body(1, False), timeout=CEILING_S * 4
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] == "length"
    assert response.json()["usage"]["completion_tokens"] == MAX_TOKENS


@pytest.mark.parametrize("n", [1, 3])
def test_dropping_a_stream_takes_its_rows_out_of_the_batch(served: tuple[str, str, Services], n: int) -> None:
    url, key, services = served
    wait_for(lambda: services.chat.active_rows() == 0, "an idle engine")
    before = _generated(services)
    with (
        httpx.Client(timeout=CEILING_S) as client,
        client.stream("POST", f"{url}/v1/chat/completions", headers={"api-key": key}, json=body(n, True)) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert services.chat.active_rows() >= 1
    # The client is gone: every row leaves the batch within a step or two.
    wait_for(lambda: services.chat.active_rows() == 0, "the engine's active rows to return to zero")
    assert _generated(services) - before < n * MAX_TOKENS, "generation stopped before the answers were complete"


@pytest.mark.parametrize("n", [1, 2])
def test_a_non_streamed_request_whose_client_gave_up_stops(served: tuple[str, str, Services], n: int) -> None:
    url, key, services = served
    wait_for(lambda: services.chat.active_rows() == 0, "an idle engine")
    before = _generated(services)
    payload = json.dumps(body(n, False)).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=CEILING_S) as sock:  # a client that will time out
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            + f"api-key: {key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        wait_for(lambda: services.chat.active_rows() >= 1, "generation to start")
    wait_for(lambda: services.chat.active_rows() == 0, "the engine's active rows to return to zero")
    assert _generated(services) - before < n * MAX_TOKENS, "generation stopped before the answers were complete"


def _generated(services: Services) -> int:
    return services.chat.generated_tokens()


class PeakRss:
    """The process's highest resident set size while the block runs, sampled every few milliseconds."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.start = self.peak = self._process.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.002):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def send_body(url: str, key: str, head: str, pieces: Iterator[bytes]) -> bytes:
    """Send a request piece by piece until the server answers or hangs up; return what it answered."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=CEILING_S) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\napi-key: {key}\r\n{head}\r\n".encode())
        sock.setblocking(False)
        answer = b""
        for piece in pieces:
            with contextlib.suppress(BlockingIOError):
                answer += sock.recv(65536)
            if answer:
                break
            try:
                sock.setblocking(True)
                sock.sendall(piece)
                sock.setblocking(False)
            except OSError:  # the server answered and closed
                break
        sock.setblocking(True)
        sock.settimeout(CEILING_S)
        while b"\r\n\r\n" not in answer or b'"error"' not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    return answer


THIRTY_MB = 30 * 1024 * 1024


def chat_body_pieces(total: int, chunked: bool) -> Iterator[bytes]:
    """A 30 MB chat body made on the fly (the test process never holds it): one long user message."""
    start = b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "'
    end = b'"}]}'
    filler = b"x" * (256 * 1024)
    sent = 0
    for piece in (start, *([filler] * ((total - len(start) - len(end)) // len(filler))), end):
        sent += len(piece)
        yield (f"{len(piece):x}\r\n".encode() + piece + b"\r\n") if chunked else piece
    if chunked:
        yield b"0\r\n\r\n"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_30_mb_chat_body_is_refused_without_the_server_growing(
    served: tuple[str, str, Services], chunked: bool
) -> None:
    url, key, _ = served
    pieces = chat_body_pieces(THIRTY_MB, chunked)
    head = "Content-Type: application/json\r\n" + (
        "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {THIRTY_MB}\r\n"
    )
    with PeakRss() as rss:
        answer = send_body(url, key, head, pieces)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b'"code":"requestTooLarge"' in answer.replace(b" ", b"")
    grown = rss.peak - rss.start
    assert grown < 8 * 1024 * 1024, f"the server grew by {grown / 2**20:.1f} MB refusing the body"
