"""DPO on the tiny Llama: the head's log-probabilities and their gradient, packed pairs scored as if alone, the
loss at step 0, micro-batching that leaves the gradient alone, a run that learns the preferred style on held-out
pairs, pause + resume on the same reference, and SFT-then-DPO against the parent.

Run: .venv/bin/pytest tests/unit/training/test_dpo.py -q  (~20 s on 2 cores)
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests import precision
from tunery.catalog.chat_tokenizer import ChatTokenizer
from tunery.domain.checkpoints import DPO_METRIC_COLUMNS
from tunery.training import head, packing
from tunery.training import progress as control
from tunery.training.dpo import (
    REFERENCE_FILE,
    collate_pairs,
    dpo_evaluate,
    dpo_train_step,
    sequence_log_probs,
    with_reference,
)
from tunery.training.examples import IGNORE_INDEX
from tunery.training.loop import Setup, load_base_model, run
from tunery.training.lora import add_adapter
from tunery.training.packing import use_varlen_attention
from tunery.training.preferences import encode_pair, read_pairs
from tunery.training.progress import ProgressKind, ProgressReader, ProgressWriter
from tunery.training.spec import LoraSpec, TrainingSpec

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "ate", "fish", "with", "two", "dogs", "that"]
WORDS += ["barked", "at", "the", "moon"]
CPU = Setup(device=torch.device("cpu"), amp=precision.amp(precision.DEFAULT), max_seq_len=256, micro_batch_tokens=4096)
BETA = 0.1


def pair(rng: random.Random) -> dict[str, Any]:
    """The preferred reply opens with 'great joy', the rejected one with 'no no no'; the rest is the same."""
    rest = " ".join(rng.choices(WORDS, k=rng.randint(2, 8)))
    prompt = " ".join(rng.choices(WORDS, k=rng.randint(2, 10)))
    return {
        "input": {"messages": [{"role": "user", "content": prompt}]},
        "preferred_output": [{"role": "assistant", "content": f"great joy {rest}"}],
        "non_preferred_output": [{"role": "assistant", "content": f"no no no {rest}"}],
    }


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def make_spec(model_dir: Path, root: Path, name: str, **overrides: Any) -> TrainingSpec:
    """24 training pairs, 3 epochs of 3 steps (batch 8), 8 held-out validation pairs."""
    rng = random.Random(0)
    run_dir = root / name
    run_dir.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "job_id": f"ftjob-{name}",
        "run_dir": str(run_dir),
        "base_model_dir": str(model_dir),
        "train_file": write_jsonl(root / "train.jsonl", [pair(rng) for _ in range(24)]),
        "validation_file": write_jsonl(root / "valid.jsonl", [pair(rng) for _ in range(8)]),
        "method": "dpo",
        "n_epochs": 3,
        "batch_size": 8,
        "learning_rate": 2e-2,
        "seed": 5,
        "lora": LoraSpec(r=4, alpha=8),
        "max_seq_len": 256,
        "metrics_every": 3,
        "num_threads": 1,
        "dpo_beta": BETA,
        "dtype": precision.DEFAULT,
    }
    return TrainingSpec(**(values | overrides))


def of_kind(spec: TrainingSpec, kind: ProgressKind) -> list[dict[str, Any]]:
    return [r.data for r in ProgressReader(spec.run_path).read_new() if r.kind is kind]


def adapted_model(model_dir: Path, *, nonzero: bool = False) -> Any:
    base = load_base_model(model_dir, CPU.device)
    use_varlen_attention(base)
    model = add_adapter(base, LoraSpec(r=4, alpha=8))
    if nonzero:  # a trained-looking adapter: LoRA B non-zero, so the policy differs from the base
        torch.manual_seed(1)
        for p in model.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.05)
    return model


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def setup_in(dtype: str, micro_batch_tokens: int = 4096, layout: Any = "flat") -> Setup:
    return Setup(CPU.device, precision.amp(dtype), 256, micro_batch_tokens, layout)  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=precision.sensitive())
def completed(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> TrainingSpec:
    """One uninterrupted DPO run, in each precision (``tests.precision``)."""
    spec = make_spec(tiny_model_dir, tmp_path_factory.mktemp("dpo"), "reference", dtype=request.param)
    run(spec, ProgressWriter(spec.run_path))
    return spec


def test_head_log_probs_and_their_gradient_match_plain_log_softmax(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(head, "LOGIT_CHUNK_ELEMENTS", 3 * 50)  # chunks of 3 positions: several chunks
    torch.manual_seed(0)
    hidden = torch.randn(10, 16, requires_grad=True)
    weight = torch.randn(50, 16)
    targets = torch.randint(0, 50, (10,))
    upstream = torch.randn(10)

    got = head.head_log_probs(hidden, weight, targets, None)
    (got * upstream).sum().backward()
    assert hidden.grad is not None
    grad_got = hidden.grad.clone()

    hidden.grad = None
    expected = torch.log_softmax(hidden @ weight.T, dim=-1).gather(1, targets[:, None]).squeeze(1)
    (expected * upstream).sum().backward()
    torch.testing.assert_close(got, expected.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_got, hidden.grad, atol=1e-5, rtol=1e-5)


def test_a_pair_trains_only_on_the_output_and_keeps_input_assistant_turns_as_context(tiny_model_dir: Path) -> None:
    tokenizer = ChatTokenizer.from_dir(tiny_model_dir)
    record = {
        "input": {
            "messages": [
                {"role": "user", "content": "the cat"},
                {"role": "assistant", "content": "sat on a mat"},
                {"role": "user", "content": "and then"},
            ]
        },
        "preferred_output": [{"role": "assistant", "content": "great joy"}],
        "non_preferred_output": [{"role": "assistant", "content": "no no no"}],
    }
    encoded, truncated = encode_pair(record, tokenizer, 256)

    assert not truncated
    for side, reply in ((encoded.chosen, "great joy"), (encoded.rejected, "no no no")):
        trained = [t for t, label in zip(side.input_ids, side.labels, strict=True) if label != IGNORE_INDEX]
        assert tokenizer.decode(trained).strip().startswith(reply)
        assert "sat on a mat" not in tokenizer.decode(trained)
    prompt_length = len(tokenizer.encode_chat(record["input"]["messages"]).input_ids)
    assert encoded.chosen.input_ids[:prompt_length] == encoded.rejected.input_ids[:prompt_length]


@pytest.mark.parametrize("dtype", precision.sensitive())
def test_packed_sides_score_as_they_would_alone(tiny_model_dir: Path, tmp_path: Path, dtype: str) -> None:
    spec = make_spec(tiny_model_dir, tmp_path, "scores")
    pairs = read_pairs(Path(spec.train_file), ChatTokenizer.from_dir(tiny_model_dir), 256)[:5]
    model = adapted_model(tiny_model_dir, nonzero=True)
    model.eval()
    amp: Any = precision.amp(dtype)
    autocast = torch.autocast("cpu", dtype=amp) if amp is not None else contextlib.nullcontext()
    # a side's log-prob sums ~20 token log-probs of ~-6: fp32 agrees to 1e-4, bf16 to ~0.1 (eps x the sum)
    atol, rtol = (1e-4, 1e-5) if dtype == "fp32" else (0.1, precision.REL["bf16"])
    with torch.no_grad():
        packed = sequence_log_probs(model, collate_pairs(pairs, setup_in(dtype)), amp)
        alone = []
        for p in pairs:
            for side in (p.chosen, p.rejected):
                with autocast:
                    logits = model(input_ids=torch.tensor([side.input_ids])).logits[0, :-1].float()
                targets = torch.tensor(side.labels[1:])
                keep = targets != IGNORE_INDEX
                alone.append(torch.log_softmax(logits[keep], -1).gather(1, targets[keep][:, None]).sum())
    torch.testing.assert_close(packed, torch.stack(alone), atol=atol, rtol=rtol)
    masked = setup_in(dtype, layout="mask")
    with torch.no_grad():
        torch.testing.assert_close(
            sequence_log_probs(model, collate_pairs(pairs, masked), amp), packed, atol=atol, rtol=rtol
        )


@pytest.mark.parametrize("dtype", precision.sensitive())
def test_before_training_the_policy_is_the_reference(tiny_model_dir: Path, tmp_path: Path, dtype: str) -> None:
    spec = make_spec(tiny_model_dir, tmp_path, "start")
    model = adapted_model(tiny_model_dir)
    setup = setup_in(dtype)
    pairs = with_reference(
        model, read_pairs(Path(spec.validation_file or ""), ChatTokenizer.from_dir(tiny_model_dir), 256), setup
    )

    metrics = dpo_evaluate(model, pairs, setup, BETA)

    assert metrics["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["reward_accuracy"] == 0.0
    assert metrics["reward_margin"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("dtype", precision.sensitive())
def test_micro_batching_leaves_the_dpo_gradient_alone(
    tiny_model_dir: Path, tmp_path: Path, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The layouts compared here must attend in the same precision: the flat one may run short examples' attention
    # in fp32 where that is faster (packing.short_attention_in_fp32), the mask one always attends in bf16.
    monkeypatch.setattr(packing, "short_attention_in_fp32", lambda query, key: False)
    spec = make_spec(tiny_model_dir, tmp_path, "accumulate")
    model = adapted_model(tiny_model_dir, nonzero=True)
    pairs = read_pairs(Path(spec.train_file), ChatTokenizer.from_dir(tiny_model_dir), 256)[:6]
    # the base as reference: non-zero rewards
    pairs = with_reference(adapted_model(tiny_model_dir), pairs, setup_in(dtype))
    results = []
    for layout, budget in (("flat", 4096), ("flat", 40), ("mask", 4096)):
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        metrics, tokens = dpo_train_step(model, optimizer, scheduler, pairs, setup_in(dtype, budget, layout), BETA, 1e9)
        results.append((metrics, [p.grad.clone() for p in model.parameters() if p.requires_grad]))
        assert tokens == sum(len(p) for p in pairs)
    first_metrics, first_grads = results[0]
    assert first_metrics["loss"] != pytest.approx(math.log(2), abs=1e-3), "the rewards are not zero here"
    for metrics, grads in results[1:]:
        for key, value in first_metrics.items():
            if dtype == "fp32":
                assert metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6)
            else:  # rewards: beta x differences of log-prob sums rounded in bf16 (measured: margin 4e-4 relative)
                assert metrics[key] == pytest.approx(value, rel=2e-3, abs=1e-4), key
        for a, b in zip(first_grads, grads, strict=True):
            if dtype == "fp32":
                torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
            else:
                assert ((a - b).norm() / a.norm()).item() < precision.GRADIENT_REL_BF16


def test_a_dpo_run_learns_the_preferred_style_on_held_out_pairs(completed: TrainingSpec) -> None:
    started = of_kind(completed, ProgressKind.STARTED)[0]
    assert started["method"] == "dpo"
    assert started["examples"] == 24
    before = started["initial_validation"]
    assert before["full_valid_reward_accuracy"] == 0.0
    assert before["full_valid_loss"] == pytest.approx(math.log(2), abs=1e-6)

    steps = of_kind(completed, ProgressKind.STEP)
    assert [s["step"] for s in steps] == list(range(1, 10))
    assert steps[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-6), "step 1 starts at the reference"
    assert steps[-1]["train_loss"] < 0.5
    last = steps[-1]
    assert last["full_valid_reward_accuracy"] >= 0.875, last
    assert last["full_valid_reward_margin"] > 0
    assert last["train_chosen_reward"] > last["train_rejected_reward"]
    assert [s["step"] for s in steps if "valid_loss" in s] == [3, 6, 9]

    checkpoints = of_kind(completed, ProgressKind.CHECKPOINT)
    assert [c["step"] for c in checkpoints] == [3, 6, 9]
    assert set(checkpoints[-1]["metrics"]) <= set(DPO_METRIC_COLUMNS)
    assert checkpoints[-1]["metrics"]["full_valid_reward_accuracy"] == last["full_valid_reward_accuracy"]
    assert of_kind(completed, ProgressKind.COMPLETED)[0]["step"] == 9
    assert (completed.run_path / REFERENCE_FILE).is_file()


def test_a_paused_dpo_run_resumes_on_the_same_reference_and_curve(
    completed: TrainingSpec, tiny_model_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(tiny_model_dir, tmp_path, "paused", dtype=completed.dtype)

    class PauseAt4(ProgressWriter):
        def emit(self, kind: ProgressKind, **data: Any) -> None:
            super().emit(kind, **data)
            if kind is ProgressKind.STEP and data["step"] == 4:
                control.request(spec.run_path, "pause")

    run(spec, PauseAt4(spec.run_path))
    (paused,) = of_kind(spec, ProgressKind.PAUSED)
    assert paused["step"] == 4
    control.clear_request(spec.run_path)
    resumed = TrainingSpec(**{**json.loads(spec.to_json()), "lora": spec.lora, "resume_from": paused["state_path"]})
    run(resumed, ProgressWriter(spec.run_path))

    reference = {s["step"]: s["train_loss"] for s in of_kind(completed, ProgressKind.STEP)}
    after = {s["step"]: s["train_loss"] for s in of_kind(spec, ProgressKind.STEP) if s["step"] > 4}
    assert list(after) == [5, 6, 7, 8, 9]
    for step, loss in after.items():
        assert loss == reference[step], "the same computation in the same precision: exactly equal"
    assert of_kind(spec, ProgressKind.STARTED)[-1]["initial_validation"] == {}, "no step 0 when resuming"


def test_sft_then_dpo_compares_against_the_supervised_parent(tiny_model_dir: Path, tmp_path: Path) -> None:
    parent_data = [
        {"messages": [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "no no no the cat"}]}
    ] * 12
    parent = make_spec(
        tiny_model_dir,
        tmp_path,
        "sft",
        method="supervised",
        train_file=write_jsonl(tmp_path / "sft.jsonl", parent_data),
        validation_file=None,
        n_epochs=2,
        batch_size=4,
    )
    run(parent, ProgressWriter(parent.run_path))
    parent_adapter = of_kind(parent, ProgressKind.COMPLETED)[0]["adapter_path"]
    child = make_spec(tiny_model_dir, tmp_path, "dpo-child", init_adapter_dir=parent_adapter, n_epochs=1)
    fresh = make_spec(tiny_model_dir, tmp_path, "dpo-fresh", n_epochs=1)
    run(child, ProgressWriter(child.run_path))
    run(fresh, ProgressWriter(fresh.run_path))

    child_ref = json.loads((child.run_path / REFERENCE_FILE).read_text())["train"]
    fresh_ref = json.loads((fresh.run_path / REFERENCE_FILE).read_text())["train"]
    # the parent learnt to say "no no no": the reference (the parent) likes the rejected side far more
    assert sum(r for _, r in child_ref) > sum(r for _, r in fresh_ref) + 10
    assert of_kind(child, ProgressKind.STEP)[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-6)
    config = json.loads((child.run_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
