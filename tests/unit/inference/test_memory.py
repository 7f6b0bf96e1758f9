"""Freed C-heap memory goes back to the system after a model load (``tunery.inference.memory``).

Run: ``.venv/bin/pytest tests/unit/inference/test_memory.py -q``
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.inference.conftest import TINY, request, run
from tunery.inference import hf_engine

_FRAGMENTED = """
import json, psutil
from tunery.inference.memory import release_freed_memory
process = psutil.Process()
chunks, kept = [], []
for _ in range(2_000):
    chunks.append(bytearray(100_000))  # below the mmap threshold: on malloc's heap
    kept.append(bytearray(600))  # a live neighbour after each chunk
del chunks
before = process.memory_info().rss
released = release_freed_memory()
print(json.dumps([before, process.memory_info().rss, released, all(k == bytearray(600) for k in kept)]))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_pages_leave_the_process() -> None:
    """200 MB freed between live allocations (holes free() cannot give back) stays resident until released.

    In a fresh interpreter: in this one, earlier tests' freed memory decides where the allocations land.
    """
    out = subprocess.run([sys.executable, "-c", _FRAGMENTED], capture_output=True, text=True, check=True, timeout=120)
    before, after, released, intact = json.loads(out.stdout)
    assert released
    assert before - after > 100 * 2**20, (before, after)
    assert intact


def test_the_engine_releases_memory_after_loading_a_model(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bool] = []

    def recorded() -> bool:
        calls.append(True)
        return True

    monkeypatch.setattr(hf_engine, "release_freed_memory", recorded)
    with hf_engine.HFEngine({TINY: tiny_model_dir}, dtype="float32") as engine:
        run(engine, request([5, 6, 7], max_tokens=2))
        run(engine, request([5, 6, 7], max_tokens=2))
    assert calls == [True]  # once, for the one load
