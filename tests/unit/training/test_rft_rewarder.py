"""GRPO's grading and reference, beyond the runs ``test_rft.py`` makes: gradings run ``grader_concurrency`` at a
time (never more), the too-many-failures rule on both sides of its threshold, the loop closing the rewarder
however a run ends, and the KL of a fresh run measured against the base model (the adapter disabled).

Run: .venv/bin/pytest tests/unit/training/test_rft_rewarder.py -q  (~20 s on 2 cores)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.ceilings import ceiling
from tests.unit.training.test_rft import make_spec, records
from tunery.catalog.chat_tokenizer import ChatTokenizer
from tunery.graders import GraderErrors, GraderMetadata, GraderResult
from tunery.training import progress as control
from tunery.training import rft
from tunery.training.loop import Setup, linear_schedule, load_base_model, rft_objective, run
from tunery.training.lora import add_adapter
from tunery.training.packing import collate_trees, use_varlen_attention
from tunery.training.progress import ProgressKind, ProgressWriter
from tunery.training.rft import (
    MAX_BAD_STEPS,
    GraderFailure,
    GrpoObjective,
    GrpoSettings,
    Prompt,
    Rewarder,
    _ErrorWatch,
    _token_log_probs,
)
from tunery.training.spec import LoraSpec

EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
         "reference": "{{item.target}}", "operation": "eq"}  # fmt: skip
WAIT_S = ceiling(10)


# ------------------------------------------------------------------------------------------------ concurrency
class InFlight:
    """A stand-in for ``run_grader`` that holds every grading until ``release()`` and counts how many are in
    flight at once (the peak), in which threads, and in what order the answers arrived."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.now = 0
        self.peak = 0
        self.threads: set[int] = set()
        self.released = False

    def __call__(self, _grader: Any, *, sample: dict[str, Any], **_: Any) -> GraderResult:
        with self.cond:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.threads.add(threading.get_ident())
            self.cond.notify_all()
            assert self.cond.wait_for(lambda: self.released, timeout=WAIT_S), "never released"
            self.now -= 1
        text = sample["output_text"]
        return GraderResult(reward=float(text), metadata=GraderMetadata(name="exact", type="string_check"))

    def wait_for_in_flight(self, count: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.now >= count, timeout=WAIT_S), (self.now, count)

    def release(self) -> None:
        with self.cond:
            self.released = True
            self.cond.notify_all()


