"""``scripts/gpu-check.sh``, the check a developer runs when an accelerator is lent, kept runnable without one.

CI has no GPU, so these tests run the script's own CPU self-check (``--allow-cpu``: the same model preparation,
trainer subprocess, torchrun launch and engine as on CUDA, a few tiny steps) and its refusal on a machine
without CUDA. What they guard against is the script rotting between the rare sessions that have a GPU: a
renamed module, a changed spec field, a broken torchrun path. Slow (~30 s each): the bundled SmolLM2 is
prepared from its GGUF each time, as it is on a fresh GPU machine.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ceilings import ceiling

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu-check.sh"
TRAINED = re.compile(
    r"trained (\d+) steps of (\d+) examples on (\w+) \((\w+), (\d+) process\(es\)\): loss ([\d.]+) -> ([\d.]+); "
    r"training ([\d,]+) tokens/s"
)
SERVED = re.compile(
    r"served the adapter: (\d+) concurrent requests, (\d+) tokens in [\d.]+ s: decode ([\d,]+) tokens/s"
)


def _cuda_visible() -> bool:
    probe = [sys.executable, "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"]
    return subprocess.run(probe, check=False).returncode == 0


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(SCRIPT), "--work-dir", str(tmp_path / "work"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=ceiling(80),
        check=False,
    )


@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "two-ranks-gloo"])
def test_the_cpu_self_check_trains_serves_and_reports_figures(tmp_path: Path, processes: int) -> None:
    result = _run(tmp_path, "--allow-cpu", "--processes", str(processes))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    trained = TRAINED.search(result.stdout)
    assert trained, result.stdout
    steps, _, device, dtype, ranks, first_loss, last_loss, tokens_per_s = trained.groups()
    assert (int(steps), device, dtype, int(ranks)) == (2, "cpu", "fp32", processes)
    assert all(math.isfinite(float(v)) and float(v) > 0 for v in (first_loss, last_loss))
    assert float(tokens_per_s.replace(",", "")) > 0
    assert (tmp_path / "work" / "run" / "adapter" / "adapter_config.json").is_file()

    served = SERVED.search(result.stdout)
    assert served, result.stdout
    assert int(served.group(2)) > 0
    assert float(served.group(3).replace(",", "")) > 0
    assert "gpu-check: OK" in result.stdout


def test_without_a_gpu_it_says_so_and_exits_2(tmp_path: Path) -> None:
    if _cuda_visible():
        pytest.skip("this machine has a CUDA device: the script would run for real")
    result = _run(tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no CUDA device is visible to torch" in result.stdout
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())
