"""llama.cpp as a backend on a real server: ``TUNERY_INFERENCE__LLAMA_CPP=auto`` with a real ``llama-server``.

Runs where a ``llama-server`` is on PATH or in ``$LLAMA_CPP_DIR/build/bin`` (CI has none and skips it). A chat
through the official client is answered by llama.cpp, as Tunery's own engine answers it on the shared server,
and Tunery's engine (torch) is never started for it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.integration.harness import Server, tunery
from tests.unit.catalog.test_export import llama_server_binary

BINARY = llama_server_binary()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(BINARY is None, reason="no llama-server on PATH or in $LLAMA_CPP_DIR/build/bin"),
]
MESSAGES: Any = [{"role": "user", "content": "Say something about teal."}]


def answer(url: str, key: str) -> str:
    with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client:
        reply = client.chat.completions.create(model="tiny-llama", messages=MESSAGES, temperature=0, max_tokens=12)
        assert reply.usage is not None
        assert reply.usage.completion_tokens > 0
        return reply.choices[0].message.content or ""


def test_a_chat_is_answered_by_llama_cpp_like_tunerys_engine(
    server: Server,
    tmp_path: Path,
    tiny_model_dir: Path,
    start_server: Callable[[dict[str, str], Path], tuple[subprocess.Popen[str], str]],
) -> None:
    env = {
        **os.environ,
        "TUNERY_DATA_DIR": str(tmp_path / "data"),
        "TUNERY_MODELS__BASE_MODELS": f'["tiny-llama={tiny_model_dir}"]',
        "TUNERY_INFERENCE__LLAMA_CPP": "auto",
        "TUNERY_INFERENCE__LLAMA_CPP_SERVER": str(BINARY),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("TUNERY_STORAGE__DATABASE_URL", None)
    key = tunery(env, "keys", "create", "--project", "llama")
    _proc, url = start_server(env, tmp_path / "server.log")

    assert answer(url, key) == answer(server.url, server.key)
    engine = httpx.get(f"{url}/health", timeout=10).json()["engine"]
    assert engine["llama_cpp"]["routed"] == {"llama.cpp": 1}
    assert engine["state"] == "not started"  # Tunery's engine (and torch) was never needed
    assert [s["alive"] for s in engine["llama_cpp"]["servers"]] == [True]
