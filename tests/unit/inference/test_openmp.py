"""Torch work of the engine outside its scheduler runs in threads that end (``tunery.inference.openmp``): an idle
OpenMP pool left in a long-lived thread throttles every parallel region of the scheduler.

Run: ``.venv/bin/pytest tests/unit/inference/test_openmp.py -q``
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.unit.inference.conftest import TINY, Reference, request, run, token_ids
from tunery.inference import hf_engine
from tunery.inference.openmp import in_passing_thread


def test_the_work_runs_in_a_thread_that_has_ended_when_it_returns() -> None:
    seen: list[threading.Thread] = []

    def work() -> int:
        seen.append(threading.current_thread())
        return 42

    assert in_passing_thread(work) == 42
    assert seen[0] is not threading.current_thread()
    assert not seen[0].is_alive()


def test_an_error_reaches_the_caller() -> None:
    def work() -> None:
        raise ValueError("bad weights")

    with pytest.raises(ValueError, match="bad weights"):
        in_passing_thread(work)


def test_the_engine_loads_models_and_probes_precision_in_passing_threads(
    tiny_model_dir: Path, reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither the caller's thread (the engine process's main loop, a request's thread) nor a live one loads."""
    threads: dict[str, threading.Thread] = {}
    load, resolve = hf_engine.load_base_model, hf_engine.resolve_dtype

    def recorded_load(*args: object, **kwargs: object) -> hf_engine.LoadedModel:
        threads["load"] = threading.current_thread()
        return load(*args, **kwargs)  # type: ignore[arg-type]

    def recorded_resolve(*args: object, **kwargs: object) -> object:
        threads["dtype"] = threading.current_thread()
        return resolve(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hf_engine, "load_base_model", recorded_load)
    monkeypatch.setattr(hf_engine, "resolve_dtype", recorded_resolve)
    prompt = [5, 17, 99, 230]
    with hf_engine.HFEngine({TINY: tiny_model_dir}, dtype="float32") as engine:
        assert token_ids(run(engine, request(prompt))) == reference.greedy(prompt, 16)
        scheduler = engine._runtimes[TINY].scheduler._thread
        for role, thread in threads.items():
            assert thread is not threading.current_thread(), role
            assert thread is not scheduler, role
            assert not thread.is_alive(), role
    assert set(threads) == {"load", "dtype"}
