"""llama.cpp as a backend: a real ``llama-server`` driven by ``LlamaCppEngine`` on the tiny model.

Runs where a ``llama-server`` is on PATH or in ``$LLAMA_CPP_DIR/build/bin`` (``bench/serve_http.py`` builds one
from the PyPI sdist of llama-cpp-python, ~20 min on 2 cores); CI has none and skips this module. What decides
which backend answers (``routing.RoutedEngine``) is tested without llama.cpp in ``test_routing.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tests.ceilings import ceiling
from tests.unit.catalog.test_export import llama_server_binary
from tests.unit.inference.conftest import EOS_ID, Reference, request, text
from tunery.inference.errors import EngineRestarted
from tunery.inference.llama_cpp import LlamaCppEngine, LlamaCppOptions

BINARY = llama_server_binary()
pytestmark = pytest.mark.skipif(
    BINARY is None, reason="no llama-server on PATH or in $LLAMA_CPP_DIR/build/bin (bench/serve_http.py builds one)"
)
PROMPT = [1, 87, 301, 44, 200, 17, 99]


@pytest.fixture
def llama(tiny_model_dir: Path, tmp_path: Path) -> Iterator[LlamaCppEngine]:
    options = LlamaCppOptions(
        binary=Path(str(BINARY)), cache_dir=tmp_path / "gguf", threads=1, slots=2, slot_context=256,
        max_servers=2, startup_timeout_s=ceiling(60), weights="F16",
    )  # fmt: skip
    engine = LlamaCppEngine(lambda name: tiny_model_dir, options)
    yield engine
    engine.close()


def greedy(engine: LlamaCppEngine, adapter: str | None, adapter_dirs: dict[str, Path], max_tokens: int = 12) -> str:
    req = request(PROMPT, adapter=adapter, adapter_dirs=adapter_dirs, max_tokens=max_tokens)
    chunks = list(engine.generate(dataclasses.replace(req, stop_token_ids=(EOS_ID,))))
    assert chunks[-1].finish_reason in ("stop", "length")
    return text(chunks)


def test_answers_like_transformers_and_peft(
    llama: LlamaCppEngine, reference: Reference, adapter_dirs: dict[str, Path], tiny_model_dir: Path
) -> None:
    """The base and each adapter (a hot-loaded GGUF LoRA) answer transformers' + peft's greedy text.

    Compared as text: llama.cpp leaves out the ids of tokens that end inside a UTF-8 character (the tiny model's
    byte tokens), so the text and the usage counts are what its backend promises, not every token id."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    answers = {}
    for adapter in (None, "alpha", "beta", "gamma"):
        expected = reference.greedy(PROMPT, 12, adapter)
        req = request(PROMPT, adapter=adapter, adapter_dirs=adapter_dirs, max_tokens=12)
        chunks = list(llama.generate(dataclasses.replace(req, stop_token_ids=(EOS_ID,))))
        assert text(chunks) == tokenizer.decode([t for t in expected if t != EOS_ID]), adapter
        assert chunks[-1].completion_tokens == len(expected)
        assert chunks[-1].finish_reason == ("stop" if expected[-1] == EOS_ID else "length")
        answers[adapter] = text(chunks)
    assert len({*answers.values()}) == 4  # each adapter is applied: four different answers


def test_a_new_adapter_starts_its_own_server_and_the_others_keep_running(
    llama: LlamaCppEngine, adapter_dirs: dict[str, Path]
) -> None:
    greedy(llama, "alpha", adapter_dirs)
    first = {s["adapter"]: s["pid"] for s in llama.status()["servers"]}
    greedy(llama, "beta", adapter_dirs)
    now = {s["adapter"]: s["pid"] for s in llama.status()["servers"]}
    assert now["alpha"] == first["alpha"]  # no restart to take a new adapter
    assert set(now) == {"alpha", "beta"}
    # A third model with max_servers=2: the least recently used idle server (alpha) makes room.
    greedy(llama, None, adapter_dirs)
    assert {s["adapter"] for s in llama.status()["servers"]} == {"beta", None}


def test_when_every_server_is_busy_a_request_is_declined_not_queued(
    llama: LlamaCppEngine, adapter_dirs: dict[str, Path]
) -> None:
    held = [llama.open(request(PROMPT, adapter=name, adapter_dirs=adapter_dirs)) for name in ("alpha", "beta")]
    assert all(h is not None for h in held)
    assert llama.active_rows() == 2
    assert llama.open(request(PROMPT, adapter="gamma", adapter_dirs=adapter_dirs)) is None
    for stream in held:
        stream.close()  # type: ignore[union-attr]  # never read: closing still frees its server
    assert llama.active_rows() == 0
    assert llama.open(request(PROMPT, adapter="gamma", adapter_dirs=adapter_dirs)) is not None


def test_a_server_that_dies_mid_request_answers_503_and_the_next_request_restarts_it(
    llama: LlamaCppEngine, adapter_dirs: dict[str, Path]
) -> None:
    expected = greedy(llama, "alpha", adapter_dirs)
    stream = llama.open(request(PROMPT, adapter="alpha", adapter_dirs=adapter_dirs))
    assert stream is not None
    pid = llama.status()["servers"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(EngineRestarted):
        list(stream)
    assert llama.active_rows() == 0
    assert greedy(llama, "alpha", adapter_dirs) == expected
    assert llama.status()["servers"][0]["pid"] != pid


def test_a_cancelled_request_stops_and_frees_its_slot(llama: LlamaCppEngine, adapter_dirs: dict[str, Path]) -> None:
    cancel = threading.Event()
    req = request(PROMPT, max_tokens=200)
    req = dataclasses.replace(req, cancel=cancel)
    stream = llama.generate(req)
    next(iter(stream))
    cancel.set()
    rest = list(stream)
    assert all(chunk.finish_reason is None for chunk in rest)
    assert llama.active_rows() == 0


def test_weights_auto_serves_the_format_llama_cpp_decodes_faster_here(
    tiny_model_dir: Path, tmp_path: Path, adapter_dirs: dict[str, Path]
) -> None:
    options = LlamaCppOptions(binary=Path(str(BINARY)), cache_dir=tmp_path, threads=1, slots=1, slot_context=256,
                              startup_timeout_s=ceiling(60))  # fmt: skip
    engine = LlamaCppEngine(lambda name: tiny_model_dir, options)
    try:
        assert greedy(engine, "alpha", adapter_dirs)
        kept = sorted(p.name.rsplit("-", 1)[1] for p in tmp_path.glob("*.gguf"))
        assert kept in (["F16.gguf"], ["BF16.gguf"])  # the slower format's file is gone
        verdicts = tmp_path / "formats.json"
        if verdicts.exists():  # not kept when other work kept the cores busy while it timed
            (verdict,) = json.loads(verdicts.read_text()).values()
            assert f"{verdict['format']}.gguf" == kept[0]
            assert set(verdict["ms_per_token"]) == {"F16", "BF16"}
    finally:
        engine.close()
