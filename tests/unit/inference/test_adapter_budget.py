"""The real engine with adapters of mixed ranks over an adapter memory budget smaller than all of them: every
request answers exactly as transformers + peft does alone, the loaded bytes never pass the budget, and an
adapter larger than the whole budget gets a clear error while the others are served.

Run: ``.venv/bin/pytest tests/unit/inference/test_adapter_budget.py -q``
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from tests.ceilings import ceiling
from tests.unit.inference.conftest import TINY, Reference, make_adapter, request, token_ids
from tunery.api.errors import status_for
from tunery.inference.adapters import lora_adapter_nbytes
from tunery.inference.errors import AdapterTooLarge
from tunery.inference.hf_engine import HFEngine

RANKS = {"r2": 2, "r4": 4, "r8": 8, "r16": 16, "r4b": 4, "r8b": 8}


@pytest.fixture(scope="module")
def mixed(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mixed-ranks")
    return {name: make_adapter(tiny_model_dir, root / name, 200 + i, r=r) for i, (name, r) in enumerate(RANKS.items())}


@pytest.fixture(scope="module")
def sizes(mixed: dict[str, Path]) -> dict[str, int]:
    return {name: lora_adapter_nbytes(path, torch.float32) or 0 for name, path in mixed.items()}


@pytest.fixture(scope="module")
def budget(sizes: dict[str, int]) -> int:
    """Room for the rank-16 and one rank-8 adapter at once: far less than all six."""
    return sizes["r16"] + sizes["r8"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, budget: int) -> Iterator[HFEngine]:
    with HFEngine(
        {TINY: tiny_model_dir}, dtype="float32", adapter_cache_mb=budget / 2**20, adapter_timeout_s=ceiling(60)
    ) as engine:
        yield engine


@pytest.fixture(scope="module")
def prompt(tiny_model_dir: Path) -> list[int]:
    return list(Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json")).encode("Once upon a time there was").ids)


def test_the_sizes_grow_with_the_rank_and_all_of_them_exceed_the_budget(sizes: dict[str, int], budget: int) -> None:
    assert sizes["r16"] == 2 * sizes["r8"] == 8 * sizes["r2"] > 0
    assert sum(sizes.values()) > 1.5 * budget


def test_mixed_rank_adapters_over_a_small_budget_all_answer_as_alone(
    engine: HFEngine, mixed: dict[str, Path], tiny_model_dir: Path, prompt: list[int], budget: int
) -> None:
    expected = Reference(tiny_model_dir, mixed)
    cases: list[str | None] = [None, *mixed, *mixed]  # each adapter twice, all at once, with the base model
    most = 0
    done = threading.Event()

    def watch() -> None:  # the loaded bytes, sampled while the requests run
        nonlocal most
        while not done.is_set():
            most = max(most, engine.adapter_memory().get(TINY, {}).get("loaded_bytes") or 0)
            done.wait(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=len(cases)) as pool:
            outputs = list(pool.map(lambda a: token_ids(list(engine.generate(request(
                prompt, adapter=a, adapter_dirs=mixed, max_tokens=8)))), cases))  # fmt: skip
    finally:
        done.set()
        watcher.join()
    wanted = {name: expected.greedy(prompt, 8, name) for name in [None, *mixed]}
    assert len({tuple(ids) for ids in wanted.values()}) == len(wanted)  # the adapters really differ
    for name, ids in zip(cases, outputs, strict=True):
        assert ids == wanted[name], name
    memory = engine.adapter_memory()[TINY]
    assert memory["budget_bytes"] == budget
    assert 0 < memory["loaded_bytes"] <= budget  # type: ignore[operator]
    assert memory["loaded"] < len(mixed)  # some were evicted to make room
    assert 0 < most <= budget


def test_an_adapter_larger_than_the_whole_budget_is_refused_and_the_others_are_served(
    engine: HFEngine, mixed: dict[str, Path], tiny_model_dir: Path, prompt: list[int], tmp_path: Path, budget: int
) -> None:
    huge = {"r64": make_adapter(tiny_model_dir, tmp_path / "r64", 300, r=64), "r2": mixed["r2"]}
    assert (lora_adapter_nbytes(huge["r64"], torch.float32) or 0) > budget
    too_large = r"Adapter 'r64' takes .* MiB in memory, more than the whole adapter"
    with pytest.raises(AdapterTooLarge, match=too_large) as refused:
        list(engine.generate(request(prompt, adapter="r64", adapter_dirs=huge)))
    assert status_for(refused.value) == 400  # a clear 400 on `model`, not a 5xx: retrying cannot help
    assert refused.value.param == "model"
    ids = token_ids(list(engine.generate(request(prompt, adapter="r2", adapter_dirs=huge, max_tokens=8))))
    assert ids == Reference(tiny_model_dir, huge).greedy(prompt, 8, "r2")
