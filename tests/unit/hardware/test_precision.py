"""dtype ``auto`` is decided by timing, not by CPU flags: the probe picks the faster format, needs a clear gain
for bf16, stops early where bf16 is emulated, and caches its verdict per machine (fake timers: no real matmul)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunery.hardware import precision
from tunery.hardware.precision import MIN_SPEEDUP, Format, fastest_format, machine_key


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the verdict, not about this machine's load (tests that want a busy one say so)."""
    monkeypatch.setattr(precision, "machine_is_busy", lambda: False)


class FakeTimer:
    """Seconds per call of each format as given; counts the calls."""

    def __init__(self, fp32: float, bf16: float) -> None:
        self.seconds = {"fp32": fp32, "bf16": bf16}
        self.calls = 0

    def __call__(self, fmt: Format) -> float:
        self.calls += 1
        return self.seconds[fmt]


@pytest.mark.parametrize(
    ("fp32", "bf16", "expected"),
    [
        (1.0, 0.2, "bf16"),  # AMX: ~5x
        (1.0, 0.5, "bf16"),  # AVX-512 BF16: ~2x
        (1.0, 1.0 / (MIN_SPEEDUP - 0.05), "fp32"),  # a gain within noise does not pay for 8-bit mantissas
        (1.0, 1.3, "fp32"),
    ],
)
def test_the_probe_picks_the_faster_format(fp32: float, bf16: float, expected: str) -> None:
    assert fastest_format("autocast", timer=FakeTimer(fp32, bf16)) == expected


def test_emulated_bf16_is_judged_from_the_warm_up_alone() -> None:
    timer = FakeTimer(fp32=0.001, bf16=0.4)  # ~100x slower, as on CPUs without native bf16

    assert fastest_format("weights", timer=timer) == "fp32"
    assert timer.calls == 2


def test_the_verdict_is_measured_once_per_machine_and_mode(tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "precision.json"
    first = FakeTimer(fp32=1.0, bf16=0.25)
    assert fastest_format("autocast", cache_file=cache, timer=first) == "bf16"
    entry = json.loads(cache.read_text())[machine_key("autocast")]
    assert entry["format"] == "bf16"
    assert entry["bf16_speedup"] == pytest.approx(4.0)

    again = FakeTimer(fp32=1.0, bf16=2.0)  # would say fp32: the cache answers instead
    assert fastest_format("autocast", cache_file=cache, timer=again) == "bf16"
    assert again.calls == 0
    serving = FakeTimer(fp32=1.0, bf16=2.0)  # another mode is measured on its own
    assert fastest_format("weights", cache_file=cache, timer=serving) == "fp32"
    assert serving.calls > 0


def test_a_corrupt_or_unwritable_cache_only_costs_a_measurement(tmp_path: Path) -> None:
    cache = tmp_path / "precision.json"
    cache.write_text("{not json")
    assert fastest_format("autocast", cache_file=cache, timer=FakeTimer(1.0, 0.3)) == "bf16"
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    assert fastest_format("autocast", cache_file=blocked / "p.json", timer=FakeTimer(1.0, 0.3)) == "bf16"


def test_a_verdict_taken_while_the_machine_is_busy_is_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "precision.json"
    monkeypatch.setattr(precision, "machine_is_busy", lambda: True)
    assert fastest_format("autocast", cache_file=cache, timer=FakeTimer(1.0, 2.0)) == "fp32"
    assert not cache.exists(), "the next start measures again"

    monkeypatch.setattr(precision, "machine_is_busy", lambda: False)
    assert fastest_format("autocast", cache_file=cache, timer=FakeTimer(1.0, 0.3)) == "bf16"
    assert json.loads(cache.read_text())[machine_key("autocast")]["format"] == "bf16"
