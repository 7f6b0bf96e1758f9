"""Data-parallel training: ``python -m tunery.training --processes 2`` (torchrun, gloo on CPU) trains the same
curve as one process on the same data, seed and global batch; a 2-process pause → resume continues it; a rank
killed with SIGKILL ends the whole trainer with a failure exit (the worker's crash path).

Tolerance: fp32 throughout; the ranks sum their loss and gradients in a different order than one process
does, so losses agree to a relative 1e-4 (measured differences are ~1e-7), not bit for bit.

Run: .venv/bin/pytest tests/unit/training/test_distributed.py -q  (two torchrun launches; ~20-40 s on 2 cores)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.unit.training.test_loop import losses, make_spec, of_kind
from tunery.training import progress as control
from tunery.training.loop import run
from tunery.training.progress import ProgressKind, ProgressWriter
from tunery.training.spec import TrainingSpec
from tunery.worker.launcher import TrainerProcess

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


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition: Callable[[], bool], what: str, ceiling_s: float = 180.0) -> None:
    deadline = time.monotonic() + ceiling_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_rank_killed_ends_the_whole_trainer_with_a_failure_exit(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 of one rank: torchrun stops the other and exits non-zero, which the worker treats as a trainer
    that died (``RunService.trainer_exited``: resume from the saved state, or fail clearly)."""
    spec = make_spec(tiny_model_dir, tmp_path, "killed", batch_size=3, dtype="fp32", n_epochs=50, processes=2)
    spec.write(spec.run_path / "spec.json")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", SRC)
    trainer = TrainerProcess(spec.run_path / "spec.json")
    try:
        wait_for(lambda: bool(losses(spec)), "the first step")
        ranks = children(trainer.pid)
        assert len(ranks) == 2, ranks
        os.kill(ranks[1], signal.SIGKILL)

        wait_for(lambda: trainer.poll() is not None, "torchrun to exit")
        assert trainer.poll() != 0
        wait_for(lambda: not alive(ranks[0]), "the other rank to stop", ceiling_s=60)
        assert not of_kind(spec, ProgressKind.COMPLETED)
    finally:
        trainer.kill()
