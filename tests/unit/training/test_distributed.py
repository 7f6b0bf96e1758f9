"""Data-parallel training: ``python -m tunery.training --processes 2`` (torchrun, gloo on CPU) trains the same
curve as one process on the same data, seed and global batch, and a 2-process pause → resume continues it.

Tolerance: fp32 throughout; the ranks sum their loss and gradients in a different order than one process
does, so losses agree to a relative 1e-4 (measured differences are ~1e-7), not bit for bit.

Run: .venv/bin/pytest tests/unit/training/test_distributed.py -q  (two torchrun launches; ~20-40 s on 2 cores)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.unit.training.test_loop import losses, make_spec, of_kind
from tunery.training import progress as control
from tunery.training.loop import run
from tunery.training.progress import ProgressKind, ProgressWriter
from tunery.training.spec import TrainingSpec

RELATIVE = 1e-4
SRC = str(Path(__file__).resolve().parents[3] / "src")


def train_with_processes(spec: TrainingSpec, processes: int) -> subprocess.CompletedProcess[str]:
    spec.write(spec.run_path / "spec.json")
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tunery.training", "--processes", str(processes), str(spec.run_path / "spec.json")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def single(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainingSpec:
    """The reference: one process, batch 3 (so the two ranks' shards are uneven: 2 and 1 examples)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    spec = make_spec(tiny_model_dir, tmp_path_factory.mktemp("single"), "single", batch_size=3, dtype="fp32")
    run(spec, ProgressWriter(spec.run_path))
    torch.set_num_threads(threads)
    return spec


def assert_same_curve(got: dict[int, float], reference: dict[int, float]) -> None:
    for step, loss in got.items():
        assert loss == pytest.approx(reference[step], rel=RELATIVE), f"step {step}"


def test_two_processes_train_the_same_curve_as_one(single: TrainingSpec, tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = make_spec(tiny_model_dir, tmp_path, "two", batch_size=3, dtype="fp32")
    done = train_with_processes(spec, 2)

    assert done.returncode == 0, done.stderr[-3000:]
    started = of_kind(spec, ProgressKind.STARTED)
    assert len(started) == 1, "rank 0 alone reports"
    reference = losses(single)
    assert list(losses(spec)) == list(reference) == list(range(1, 9))
    assert_same_curve(losses(spec), reference)
    steps = of_kind(spec, ProgressKind.STEP)
    assert [s["trained_tokens"] for s in steps] == [s["trained_tokens"] for s in of_kind(single, ProgressKind.STEP)]
    full_valid = [s["full_valid_loss"] for s in steps if "full_valid_loss" in s]
    reference_valid = [s["full_valid_loss"] for s in of_kind(single, ProgressKind.STEP) if "full_valid_loss" in s]
    assert full_valid == pytest.approx(reference_valid, rel=RELATIVE)
    assert (
        of_kind(spec, ProgressKind.COMPLETED)[0]["trained_tokens"]
        == (of_kind(single, ProgressKind.COMPLETED)[0]["trained_tokens"])
    )
    assert (spec.run_path / "adapter" / "adapter_model.safetensors").is_file()


def test_two_processes_pause_and_resume_on_the_same_curve(
    single: TrainingSpec, tiny_model_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(tiny_model_dir, tmp_path, "paused", batch_size=3, dtype="fp32")
    control.request(spec.run_path, "pause")  # read by rank 0 after the first step, broadcast to rank 1

    paused_run = train_with_processes(spec, 2)

    assert paused_run.returncode == 0, paused_run.stderr[-3000:]
    paused = of_kind(spec, ProgressKind.PAUSED)
    assert [p["step"] for p in paused] == [1]
    assert max(losses(spec)) == 1
    assert (spec.run_path / "state" / "state.json").is_file()

    control.clear_request(spec.run_path)
    resumed = TrainingSpec(**{**json.loads(spec.to_json()), "lora": spec.lora, "resume_from": paused[0]["state_path"]})
    resumed_run = train_with_processes(resumed, 2)

    assert resumed_run.returncode == 0, resumed_run.stderr[-3000:]
    assert of_kind(spec, ProgressKind.STARTED)[-1]["resumed_from_step"] == 1
    assert list(losses(spec)) == list(range(1, 9))
    assert_same_curve(losses(spec), losses(single))
    assert len(of_kind(spec, ProgressKind.COMPLETED)) == 1
