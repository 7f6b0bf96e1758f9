"""``EngineProcess``: the engine in a supervised child process. With a torch-free fake engine: chunks and errors
cross the pipe unchanged, cancellation reaches the child, a killed child fails its requests with a 503 and is
replaced, a child over its memory limit is killed, crash loops back off. With the real engine on the tiny model:
greedy outputs through the process equal transformers/peft's own, and 20 adapters asked for at once with room
for 8 (an adapter memory budget) all answer as they do alone. Hangs: a stopped child, and a child alive whose
passes stop, are killed as hung; a slow child that keeps finishing passes is not.

Run: ``.venv/bin/pytest tests/unit/inference/test_process.py -q``
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import torch
from tokenizers import Tokenizer

from tests.ceilings import ceiling
from tests.unit.inference.conftest import TINY, Reference, make_adapter, request, token_ids
from tests.unit.inference.fake_engines import fake_factory
from tunery.domain.errors import InvalidRequest, NotFound, Unavailable
from tunery.inference.adapters import lora_adapter_nbytes
from tunery.inference.engine import GenerationChunk, GenerationRequest, SamplingParams
from tunery.inference.errors import AdapterLoadTimeout, EngineRestarted
from tunery.inference.process import EngineProcess, HFEngineOptions


def fake_request(kind: str = "", max_tokens: int = 3) -> GenerationRequest:
    return GenerationRequest(base_model="m", prompt_ids=[1, 2], params=SamplingParams(max_tokens), request_id=kind)


def answer(engine: EngineProcess, kind: str) -> str:
    return "".join(chunk.text for chunk in engine.generate(fake_request(kind)))


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + ceiling(30)
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[EngineProcess]:
    engine = EngineProcess({"m": tmp_path}.__getitem__, fake_factory)
    yield engine
    engine.close()


def test_chunks_and_errors_cross_the_pipe_unchanged(fake: EngineProcess) -> None:
    chunks = list(fake.generate(fake_request(max_tokens=4)))
    assert [c.text for c in chunks] == ["t1 ", "t2 ", "t3 ", "t4 "]
    assert chunks[-1] == GenerationChunk("t4 ", [4], "length", prompt_tokens=2, completion_tokens=4)
    assert fake.generated_tokens() == 4
    with pytest.raises(InvalidRequest) as refused:
        list(fake.generate(fake_request("error")))
    assert (refused.value.message, refused.value.param) == ("The fake engine refuses this.", "messages")
    with pytest.raises(AdapterLoadTimeout) as slow:  # a 503 at the API edge, with its own code
        list(fake.generate(fake_request("timeout")))
    assert slow.value.code == "adapterLoadTimeout"
    status = fake.status()
    assert status["state"] == "running"
    assert status["pid"] != os.getpid()
    assert status["restarts"] == 0
    assert status["rss_mb"] > 0


def test_an_unknown_base_model_fails_in_the_caller(tmp_path: Path) -> None:
    def lookup(name: str) -> Path:
        raise NotFound(f"Model '{name}' is not served here.", param="model")

    engine = EngineProcess(lookup, fake_factory)
    try:
        with pytest.raises(NotFound):
            next(engine.generate(fake_request()))
        assert engine.status()["state"] == "idle"  # no child was started for it
    finally:
        engine.close()


def test_a_closed_stream_is_cancelled_in_the_child(fake: EngineProcess) -> None:
    stream = fake.generate(fake_request("forever"))
    next(stream)
    assert fake.active_rows() == 1
    stream.close()
    assert fake.active_rows() == 0
    wait_for(lambda: answer(fake, "cancelled") == "1", "the child to see the cancellation")


def test_a_killed_engine_fails_its_requests_with_503_and_the_next_request_is_answered(fake: EngineProcess) -> None:
    first_pid = int(answer(fake, "pid"))
    streams = [fake.generate(fake_request("forever")) for _ in range(3)]
    for stream in streams:
        next(stream)
    os.kill(first_pid, signal.SIGKILL)
    for stream in streams:
        with pytest.raises(EngineRestarted, match=r"stopped \(killed by signal 9\).*Retry the request"):
            for _ in stream:
                pass
    # The replacement was started at once: the next request is answered by it, not refused.
    second_pid = int(answer(fake, "pid"))
    assert second_pid != first_pid
    assert answer(fake, "") == "t1 t2 t3 "
    status = fake.status()
    assert status["restarts"] == 1
    assert status["pid"] == second_pid
    assert status["last_exit"] == "killed by signal 9"


def test_an_engine_over_its_memory_limit_is_killed_and_replaced(tmp_path: Path) -> None:
    engine = EngineProcess({"m": tmp_path}.__getitem__, fake_factory, memory_limit_mb=400)
    try:
        first_pid = int(answer(engine, "pid"))
        with pytest.raises(EngineRestarted, match=r"over its memory limit of 400 MiB"):
            for _ in engine.generate(fake_request("hog")):
                pass
        assert int(answer(engine, "pid")) != first_pid
        assert engine.status()["memory_limit_mb"] == 400
    finally:
        engine.close()


def test_a_crash_loop_backs_off_with_a_clear_503(tmp_path: Path) -> None:
    engine = EngineProcess({"m": tmp_path}.__getitem__, fake_factory, min_uptime_s=300, restart_backoff_s=300)
    try:
        for _ in range(2):  # the first quick death restarts at once; the second one backs off
            with pytest.raises(EngineRestarted, match="exit code 3"):
                list(engine.generate(fake_request("crash")))
        with pytest.raises(EngineRestarted, match=r"crashed repeatedly \(exit code 3\); it restarts in"):
            list(engine.generate(fake_request()))
        assert engine.status()["state"] == "restarting"
    finally:
        engine.close()
    with pytest.raises(Unavailable, match="shut down"):
        list(engine.generate(fake_request()))


# ------------------------------------------------------------------------------------------------ hangs
HANG_S = ceiling(0.5)  # the hang timeout of these tests: far above a healthy child's 0.1-s heartbeat gaps


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[EngineProcess]:
    engine = EngineProcess({"m": tmp_path}.__getitem__, fake_factory, hang_timeout_s=HANG_S)
    yield engine
    engine.close()


def test_a_stopped_engine_is_killed_as_hung_its_requests_get_a_503_and_the_next_is_answered(
    watched: EngineProcess,
) -> None:
    first_pid = int(answer(watched, "pid"))
    stream = watched.generate(fake_request("forever"))
    next(stream)
    os.kill(first_pid, signal.SIGSTOP)  # alive, but nothing runs: a real hang
    began = time.monotonic()
    with pytest.raises(EngineRestarted, match=r"stopped \(it hung: nothing came from it for .*Retry the request"):
        for _ in stream:
            pass
    assert time.monotonic() - began >= HANG_S  # noticed by the timeout, not earlier
    second_pid = int(answer(watched, "pid"))
    assert second_pid != first_pid
    assert not psutil.pid_exists(first_pid) or psutil.Process(first_pid).status() == psutil.STATUS_ZOMBIE
    assert answer(watched, "") == "t1 t2 t3 "
    status = watched.status()
    assert (status["restarts"], status["hangs"], status["hang_timeout_s"]) == (1, 1, HANG_S)
    assert status["last_exit"].startswith("it hung: nothing came from it for")


def test_an_alive_engine_whose_passes_stop_is_killed_as_hung(watched: EngineProcess) -> None:
    first_pid = int(answer(watched, "pid"))
    with pytest.raises(EngineRestarted, match=r"it hung: no forward pass finished for"):
        list(watched.generate(fake_request("stuck")))
    assert int(answer(watched, "pid")) != first_pid
    assert watched.status()["hangs"] == 1


def test_a_slow_engine_that_keeps_finishing_passes_is_not_killed(tmp_path: Path) -> None:
    # Each pass takes a third of the hang timeout (several heartbeats without progress), three timeouts in all.
    hang_s = 1.5
    engine = EngineProcess({"m": tmp_path}.__getitem__, fake_factory, hang_timeout_s=hang_s)
    try:
        pid = int(answer(engine, "pid"))
        began = time.monotonic()
        chunks = list(engine.generate(fake_request(f"slow:{hang_s / 3}", max_tokens=9)))
        assert time.monotonic() - began > 2 * hang_s
        assert [c.text for c in chunks] == [f"t{i} " for i in range(1, 10)]
        assert int(answer(engine, "pid")) == pid
        status = engine.status()
        assert (status["restarts"], status["hangs"]) == (0, 0)
    finally:
        engine.close()


def test_health_shows_the_engines_adapter_memory_against_its_budget(fake: EngineProcess) -> None:
    answer(fake, "")
    wait_for(lambda: fake.status()["adapters"] is not None, "a heartbeat")
    assert fake.status()["adapters"] == {
        "m": {"loaded": 1, "loaded_bytes": 3 * 2**20, "budget_bytes": 8 * 2**20, "loaded_mb": 3.0, "budget_mb": 8.0}
    }


# ------------------------------------------------------------------------------------ the real engine
N_ADAPTERS = 20
SLOTS = 8


@pytest.fixture(scope="module")
def many_adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("many-adapters")
    return {f"a{i:02d}": make_adapter(tiny_model_dir, root / f"a{i:02d}", 100 + i, r=4) for i in range(N_ADAPTERS)}


@pytest.fixture(scope="module")
def budget(many_adapters: dict[str, Path]) -> int:
    """Room for ``SLOTS`` of the twenty (rank-4) adapters: the loaded set is bounded by bytes, not by a count."""
    sizes = {lora_adapter_nbytes(path, torch.float32) for path in many_adapters.values()}
    assert len(sizes) == 1
    return SLOTS * (sizes.pop() or 0)


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, budget: int) -> Iterator[EngineProcess]:
    options = HFEngineOptions(
        dtype="float32", adapter_cache_mb=budget / 2**20, max_batch_size=16, adapter_timeout_s=ceiling(120)
    )
    engine = EngineProcess({TINY: tiny_model_dir}.__getitem__, options)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def prompt(tiny_model_dir: Path) -> list[int]:
    return list(Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json")).encode("Once upon a time there was").ids)


def test_greedy_outputs_through_the_process_equal_transformers(
    served: EngineProcess, adapter_dirs: dict[str, Path], reference: Reference, prompt: list[int]
) -> None:
    cases: list[str | None] = [None, *adapter_dirs]
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:  # together: one mixed batch in the child
        outputs = list(pool.map(lambda a: list(served.generate(request(prompt, adapter=a, adapter_dirs=adapter_dirs))),
                                cases))  # fmt: skip
    for adapter, chunks in zip(cases, outputs, strict=True):
        assert token_ids(chunks) == reference.greedy(prompt, 16, adapter), adapter
        assert chunks[-1].finish_reason is not None


def test_twenty_adapters_at_once_in_room_for_eight_all_answer_as_alone(
    served: EngineProcess, many_adapters: dict[str, Path], tiny_model_dir: Path, prompt: list[int], budget: int
) -> None:
    names = list(many_adapters)
    expected = Reference(tiny_model_dir, many_adapters)
    with ThreadPoolExecutor(max_workers=N_ADAPTERS) as pool:
        outputs = list(pool.map(lambda a: token_ids(list(served.generate(request(
            prompt, adapter=a, adapter_dirs=many_adapters, max_tokens=8)))), names))  # fmt: skip
    wanted = {name: expected.greedy(prompt, 8, name) for name in names}
    assert len({tuple(ids) for ids in wanted.values()}) > N_ADAPTERS // 2  # the adapters really differ
    for name, ids in zip(names, outputs, strict=True):
        assert ids == wanted[name], name
    # /health (from the engine's heartbeat) shows the adapters in memory within the budget.
    wait_for(lambda: (served.status()["adapters"] or {}).get(TINY, {}).get("loaded", 0) > 0, "a heartbeat")
    memory = served.status()["adapters"][TINY]
    assert memory["budget_bytes"] == budget
    assert 0 < memory["loaded_bytes"] <= budget
    assert memory["loaded"] <= SLOTS
