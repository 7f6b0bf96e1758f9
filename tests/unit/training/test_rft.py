"""GRPO (reinforcement fine-tuning) on the tiny Llama: advantages, the clipped loss and its KL, batched sampling
with the KV cache against a plain greedy loop, a run whose validation reward rises, pause + resume, the
parent adapter as the reference for continuous fine-tuning, and a crashing grader ending the run.

Run: .venv/bin/pytest tests/unit/training/test_rft.py -q  (~40 s on 2 cores)
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from tunery.graders import GraderErrors, GraderMetadata, GraderResult, parse_failure
from tunery.training import progress as control
from tunery.training.lean_rollouts import LeanSampler
from tunery.training.loop import Setup, load_base_model, run
from tunery.training.lora import add_adapter
from tunery.training.packing import PackedBatch, collate_flat, collate_trees, use_varlen_attention
from tunery.training.progress import ProgressKind, ProgressReader, ProgressWriter
from tunery.training.rft import (
    MAX_BAD_STEPS,
    GraderFailure,
    Prompt,
    Rewarder,
    _ErrorWatch,
    _micro_batches,
    _sequence,
    _token_log_probs,
    grading_metrics,
    group_advantages,
    grpo_token_loss,
    sequence_means,
)
from tunery.training.rollouts import sample_completions
from tunery.training.spec import LoraSpec, TrainingSpec

# Reward: the share of the answer's characters that are "e". A random tiny model writes ~5 %; GRPO moves it.
E_SHARE = {
    "type": "python",
    "name": "e_share",
    "source": (
        "def grade(sample, item):\n    t = sample['output_text']\n    return t.count(item['target']) / max(len(t), 1)\n"
    ),
}
WORDS = ["capital", "France", "Paris", "Rome", "hello", "help", "today"]


def rows(n: int, rng: random.Random) -> list[dict[str, Any]]:
    return [
        {"messages": [{"role": "user", "content": " ".join(rng.choices(WORDS, k=4))}], "target": "e"} for _ in range(n)
    ]


def write_jsonl(path: Path, data: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return str(path)


def make_spec(model_dir: Path, root: Path, name: str, **overrides: Any) -> TrainingSpec:
    """16 prompts, 5 epochs of 4 steps (4 prompts × 8 answers), 4 validation prompts evaluated every 4 steps."""
    rng = random.Random(0)
    run_dir = root / name
    run_dir.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "job_id": f"ftjob-{name}",
        "run_dir": str(run_dir),
        "base_model_dir": str(model_dir),
        "train_file": write_jsonl(root / "train.jsonl", rows(16, rng)),
        "validation_file": write_jsonl(root / "valid.jsonl", rows(4, rng)),
        "method": "reinforcement",
        "n_epochs": 5,
        "batch_size": 4,
        "learning_rate": 1e-2,
        "seed": 1,
        "lora": LoraSpec(r=4, alpha=8),
        "max_seq_len": 256,
        "num_threads": 1,
        "dtype": "fp32",
        "grader": E_SHARE,
        "rft_group_size": 8,
        "rft_eval_samples": 2,
        "rft_eval_interval": 4,
        "rft_max_new_tokens": 12,
        "rft_temperature": 0.2,
    }
    return TrainingSpec(**(values | overrides))


def records(spec: TrainingSpec, kind: ProgressKind) -> list[dict[str, Any]]:
    return [r.data for r in ProgressReader(spec.run_path).read_new() if r.kind is kind]


# ------------------------------------------------------------------------------------------------ math
def test_advantages_are_normalised_within_each_group() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 3.0]])
    adv = group_advantages(rewards)
    assert torch.allclose(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-3)
    assert torch.equal(adv[1], torch.zeros(4))  # every answer scored the same: nothing to learn
    assert adv[2, 3] > 0 > adv[2, 0]
    assert torch.allclose(adv.mean(dim=1), torch.zeros(3), atol=1e-6)


def test_loss_is_the_clipped_surrogate_plus_the_kl_penalty() -> None:
    logp = torch.log(torch.tensor([0.5, 0.2, 0.2, 0.4]))
    old = torch.log(torch.tensor([0.5, 0.1, 0.1, 0.4]))  # ratios 1, 2, 2, 1
    ref = torch.log(torch.tensor([0.5, 0.2, 0.2, 0.1]))
    adv = torch.tensor([1.0, 1.0, -1.0, 1.0])

    loss, kl = grpo_token_loss(logp, old, ref, adv, clip_epsilon=0.2, kl_beta=0.5)

    assert kl[:3].abs().max() < 1e-6  # same as the reference: no KL
    expected_kl = 0.25 - torch.log(torch.tensor(0.25)) - 1  # k3: r - log r - 1 with r = ref / policy
    assert torch.isclose(kl[3], expected_kl)
    assert torch.isclose(loss[0], torch.tensor(-1.0))
    assert torch.isclose(loss[1], torch.tensor(-1.2))  # a positive advantage gains at most 1 + epsilon
    assert torch.isclose(loss[2], torch.tensor(2.0))  # a negative one is not clipped from below: min picks 2·A
    assert torch.isclose(loss[3], -1 + 0.5 * expected_kl)


def test_the_gradient_at_ratio_one_is_advantage_times_the_log_prob_gradient() -> None:
    logits = torch.randn(3, 5, requires_grad=True)
    tokens = torch.tensor([1, 2, 3])
    logp = torch.log_softmax(logits, -1)[torch.arange(3), tokens]
    adv = torch.tensor([2.0, -1.0, 0.5])
    loss, _ = grpo_token_loss(logp, logp.detach(), logp.detach(), adv, 0.2, 0.1)
    (grad,) = torch.autograd.grad(loss.sum(), logits, retain_graph=True)
    (want,) = torch.autograd.grad(-(adv * logp).sum(), logits)
    assert torch.allclose(grad, want, atol=1e-6)


def test_sequence_means_average_each_answer_over_its_own_tokens() -> None:
    values = torch.tensor([1.0, 3.0, 10.0, 0.0, 0.0, 6.0])
    assert sequence_means(values, [2, 1, 3]).tolist() == [2.0, 10.0, 2.0]


# ------------------------------------------------------------------------------------------------ sampling
def test_batched_cached_sampling_matches_a_plain_greedy_loop(tiny_model_dir: Path) -> None:
    torch.manual_seed(0)
    base = load_base_model(tiny_model_dir, torch.device("cpu"))
    use_varlen_attention(base)
    model = add_adapter(base, LoraSpec(r=4, alpha=8))
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.2)  # a trained-looking adapter: sampling must use it
    prompts = [[1, 5, 9, 30, 31], [1, 7], [1, 40, 41, 42, 43, 44, 45, 46]]
    stop = [2]

    got = sample_completions(model, prompts, max_new_tokens=6, stop_ids=stop, temperature=0, max_rows=2)

    for prompt, completion in zip(prompts, got, strict=True):
        ids = list(prompt)
        want: list[int] = []
        with torch.no_grad():
            for _ in range(6):
                token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
                want.append(token)
                ids.append(token)
                if token in stop:
                    break
        assert completion.tokens == want
        assert completion.finished is (want[-1] in stop)


# ------------------------------------------------------------------------------------------------ runs
@pytest.fixture(scope="module")
def completed(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainingSpec:
    spec = make_spec(tiny_model_dir, tmp_path_factory.mktemp("rft"), "reference")
    run(spec, ProgressWriter(spec.run_path))
    return spec


def test_a_run_raises_the_validation_reward(completed: TrainingSpec) -> None:
    started = records(completed, ProgressKind.STARTED)[0]
    steps = records(completed, ProgressKind.STEP)
    before = started["initial_validation"]["valid_reward_mean"]
    curve = [s["valid_reward_mean"] for s in steps if "valid_reward_mean" in s]
    print("validation reward:", before, curve)
    assert len(steps) == 20
    assert [s["step"] for s in steps if "valid_reward_mean" in s] == [4, 8, 12, 16, 20]
    assert curve[-1] > before + 0.05
    assert max(curve[-2:]) > 2 * before
    for key in ("train_reward_mean", "train_loss", "train_kl", "train_reasoning_tokens_mean", "train_sampling_s",
                "train_training_s", "iteration_s", "train_sample_parse_error_count"):  # fmt: skip
        assert all(key in s for s in steps)
    assert all(0 <= s["train_reasoning_tokens_mean"] <= completed.rft_max_new_tokens for s in steps)
    assert any(s["train_reasoning_tokens_mean"] > 0 for s in steps)
    assert all(s["full_valid_mean_parse_error"] == 0.0 for s in steps if "valid_reward_mean" in s)
    assert all("valid_reasoning_tokens_mean" not in s for s in steps if "valid_reward_mean" not in s)
    assert records(completed, ProgressKind.COMPLETED)
    checkpoint = records(completed, ProgressKind.CHECKPOINT)[-1]
    assert {"train_reward_mean", "valid_reward_mean"} <= set(checkpoint["metrics"])


def test_each_evaluation_writes_its_graded_answers_for_the_jobs_eval(completed: TrainingSpec) -> None:
    started = records(completed, ProgressKind.STARTED)[0]
    evaluated = {0: started["initial_validation"]["valid_reward_mean"]} | {
        s["step"]: s["valid_reward_mean"] for s in records(completed, ProgressKind.STEP) if "valid_reward_mean" in s
    }
    folder = control.RunFolder(completed.run_path)
    for step, reward in evaluated.items():
        graded = control.read_graded(folder.graded(step))
        assert len(graded) == 4 * 2  # every validation row, eval_samples answers each
        assert sorted((g["row"], g["sample"]) for g in graded) == [(r, k) for r in range(4) for k in range(2)]
        assert sum(g["reward"] for g in graded) / len(graded) == pytest.approx(reward, abs=1e-6)
        assert all(g["item"]["target"] == "e" and isinstance(g["output_text"], str) for g in graded)
        assert all(g["error"] is None and g["completion_tokens"] >= 0 for g in graded)


def test_checkpoints_carry_the_validation_reward_and_the_best_one_is_the_model(completed: TrainingSpec) -> None:
    saved = records(completed, ProgressKind.CHECKPOINT)
    rewards = {c["step"]: c["metrics"]["valid_reward_mean"] for c in saved}
    assert sorted(rewards) == [4, 8, 12, 16, 20]
    best = max(rewards, key=lambda step: (rewards[step], step))
    done = records(completed, ProgressKind.COMPLETED)[0]
    assert done.get("best_step", 20) == best
    model_weights = (completed.run_path / "adapter" / "adapter_model.safetensors").read_bytes()
    best_weights = (completed.run_path / "checkpoints" / f"step-{best}" / "adapter_model.safetensors").read_bytes()
    assert model_weights == best_weights
    kept = sorted(int(p.name[5:]) for p in (completed.run_path / "checkpoints").glob("step-*"))
    by_reward = sorted(rewards, key=lambda step: (rewards[step], step), reverse=True)[: completed.keep_checkpoints]
    assert set(kept) == set(by_reward) | {20}, (kept, rewards)


def test_pause_and_resume_give_the_same_rewards(
    completed: TrainingSpec, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(tiny_model_dir, tmp_path, "paused", n_epochs=2, rft_eval_interval=2)
    reference = make_spec(tiny_model_dir, tmp_path, "straight", n_epochs=2, rft_eval_interval=2)
    run(reference, ProgressWriter(reference.run_path))
    asked = {"n": 0}
    real = control.requested

    def pause_once(run_dir: Path) -> str | None:
        asked["n"] += 1
        return "pause" if asked["n"] == 3 else real(run_dir)

    monkeypatch.setattr(control, "requested", pause_once)
    run(spec, ProgressWriter(spec.run_path))
    paused = records(spec, ProgressKind.PAUSED)
    assert paused
    assert paused[0]["step"] == 2
    monkeypatch.setattr(control, "requested", real)
    resumed = TrainingSpec(**{**json.loads(spec.to_json()), "lora": spec.lora, "resume_from": paused[0]["state_path"]})
    run(resumed, ProgressWriter(spec.run_path))

    def rewards(s: TrainingSpec) -> list[float]:
        return [r["train_reward_mean"] for r in records(s, ProgressKind.STEP)]

    assert len(rewards(spec)) == 8
    assert rewards(spec) == pytest.approx(rewards(reference), abs=1e-6)
    # A checkpoint at every evaluation (every 2 steps), not only at epoch ends, each carrying its reward.
    saved = records(reference, ProgressKind.CHECKPOINT)
    assert [c["step"] for c in saved] == [2, 4, 6, 8]
    assert all("valid_reward_mean" in c["metrics"] for c in saved)


def test_continuous_fine_tuning_measures_kl_against_the_parent_adapter(
    completed: TrainingSpec, tiny_model_dir: Path, tmp_path: Path
) -> None:
    parent = completed.run_path / "adapter"
    spec = make_spec(tiny_model_dir, tmp_path, "child", n_epochs=1, init_adapter_dir=str(parent))
    run(spec, ProgressWriter(spec.run_path))
    steps = records(spec, ProgressKind.STEP)
    assert steps[0]["train_kl"] < 1e-6  # the first step starts at the parent: nothing to pay yet
    assert steps[-1]["train_kl"] > 0
    assert not (spec.run_path / "adapter" / "reference").exists()  # only the trained adapter is saved


def test_a_crashing_grader_ends_the_run_with_its_reason(tiny_model_dir: Path, tmp_path: Path) -> None:
    crashing = {
        "type": "python",
        "name": "boom",
        "source": "def grade(sample, item):\n    raise ValueError('kaboom')\n",
    }
    spec = make_spec(tiny_model_dir, tmp_path, "crash", grader=crashing, n_epochs=1)
    with pytest.raises(GraderFailure, match="kaboom"):
        run(spec, ProgressWriter(spec.run_path))


# ------------------------------------------------------------------------------------------------ response_format
ANSWER_SCHEMA = {"type": "object", "properties": {"solution": {"type": "string"}}, "required": ["solution"]}
SOLUTION_CHECK = {"type": "string_check", "name": "solution", "input": "{{sample.output_json.solution}}",
                  "reference": "{{item.answer}}", "operation": "eq"}  # fmt: skip


def test_answers_not_matching_the_response_format_score_zero_as_parse_errors() -> None:
    rewarder = Rewarder(SOLUTION_CHECK, concurrency=2, parse_json=True, response_schema=ANSWER_SCHEMA)
    try:
        results = rewarder.grade(
            ['{"solution": "4"}', '{"solution": "5"}', "the solution is 4", '{"answer": "4"}'], [{"answer": "4"}] * 4
        )
    finally:
        rewarder.close()
    assert [r.reward for r in results] == [1.0, 0.0, 0.0, 0.0]
    assert [r.metadata.errors.sample_parse_error for r in results] == [False, False, True, True]
    assert "not valid JSON" in (results[2].detail or "")
    assert "'solution' is a required property" in (results[3].detail or "")


def test_parse_errors_never_fail_the_run_but_grader_failures_do() -> None:
    watch = _ErrorWatch()
    grader = Rewarder(SOLUTION_CHECK, concurrency=1, parse_json=True).grader
    unparsable = [parse_failure(grader, "not JSON")] * 4
    for _ in range(MAX_BAD_STEPS + 1):
        assert watch.check(unparsable, "a training step", training=True) == 0.0
    errors = GraderErrors(python_grader_runtime_error=True)
    broken = GraderResult(reward=0.0, metadata=GraderMetadata(name="x", type="python", errors=errors))
    with pytest.raises(GraderFailure, match="every grading"):
        watch.check([broken] * 2, "a training step", training=True)


def test_a_rounds_metrics_hold_each_multi_childs_mean_reward_and_every_error_kind() -> None:
    def result(reward: float, subs: dict[str, float], **errors: bool) -> GraderResult:
        meta = GraderMetadata(name="both", type="multi", errors=GraderErrors(**errors), execution_time=0.5)
        return GraderResult(reward=reward, metadata=meta, sub_rewards=subs)

    metrics = grading_metrics([
        result(1.0, {"exact": 1.0, "close": 1.0}),
        result(0.5, {"exact": 0.0, "close": 1.0}),
        result(0.0, {"exact": 0.0, "close": 0.0}, sample_parse_error=True),
        result(0.0, {}, formula_parse_error=True),  # no child ran: each counts 0
    ])  # fmt: skip
    assert metrics["reward_mean:exact"] == 0.25
    assert metrics["reward_mean:close"] == 0.5
    assert (metrics["sample_parse_error_mean"], metrics["sample_parse_error_count"]) == (0.25, 1.0)
    assert (metrics["formula_parse_error_mean"], metrics["formula_parse_error_count"]) == (0.25, 1.0)
    assert (metrics["python_grader_runtime_error_mean"], metrics["other_error_count"]) == (0.0, 0.0)
    assert metrics["grader_latency_mean"] == 0.5


def test_lean_sampling_matches_the_trainers_own_model_token_for_token(tiny_model_dir: Path) -> None:
    """The lean sampler (a copy of the base model, the policy's live LoRA) gives the greedy answers of the
    trained model itself, groups of equal prompts included; after an update it follows the new weights."""
    torch.manual_seed(0)
    base = load_base_model(tiny_model_dir, torch.device("cpu"))
    use_varlen_attention(base)
    model = add_adapter(base, LoraSpec(r=4, alpha=8))
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.2)
    sampler = LeanSampler.build(tiny_model_dir, torch.float32, torch.device("cpu"))
    assert sampler is not None
    prompts = [[1, 5, 9, 30, 31]] * 3 + [[1, 7]] * 2 + [[1, 40, 41, 42, 43, 44, 45, 46]]
    stop = [2]

    def both() -> tuple[list[list[int]], list[list[int]]]:
        lean = sampler.sample(model, prompts, max_new_tokens=8, stop_ids=stop, temperature=0, max_rows=4)
        assert lean is not None
        plain = sample_completions(model, prompts, max_new_tokens=8, stop_ids=stop, temperature=0)
        return [c.tokens for c in lean], [c.tokens for c in plain]

    lean, plain = both()
    assert lean == plain
    assert lean[0] == lean[1] == lean[2]  # one prefill shared by the group, the same greedy answer
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)  # the optimizer moved the adapter
    moved, plain_moved = both()
    assert moved == plain_moved
    assert moved != lean, "the sampler reads the adapter's current weights"


def test_prompt_trees_give_each_answer_the_log_probs_and_gradients_it_gets_alone(tiny_model_dir: Path) -> None:
    """A group's answers share one reading of their prompt (``collate_trees``): every answer token's
    log-probability and the adapter's gradient equal those of the answers packed one by one, with fewer tokens."""
    torch.manual_seed(0)
    base = load_base_model(tiny_model_dir, torch.device("cpu"))
    use_varlen_attention(base)
    model = add_adapter(base, LoraSpec(r=4, alpha=8))
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.2)
    setup = Setup(torch.device("cpu"), None, 256, 4096)
    trees = [([1, 5, 9, 30, 31], [[7, 8, 2], [9], [10, 11, 12, 13]]), ([1, 7], [[40, 41], [42, 2]])]
    alone = collate_flat([_sequence(prompt, answer) for prompt, answers in trees for answer in answers])
    shared = collate_trees(trees)
    assert shared.real_tokens < alone.real_tokens

    def log_probs_and_grads(batch: PackedBatch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        values = _token_log_probs(model, batch, setup)
        values.sum().backward()
        return values.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    want, want_grads = log_probs_and_grads(alone)
    got, got_grads = log_probs_and_grads(shared)
    assert got.shape == want.shape == (12,)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-5)


def test_a_group_too_large_for_one_micro_batch_is_split_with_its_prompt() -> None:
    prompts = [Prompt(input_ids=[1, 2, 3, 4], item={}, line=1), Prompt(input_ids=[1, 9], item={}, line=2)]
    answers = [[5] * 6, [6] * 6, [7] * 6, [8, 2], [9, 2], [10, 2]]
    setup = Setup(torch.device("cpu"), None, 256, micro_batch_tokens=12)
    batches = list(_micro_batches(prompts, answers, 3, setup))
    assert [index for index, _ in batches] == [[0], [1], [2], [3, 4, 5]]
    assert [batch.real_tokens for _, batch in batches] == [9, 9, 9, 7]  # the prompt (less its last token) in each
    assert [batch.trainable_tokens for _, batch in batches] == [6, 6, 6, 6]
