"""Chunked prefill and prefix caching in ``HFEngine`` on the tiny model: outputs stay equal to transformers/peft
token for token, a long prompt arriving mid-stream never holds running streams for more than one chunk (read
from the scheduler's step log, not the clock), and a shared prefix is read once per adapter.

Run: ``.venv/bin/pytest tests/unit/inference/test_chunked_prefix.py -q``
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.unit.inference.conftest import TINY, Reference, request, run, token_ids
from tunery.inference.batching import RequestHandle, Scheduler, Step
from tunery.inference.hf_engine import HFEngine

CHUNK = 8
BLOCK = 4


@pytest.fixture(scope="module")
def chunked(tiny_model_dir: Path, lean_forward: bool) -> Iterator[HFEngine]:
    with HFEngine(
        {TINY: tiny_model_dir},
        lean_forward=lean_forward,
        dtype="float32",
        max_loaded_adapters=4,
        max_batch_size=8,
        max_prefill_tokens=CHUNK,
        prefix_block_tokens=BLOCK,
    ) as engine:
        yield engine


def scheduler(engine: HFEngine) -> Scheduler:
    return engine._runtimes[TINY].scheduler


def prompt(seed: int, length: int) -> list[int]:
    return [5 + (seed * 7919 + i * 104729) % 200 for i in range(length)]


def test_long_prompt_mid_stream_pauses_others_one_chunk_at_most(
    chunked: HFEngine, reference: Reference, adapter_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runners' decode steps wait until the long prompt is in line, so they are still decoding when it is
    read however fast the engine is (without that the runners could finish first, on a fast engine)."""
    for adapter in (None, "alpha", "beta"):  # the model and both adapters loaded: the runners start together
        run(chunked, request(prompt(0, 3), adapter=adapter, adapter_dirs=adapter_dirs, max_tokens=1))
    sched = scheduler(chunked)
    long_queued = threading.Event()
    submit, decode = sched.submit, sched._decode_step

    def submit_and_tell(handle: RequestHandle) -> None:
        submit(handle)
        if handle.request.request_id == "long":
            long_queued.set()

    def decode_once_it_is_queued() -> None:
        long_queued.wait(timeout=120)
        decode()

    runners = [
        dataclasses.replace(
            request(prompt(i, 6), adapter=a, adapter_dirs=adapter_dirs, max_tokens=60), request_id=f"r{i}"
        )
        for i, a in enumerate((None, "alpha"))
    ]
    long = dataclasses.replace(
        request(prompt(9, 90), adapter="beta", adapter_dirs=adapter_dirs, max_tokens=10), request_id="long"
    )
    streams = [chunked.generate(r) for r in runners]
    firsts = [next(stream) for stream in streams]  # both are decoding now
    monkeypatch.setattr(sched, "submit", submit_and_tell)  # from here on their next steps wait for the long one
    monkeypatch.setattr(sched, "_decode_step", decode_once_it_is_queued)
    with ThreadPoolExecutor(3) as pool:
        rest = [pool.submit(list, stream) for stream in streams]
        long_out = pool.submit(run, chunked, long).result(timeout=120)
        outputs = [[first, *future.result(timeout=120)] for first, future in zip(firsts, rest, strict=True)]

    for req, out in zip(runners, outputs, strict=True):
        assert token_ids(out) == reference.greedy(req.prompt_ids, 60, req.adapter_name)
    assert token_ids(long_out) == reference.greedy(long.prompt_ids, 10, "beta")

    log: list[Step] = list(scheduler(chunked).step_log)
    long_chunks = [step for step in log if step.kind == "prefill" and "long" in step.requests]
    assert len(long_chunks) >= 90 // CHUNK  # read in chunks, never in one pass
    assert all(step.tokens <= CHUNK for step in log if step.kind == "prefill")
    # While the long prompt was read, every runner still decoding kept decoding with one pass between steps.
    begin = log.index(long_chunks[0])
    end = log.index(long_chunks[-1])
    window = log[begin - 1 : end + 2]
    for runner in ("r0", "r1"):
        decodes = [i for i, step in enumerate(window) if step.kind == "decode" and runner in step.requests]
        if len(decodes) < 2:
            continue  # this runner had already finished
        assert max(b - a for a, b in itertools.pairwise(decodes)) <= 2, window
    assert sum(step.kind == "decode" and "r0" in step.requests for step in window) >= len(long_chunks) - 1


def test_prefix_hits_give_the_same_tokens_and_are_per_adapter(
    chunked: HFEngine, reference: Reference, adapter_dirs: dict[str, Path]
) -> None:
    system = prompt(3, 21)  # five full blocks, then a different question each time
    questions = [prompt(10 + i, 3 + i) for i in range(3)]
    cache = scheduler(chunked).prefix_cache if TINY in chunked._runtimes else None
    before = cache.hits if cache is not None else 0
    for adapter in (None, "gamma", "alpha"):
        for question in questions:
            req = request(system + question, adapter=adapter, adapter_dirs=adapter_dirs, max_tokens=12)
            assert token_ids(run(chunked, req)) == reference.greedy(req.prompt_ids, 12, adapter)
    cache = scheduler(chunked).prefix_cache
    assert cache is not None
    # Per adapter the first request reads everything; the two after it reuse the 20-token (5-block) prefix.
    assert cache.hits - before == 3 * 2 * 20
    # Concurrent requests with a shared prefix, mixed adapters, batched together: still exact.
    jobs = [(system + q, a) for q in questions for a in (None, "gamma")]
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [
            pool.submit(run, chunked, request(p, adapter=a, adapter_dirs=adapter_dirs, max_tokens=12)) for p, a in jobs
        ]
        for (p, a), future in zip(jobs, futures, strict=True):
            assert token_ids(future.result(timeout=120)) == reference.greedy(p, 12, a)


def test_a_prompt_made_only_of_a_cached_prefix_still_reads_its_last_token(
    chunked: HFEngine, reference: Reference
) -> None:
    whole = prompt(4, 16)  # exactly four blocks: the last block cannot be reused, its last token gives logits
    first = token_ids(run(chunked, request(whole, max_tokens=8)))
    again = token_ids(run(chunked, request(whole, max_tokens=8)))
    assert first == again == reference.greedy(whole, 8)


def test_prefix_caching_can_be_turned_off(tiny_model_dir: Path, reference: Reference) -> None:
    with HFEngine({TINY: tiny_model_dir}, dtype="float32", prefix_cache_mb=0, prefix_block_tokens=BLOCK) as engine:
        for _ in range(2):
            assert token_ids(run(engine, request(prompt(5, 20), max_tokens=6))) == reference.greedy(prompt(5, 20), 6)
        cache = scheduler(engine).prefix_cache
        assert cache is not None
        assert (cache.hits, len(cache)) == (0, 0)


def test_the_cache_grown_by_a_long_request_is_given_back_when_idle(chunked: HFEngine) -> None:
    run(chunked, request(prompt(6, 400), max_tokens=2))
    run(chunked, request(prompt(6, 5), max_tokens=2))  # the batch was empty before this one
    assert scheduler(chunked)._cache.capacity == 256