@pytest.mark.parametrize("concurrency", [1, 3])
def test_gradings_run_grader_concurrency_at_a_time_and_never_more(
    concurrency: int, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(tiny_model_dir, tmp_path, "pool", grader=EXACT, grader_concurrency=concurrency)
    objective = rft_objective(spec, ChatTokenizer.from_dir(tiny_model_dir))  # the loop's own wiring
    fake = InFlight()
    monkeypatch.setattr(rft, "run_grader", fake)
    answers = [str(i) for i in range(4 * concurrency + 1)]
    got: list[GraderResult] = []
    grading = threading.Thread(target=lambda: got.extend(objective.rewarder.grade(answers, [{}] * len(answers))))
    try:
        grading.start()
        fake.wait_for_in_flight(concurrency)  # all `concurrency` gradings are held at once...
        with fake.cond:
            assert fake.now == concurrency  # ...and the others wait for a free slot
    finally:
        fake.release()
        grading.join(WAIT_S)
        objective.close()
    assert not grading.is_alive()
    assert fake.peak == concurrency
    assert len(fake.threads) == concurrency, "each grading runs on one of `concurrency` grader threads"
    assert [r.reward for r in got] == [float(a) for a in answers], "results come back in the answers' order"


def test_python_graders_get_one_sandbox_worker_per_concurrent_grading(tiny_model_dir: Path, tmp_path: Path) -> None:
    source = "def grade(sample, item):\n    return 1.0\n"
    grader = {"type": "python", "name": "one", "source": source}
    spec = make_spec(tiny_model_dir, tmp_path, "sandbox", grader=grader, grader_concurrency=3)
    rewarder = rft_objective(spec, ChatTokenizer.from_dir(tiny_model_dir)).rewarder
    try:
        assert rewarder._sandbox is not None
        assert rewarder._sandbox.limits.workers == 3  # fewer would queue gradings the pool runs at once
        assert [r.reward for r in rewarder.grade(["a", "b"], [{}, {}])] == [1.0, 1.0]
    finally:
        rewarder.close()


# ------------------------------------------------------------------------------------------------ failures
def graded(ok: int, failed: int) -> list[GraderResult]:
    good = GraderResult(reward=1.0, metadata=GraderMetadata(name="g", type="python"))
    errors = GraderErrors(python_grader_runtime_error=True, python_grader_runtime_error_details="ValueError: kaboom")
    bad = GraderResult(reward=0.0, metadata=GraderMetadata(name="g", type="python", errors=errors))
    return [good] * ok + [bad] * failed


def test_two_bad_steps_then_a_good_one_do_not_fail_the_job() -> None:
    watch = _ErrorWatch()
    for _ in range(MAX_BAD_STEPS - 1):
        assert watch.check(graded(1, 3), "a training step", training=True) == 0.75
    assert watch.check(graded(2, 2), "a training step", training=True) == 0.5  # half is not more than half
    for _ in range(MAX_BAD_STEPS - 1):  # the count started again
        watch.check(graded(1, 3), "a training step", training=True)
    for _ in range(MAX_BAD_STEPS + 1):  # evaluations never count towards the streak
        watch.check(graded(1, 3), "a validation run", training=False)


def test_more_than_half_failed_in_three_steps_in_a_row_fails_with_the_reasons() -> None:
    watch = _ErrorWatch()
    for _ in range(MAX_BAD_STEPS - 1):
        watch.check(graded(1, 3), "a training step", training=True)
    with pytest.raises(GraderFailure) as failure:
        watch.check(graded(1, 3), "a training step", training=True)
    message = str(failure.value)
    assert f"more than half the gradings failed in {MAX_BAD_STEPS} steps in a row" in message
    assert "kaboom" in message


# ------------------------------------------------------------------------------------------------ closing
@pytest.mark.parametrize("ending", ["completed", "paused", "cancelled", "raised"])
def test_the_loop_closes_the_rewarder_however_the_run_ends(
    ending: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashing = {"type": "python", "name": "boom", "source": "def grade(sample, item):\n    raise ValueError('x')\n"}
    spec = make_spec(
        tiny_model_dir, tmp_path, ending, validation_file=None, n_epochs=2 if ending == "paused" else 1,
        batch_size=16, rft_group_size=2, rft_max_new_tokens=4, grader=crashing if ending == "raised" else EXACT,
    )  # fmt: skip
    closed: list[Rewarder] = []
    real_close = Rewarder.close

    def spy(self: Rewarder) -> None:
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(Rewarder, "close", spy)
    request = {"paused": "pause", "cancelled": "cancel"}.get(ending)
    monkeypatch.setattr(control, "requested", lambda _run_dir: request)
    if ending == "raised":
        with pytest.raises(GraderFailure):
            run(spec, ProgressWriter(spec.run_path))
    else:
        run(spec, ProgressWriter(spec.run_path))
        kind = {"completed": ProgressKind.COMPLETED, "paused": ProgressKind.PAUSED}.get(ending, ProgressKind.CANCELLED)
        assert records(spec, kind)
    assert len(closed) == 1
    with pytest.raises(RuntimeError):  # its grader threads are gone: no grading can start
        closed[0]._pool.submit(lambda: None)


# ------------------------------------------------------------------------------------------------ reference
@pytest.fixture
def fresh(tiny_model_dir: Path) -> Iterator[tuple[Any, GrpoObjective]]:
    torch.manual_seed(0)
    base = load_base_model(tiny_model_dir, torch.device("cpu"))
    use_varlen_attention(base)
    model = add_adapter(base, LoraSpec(r=4, alpha=8))  # a fresh run: the adapter starts as a no-op
    tokenizer = ChatTokenizer.from_dir(tiny_model_dir)
    settings = GrpoSettings(group_size=2, eval_samples=1, max_new_tokens=6, stop_ids=tuple(tokenizer.stop_token_ids))
    objective = GrpoObjective(settings, Rewarder(EXACT, concurrency=1, parse_json=False), tokenizer,
                              reference_adapter=False)  # fmt: skip
    yield model, objective
    objective.close()


def test_a_fresh_runs_kl_is_zero_at_the_start_and_grows_once_the_adapter_moves(
    fresh: tuple[Any, GrpoObjective], tiny_model_dir: Path
) -> None:
    model, objective = fresh
    setup = Setup(torch.device("cpu"), None, 256, 4096)
    prompts = [Prompt(input_ids=[1, 5, 9, 30, 31], item={"target": "x"}, line=1),
               Prompt(input_ids=[1, 7, 40], item={"target": "y"}, line=2)]  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0)  # the test moves the adapter itself

    def step() -> float:
        metrics, _ = objective.step(model, optimizer, linear_schedule(optimizer, 10, 0.0), prompts, setup)
        return float(metrics["kl"])

    assert step() < 1e-7  # the policy is the reference: nothing to pay
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.3)  # the optimizer moved the adapter
    assert step() > 1e-4

    # The reference is the base model itself (checked against a copy without any adapter), not the policy.
    plain = load_base_model(tiny_model_dir, torch.device("cpu"))
    use_varlen_attention(plain)
    plain = add_adapter(plain, LoraSpec(r=4, alpha=8))  # a fresh adapter changes nothing: the base model
    batch = collate_trees([([1, 5, 9, 30, 31], [[7, 8, 2], [9, 10]])])
    with torch.no_grad():
        with objective._reference(model):
            reference = _token_log_probs(model, batch, setup)
        policy = _token_log_probs(model, batch, setup)
        base = _token_log_probs(plain, batch, setup)
    torch.testing.assert_close(reference, base, rtol=1e-4, atol=1e-5)
    assert (policy - base).abs().max() > 1e-3
