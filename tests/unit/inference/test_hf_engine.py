"""``HFEngine`` on the tiny model: greedy outputs equal transformers/peft's own, alone and in mixed batches of
adapters; stop conditions and counts; seeded sampling; continuous batching; the adapter LRU; failures that
stay with the request they belong to; cancellation and close.

Run: ``.venv/bin/pytest tests/unit/inference -q`` (~20 s on a 2-core CPU).
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer

from tests.unit.inference.conftest import ADAPTERS, FORWARDS, TINY, Reference, request, run, text, token_ids
from tunery.domain.errors import InvalidRequest, NotFound, Unavailable
from tunery.inference.engine import GenerationChunk
from tunery.inference.errors import AdapterLoadError, GenerationError
from tunery.inference.hf_engine import HFEngine, resolve_dtype

SENTENCES = (
    "The quick brown fox",
    "Once upon a time there was",
    "Hello world, this is a test of",
    "Tunery serves adapters",
    "a",
    "Many adapters share one base model and one forward pass in every decode step of the batch",
)


@pytest.fixture(scope="module")
def prompts(tiny_model_dir: Path) -> list[list[int]]:
    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    return [tokenizer.encode(s).ids for s in SENTENCES]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))


# ------------------------------------------------------------------------------------- equal to the reference
@pytest.mark.parametrize("adapter", [None, *ADAPTERS])
def test_greedy_equals_transformers_generate(
    engine: HFEngine,
    reference: Reference,
    adapter_dirs: dict[str, Path],
    prompts: list[list[int]],
    tokenizer: Tokenizer,
    adapter: str | None,
) -> None:
    for prompt in prompts[:4]:
        chunks = run(engine, request(prompt, adapter=adapter, adapter_dirs=adapter_dirs, max_tokens=24))
        expected = reference.greedy(prompt, 24, adapter)
        assert token_ids(chunks) == expected
        # Streamed pieces add up to the decoded whole, even where tokens split UTF-8 characters.
        assert text(chunks) == tokenizer.decode(expected, skip_special_tokens=True)
        assert all(chunk.text for chunk in chunks[:-1])
        assert [c.finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["length"]


def test_greedy_is_deterministic(engine: HFEngine, adapter_dirs: dict[str, Path], prompts: list[list[int]]) -> None:
    req = request(prompts[1], adapter="beta", adapter_dirs=adapter_dirs, max_tokens=20)
    assert token_ids(run(engine, req)) == token_ids(run(engine, req))


def test_adapters_change_the_output(engine: HFEngine, adapter_dirs: dict[str, Path], prompts: list[list[int]]) -> None:
    outputs = {
        adapter: tuple(token_ids(run(engine, request(prompts[2], adapter=adapter, adapter_dirs=adapter_dirs))))
        for adapter in (None, *ADAPTERS)
    }
    assert len(set(outputs.values())) == 4, outputs


def test_mixed_concurrent_batch_equals_single_requests(
    engine: HFEngine, reference: Reference, adapter_dirs: dict[str, Path], prompts: list[list[int]]
) -> None:
    jobs = [
        (prompt, adapter, 30 + 5 * i)
        for i, prompt in enumerate(prompts)
        for adapter in (None, *ADAPTERS)
        if (i + len(str(adapter))) % 3 != 0 or adapter is None
    ]
    expected = [reference.greedy(prompt, max_tokens, adapter) for prompt, adapter, max_tokens in jobs]
    start = threading.Barrier(len(jobs))
    spans: list[tuple[float, float]] = [(0.0, 0.0)] * len(jobs)

    def timed(index: int) -> list[GenerationChunk]:
        prompt, adapter, max_tokens = jobs[index]
        start.wait()
        chunks = []
        for chunk in engine.generate(
            request(prompt, adapter=adapter, adapter_dirs=adapter_dirs, max_tokens=max_tokens)
        ):
            if not chunks:
                first = time.monotonic()
            chunks.append(chunk)
        spans[index] = (first, time.monotonic())
        return chunks

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(timed, range(len(jobs))))

    for (prompt, adapter, _), chunks, want in zip(jobs, results, expected, strict=True):
        assert token_ids(chunks) == want, (prompt, adapter)
    # They really ran together: at some moment all four kinds (base + 3 adapters) were streaming at once.
    kinds_streaming = [
        {adapter for (_, adapter, _), (first, end) in zip(jobs, spans, strict=True) if first <= moment <= end}
        for moment, _ in spans
    ]
    assert max(len(kinds) for kinds in kinds_streaming) == 4


def test_a_late_short_request_finishes_before_an_earlier_long_one(engine: HFEngine, prompts: list[list[int]]) -> None:
    long_stream = engine.generate(request(prompts[0], max_tokens=300))
    first = next(long_stream)
    assert first.finish_reason is None
    short = run(engine, request(prompts[3], max_tokens=4))
    assert short[-1].finish_reason == "length"
    rest = list(long_stream)
    assert rest[-1].finish_reason == "length"
    assert rest[-1].completion_tokens == 300  # still running when the short one was done


# --------------------------------------------------------------------------------------- stops and counts
def test_max_tokens_ends_with_length_and_counts(engine: HFEngine, prompts: list[list[int]]) -> None:
    chunks = run(engine, request(prompts[4], max_tokens=5))
    last = chunks[-1]
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == ("length", len(prompts[4]), 5)
    assert len(token_ids(chunks)) == 5


def test_stop_string_is_cut_from_the_output(
    engine: HFEngine,
    reference: Reference,
    adapter_dirs: dict[str, Path],
    prompts: list[list[int]],
    tokenizer: Tokenizer,
) -> None:
    expected_ids = reference.greedy(prompts[0], 24, "gamma")
    full = tokenizer.decode(expected_ids, skip_special_tokens=True)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = full.index(stop)
    chunks = run(engine, request(prompts[0], adapter="gamma", adapter_dirs=adapter_dirs, max_tokens=24, stop=(stop,)))
    assert text(chunks) == full[:cut]
    assert chunks[-1].finish_reason == "stop"
    # The count is of tokens generated up to the one that completed the stop string.
    assert chunks[-1].completion_tokens == len(token_ids(chunks)) < 24
    assert tokenizer.decode(token_ids(chunks), skip_special_tokens=True).startswith(full[:cut] + stop)


def test_stop_token_ids_end_with_stop_and_leave_the_token_out_of_the_text(
    engine: HFEngine,
    reference: Reference,
    adapter_dirs: dict[str, Path],
    prompts: list[list[int]],
    tokenizer: Tokenizer,
) -> None:
    expected_ids = reference.greedy(prompts[2], 24, "beta")
    stop_id = expected_ids[5]
    at = expected_ids.index(stop_id)
    req = request(prompts[2], adapter="beta", adapter_dirs=adapter_dirs, max_tokens=24)
    chunks = run(engine, dataclasses.replace(req, stop_token_ids=(stop_id,)))
    assert token_ids(chunks) == expected_ids[: at + 1]
    assert text(chunks) == tokenizer.decode(expected_ids[:at], skip_special_tokens=True)
    assert (chunks[-1].finish_reason, chunks[-1].completion_tokens) == ("stop", at + 1)


# ------------------------------------------------------------------------------------------------ sampling
def test_seeded_sampling_is_reproducible_even_when_batched(
    engine: HFEngine, adapter_dirs: dict[str, Path], prompts: list[list[int]]
) -> None:
    def sampled(seed: int) -> list[int]:
        req = request(prompts[1], adapter="alpha", adapter_dirs=adapter_dirs, temperature=1.0, top_p=0.9, seed=seed)
        return token_ids(run(engine, req))

    alone = sampled(7)
    assert sampled(7) == alone
    assert sampled(8) != alone
    with ThreadPoolExecutor(4) as pool:
        busy = [pool.submit(run, engine, request(p, adapter="beta", adapter_dirs=adapter_dirs)) for p in prompts[:3]]
        assert sampled(7) == alone
        for future in busy:
            future.result()


def test_sampling_differs_from_greedy_without_a_seed(engine: HFEngine, prompts: list[list[int]]) -> None:
    outputs = {tuple(token_ids(run(engine, request(prompts[5], temperature=1.5, max_tokens=24)))) for _ in range(3)}
    assert len(outputs) > 1


# ----------------------------------------------------------------------------------------------- adapters
def test_lru_eviction_and_reload_give_identical_outputs(
    tiny_model_dir: Path, adapter_dirs: dict[str, Path], prompts: list[list[int]]
) -> None:
    with HFEngine({TINY: tiny_model_dir}, dtype="float32", max_loaded_adapters=2) as engine:
        first = token_ids(run(engine, request(prompts[0], adapter="alpha", adapter_dirs=adapter_dirs)))
        run(engine, request(prompts[0], adapter="beta", adapter_dirs=adapter_dirs))
        assert engine.loaded_adapters(TINY) == ["alpha", "beta"]
        run(engine, request(prompts[0], adapter="gamma", adapter_dirs=adapter_dirs))
        assert engine.loaded_adapters(TINY) == ["beta", "gamma"]
        again = token_ids(run(engine, request(prompts[0], adapter="alpha", adapter_dirs=adapter_dirs)))
        assert engine.loaded_adapters(TINY) == ["gamma", "alpha"]
    assert again == first


def test_more_adapters_in_flight_than_slots_wait_their_turn(
    tiny_model_dir: Path, reference: Reference, adapter_dirs: dict[str, Path], prompts: list[list[int]]
) -> None:
    jobs = [(prompts[i % 4], ADAPTERS[i % 3]) for i in range(9)]
    with (
        HFEngine({TINY: tiny_model_dir}, dtype="float32", max_loaded_adapters=1) as engine,
        ThreadPoolExecutor(9) as pool,
    ):
        futures = [
            pool.submit(run, engine, request(prompt, adapter=adapter, adapter_dirs=adapter_dirs, max_tokens=8))
            for prompt, adapter in jobs
        ]
        results = [future.result(timeout=60) for future in futures]
        assert len(engine.loaded_adapters(TINY)) == 1
    for (prompt, adapter), chunks in zip(jobs, results, strict=True):
        assert token_ids(chunks) == reference.greedy(prompt, 8, adapter)


def test_a_bad_adapter_fails_only_its_request(
    engine: HFEngine, reference: Reference, adapter_dirs: dict[str, Path], prompts: list[list[int]], tmp_path: Path
) -> None:
    wrong_model = tmp_path / "wrong-shapes"
    shutil.copytree(adapter_dirs["alpha"], wrong_model)
    from safetensors.torch import load_file, save_file

    weights = load_file(wrong_model / "adapter_model.safetensors")
    save_file(
        {k: torch.zeros(v.shape[0], v.shape[1] + 1) for k, v in weights.items()},
        wrong_model / "adapter_model.safetensors",
    )
    bad = {"missing": tmp_path / "does-not-exist", "wrong": wrong_model}

    with ThreadPoolExecutor(6) as pool:
        good = [
            pool.submit(run, engine, request(p, adapter="beta", adapter_dirs=adapter_dirs, max_tokens=20))
            for p in prompts[:4]
        ]
        failing = {name: pool.submit(run, engine, request(prompts[0], adapter=name, adapter_dirs=bad)) for name in bad}
        with pytest.raises(AdapterLoadError, match=r"Adapter 'missing' .*no adapter_config\.json"):
            failing["missing"].result()
        with pytest.raises(AdapterLoadError, match=r"Adapter 'wrong' .*do not fit the base model"):
            failing["wrong"].result()
        for future, prompt in zip(good, prompts, strict=False):
            assert token_ids(future.result()) == reference.greedy(prompt, 20, "beta")
    assert "missing" not in engine.loaded_adapters(TINY)


@FORWARDS
def test_a_failing_forward_pass_fails_its_requests_and_the_engine_goes_on(
    tiny_model_dir: Path, prompts: list[list[int]], lean: bool
) -> None:
    with HFEngine({TINY: tiny_model_dir}, dtype="float32", lean_forward=lean) as engine:
        healthy = token_ids(run(engine, request(prompts[0])))
        loaded = engine._runtimes[TINY].loaded  # fault injection: break the third forward pass from now
        calls = 0

        def explode(*_: object) -> None:
            nonlocal calls
            calls += 1
            if calls == 3:
                raise RuntimeError("injected failure")

        if lean:
            assert loaded.lean is not None
            forward = loaded.lean.forward

            def failing(*args: Any, **kwargs: Any) -> torch.Tensor:
                explode()
                return forward(*args, **kwargs)

            loaded.lean.forward = failing  # type: ignore[method-assign]
            undo = lambda: delattr(loaded.lean, "forward")  # noqa: E731
        else:
            undo = loaded.model.register_forward_pre_hook(explode).remove
        try:
            with pytest.raises(GenerationError, match="injected failure"):
                run(engine, request(prompts[0], max_tokens=10))
        finally:
            undo()
        assert token_ids(run(engine, request(prompts[0]))) == healthy


# ------------------------------------------------------------------------------------ errors and lifecycle
def test_invalid_requests_raise_before_any_work(engine: HFEngine, prompts: list[list[int]]) -> None:
    with pytest.raises(InvalidRequest, match="max_tokens"):
        run(engine, request(prompts[0], max_tokens=0))
    with pytest.raises(InvalidRequest, match="top_p"):
        run(engine, request(prompts[0], top_p=0.0))
    with pytest.raises(InvalidRequest, match="empty"):
        run(engine, request([]))
    with pytest.raises(InvalidRequest, match="at most 1024"):
        run(engine, request([5] * 1024))
    with pytest.raises(NotFound, match="'nope'"):
        run(engine, dataclasses.replace(request(prompts[0]), base_model="nope"))


def test_generation_stops_at_the_context_length(engine: HFEngine) -> None:
    chunks = run(engine, request([5] * 1020, max_tokens=50))  # the tiny model's context is 1024
    assert (chunks[-1].finish_reason, chunks[-1].completion_tokens) == ("length", 4)


def test_closing_the_iterator_cancels_the_request_and_frees_its_adapter(
    tiny_model_dir: Path, adapter_dirs: dict[str, Path], prompts: list[list[int]]
) -> None:
    with HFEngine({TINY: tiny_model_dir}, dtype="float32", max_loaded_adapters=1) as engine:
        stream: Iterator[GenerationChunk] = engine.generate(
            request(prompts[0], adapter="alpha", adapter_dirs=adapter_dirs, max_tokens=1000)
        )
        next(stream)
        stream.close()  # type: ignore[attr-defined]
        # The only adapter slot is free again, or this would wait for the 1000 tokens.
        with ThreadPoolExecutor(1) as pool:
            chunks = pool.submit(run, engine, request(prompts[0], adapter="beta", adapter_dirs=adapter_dirs)).result(20)
        assert chunks[-1].finish_reason == "length"


def test_close_ends_requests_in_flight_and_refuses_new_ones(tiny_model_dir: Path, prompts: list[list[int]]) -> None:
    engine = HFEngine({TINY: tiny_model_dir}, dtype="float32")
    stream = engine.generate(request(prompts[0], max_tokens=1000))
    next(stream)
    engine.close()
    with pytest.raises(Unavailable, match="closed"):
        list(stream)
    with pytest.raises(Unavailable):
        run(engine, request(prompts[0]))
    engine.close()


def test_float16_is_refused_on_cpu() -> None:
    with pytest.raises(ValueError, match="float16"):
        resolve_dtype("float16", torch.device("cpu"))
    assert resolve_dtype("auto", torch.device("cpu")) in {torch.float32, torch.bfloat16}
