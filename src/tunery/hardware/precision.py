"""Which floating-point format is fastest here, measured on this machine once and cached — never read from flags.

Machines these services land on differ: some CPUs emulate bf16 (~100x slower than fp32), some have AVX-512 BF16
(~2x fp32) or AMX (~5x). A flag in ``/proc/cpuinfo`` says what an instruction set offers, not what torch's
kernels make of it on this VM, so ``auto`` precision is decided by timing both formats on the shapes that
matter (a transformer layer's projections) and taking bf16 only where it is clearly faster. The verdict is
cached per (CPU model, torch version, threads, mode) in a small JSON file, so the probe runs once per machine —
unless the machine was busy with other work while it measured: then the verdict serves this start only.

Two modes, because training and serving use bf16 differently:

* ``"autocast"`` (training): fp32 weights and activations under ``torch.autocast(bfloat16)`` — the casts are
  part of the price;
* ``"weights"`` (serving): weights and activations stored in bf16.

It does not choose devices or change global torch state (beyond the matmuls it times).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import torch

Mode = Literal["autocast", "weights"]
Format = Literal["fp32", "bf16"]

# bf16 rounds activations to 8 mantissa bits: take it only for a clear gain, not for noise on a busy machine.
MIN_SPEEDUP = 1.25
# A [tokens x hidden] @ [hidden x 3*hidden] projection, SmolLM2-sized: big enough to reach the GEMM kernels'
# steady state, small enough that an emulated-bf16 CPU (~2.5 GFLOP/s) answers in well under a second.
PROBE_SHAPE = (256, 576, 1536)
# Interleaved fp32/bf16 rounds; the fastest of each is what the kernels do when nobody else holds the cores
# (a median still moves with a busy neighbour's load: seen picking fp32 on a loaded bf16 machine).
ROUNDS = 7

# Seconds one timed call of a format takes: the seam a test replaces with a fake clock.
Timer = Callable[[Format], float]


def fastest_format(mode: Mode, *, cache_file: Path | None = None, timer: Timer | None = None) -> Format:
    """``"bf16"`` when bf16 matmuls (in ``mode``) run at least ``MIN_SPEEDUP`` times faster than fp32 here,
    else ``"fp32"``. Reads the cached verdict from ``cache_file`` when it has one for this machine; otherwise
    measures (with ``timer``, or real matmuls) and writes it."""
    key = machine_key(mode)
    cached = _read_cache(cache_file)
    if key in cached and cached[key].get("format") in ("fp32", "bf16"):
        return cached[key]["format"]  # type: ignore[no-any-return]
    busy = machine_is_busy()
    fp32_s, bf16_s = measure(timer or _matmul_timer(mode))
    speedup = fp32_s / bf16_s if bf16_s > 0 else 0.0
    verdict: Format = "bf16" if speedup >= MIN_SPEEDUP else "fp32"
    if not (busy or machine_is_busy()):  # a verdict taken under others' load is used once, not kept
        cached[key] = {"format": verdict, "bf16_speedup": round(speedup, 3), "measured_at": time.time()}
        _write_cache(cache_file, cached)
    return verdict


def machine_is_busy() -> bool:
    """Whether other work already fills the cores (1-minute load average at or above the core count)."""
    try:
        return os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:
        return False


def measure(timer: Timer, rounds: int = ROUNDS) -> tuple[float, float]:
    """Best seconds per call of fp32 and of bf16, measured in interleaved rounds after one warm-up each.

    Where the warm-up already shows bf16 several times slower (emulated: ~100x), that is the answer: timing
    it further would only cost seconds."""
    fp32_warm = timer("fp32")
    bf16_warm = timer("bf16")
    if bf16_warm > 4 * fp32_warm:
        return fp32_warm, bf16_warm
    fp32: list[float] = []
    bf16: list[float] = []
    for _ in range(rounds):
        fp32.append(timer("fp32"))
        bf16.append(timer("bf16"))
    return min(fp32), min(bf16)


def machine_key(mode: Mode) -> str:
    """What the verdict depends on: the CPU, torch's kernels, the threads they may use, and the mode."""
    return f"{cpu_model()}|torch {torch.__version__}|threads {torch.get_num_threads()}|{mode}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _matmul_timer(mode: Mode) -> Timer:
    tokens, hidden, out = PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    x32 = torch.randn(tokens, hidden, generator=generator)
    w32 = torch.randn(out, hidden, generator=generator)
    x16, w16 = x32.to(torch.bfloat16), w32.to(torch.bfloat16)

    def timed(fmt: Format) -> float:
        if fmt == "fp32":
            x, w, context = x32, w32, nullcontext()
        elif mode == "autocast":
            x, w, context = x32, w32, torch.autocast("cpu", dtype=torch.bfloat16)
        else:
            x, w = x16, w16
            context = nullcontext()
        # One thread: per-core speed is what the formats differ in, and a single thread is not held up by
        # a sibling thread that another process's load has descheduled (which swamps a two-thread timing).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode(), context:
                start = time.perf_counter()
                for _ in range(3):
                    torch.nn.functional.linear(x, w)
                return (time.perf_counter() - start) / 3
        finally:
            torch.set_num_threads(threads)

    return timed


def _read_cache(cache_file: Path | None) -> dict[str, dict[str, object]]:
    if cache_file is None:
        return {}
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(cache_file: Path | None, data: dict[str, dict[str, object]]) -> None:
    if cache_file is None:
        return
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(cache_file)
    except OSError:
        pass  # a read-only or full disk costs a re-measure next time, nothing else
