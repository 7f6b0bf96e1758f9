"""RFT sampling constrained to ``response_format`` (``training.constrained``): with random tiny-model weights,
which never write JSON on their own, every answer of the lean and the fallback sampler is JSON matching the
schema and ends with the end-of-turn token; a run grades such answers with ``output_json`` and counts no parse
error.

Run: .venv/bin/pytest tests/unit/training/test_rft_constrained.py -q  (~15 s on 2 cores)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
from peft import PeftModel

from tests.unit.training.test_rft import make_spec, records
from tunery.catalog.chat_tokenizer import ChatTokenizer
from tunery.graders import ResponseFormat
from tunery.training import progress as control
from tunery.training.constrained import SchemaConstraint
from tunery.training.lean_rollouts import LeanSampler
from tunery.training.loop import load_base_model, run
from tunery.training.lora import add_adapter
from tunery.training.packing import use_varlen_attention
from tunery.training.progress import ProgressKind, ProgressWriter
from tunery.training.rollouts import Completion, sample_completions
from tunery.training.spec import LoraSpec

# Every value bounded, so a finished answer fits in MAX_NEW_TOKENS even spelled one byte per token.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "answer": {"type": "integer", "minimum": 0, "maximum": 99},
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green"]},
        "name": {"type": "string", "maxLength": 4},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
    },
    "required": ["answer", "ok", "color", "name", "tags"],
    "additionalProperties": False,
}
MAX_NEW_TOKENS = 120


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> ChatTokenizer:
    return ChatTokenizer.from_dir(tiny_model_dir)


@pytest.fixture(scope="module")
def policy(tiny_model_dir: Path) -> PeftModel:
    torch.manual_seed(0)
    base = load_base_model(tiny_model_dir, torch.device("cpu"))
    use_varlen_attention(base)
    model = add_adapter(base, LoraSpec(r=4, alpha=8))
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.2)  # a trained-looking adapter
    return model


@pytest.fixture(scope="module")
def lean(tiny_model_dir: Path) -> LeanSampler:
    sampler = LeanSampler.build(tiny_model_dir, torch.float32, torch.device("cpu"))
    assert sampler is not None
    return sampler


def prompts(tokenizer: ChatTokenizer) -> list[list[int]]:
    def rendered(text: str) -> list[int]:
        return tokenizer.encode(tokenizer.render([{"role": "user", "content": text}], add_generation_prompt=True))

    return [rendered("hello today")] * 4 + [rendered("the capital of France")] * 4  # two GRPO groups


def sample(
    sampler: LeanSampler | None, model: PeftModel, rows: list[list[int]], stops: tuple[int, ...], **kwargs: Any
) -> list[Completion]:
    """With the lean sampler, else with the trainer's own model (``rollouts.sample_completions``)."""
    if sampler is not None:
        got = sampler.sample(model, rows, max_new_tokens=MAX_NEW_TOKENS, stop_ids=stops, max_rows=5, **kwargs)
        assert got is not None
        return got
    return sample_completions(model, rows, max_new_tokens=MAX_NEW_TOKENS, stop_ids=stops, max_rows=5, **kwargs)


@pytest.mark.parametrize("kind", ["lean", "plain"])
def test_every_answer_sampled_under_a_schema_is_json_matching_it(
    kind: str, tokenizer: ChatTokenizer, policy: PeftModel, lean: LeanSampler
) -> None:
    sampler = lean if kind == "lean" else None
    stops = tokenizer.stop_token_ids
    constraint = SchemaConstraint.compile(SCHEMA, tokenizer, stops)
    assert constraint is not None
    rows = prompts(tokenizer)
    check = ResponseFormat(SCHEMA)

    def texts(completions: list[Completion]) -> list[str]:
        return [tokenizer.decode([t for t in c.tokens if t not in stops]) for c in completions]

    torch.manual_seed(1)
    free = sample(sampler, policy, rows, stops, temperature=1.0)
    assert all(check.violation(text) is not None for text in texts(free)), "random weights never write JSON"

    torch.manual_seed(1)
    constrained = sample(sampler, policy, rows, stops, temperature=1.0, constraint=constraint)
    answers = texts(constrained)
    print(answers)
    for completion, text in zip(constrained, answers, strict=True):
        assert completion.finished, text
        assert completion.tokens[-1] in stops  # the JSON, then the end of turn
        assert [t for t in completion.tokens[:-1] if t in stops] == []
        jsonschema.validate(json.loads(text), SCHEMA)
        assert check.violation(text) is None
    assert len(set(answers)) > 1, "each row draws its own answer"


def test_greedy_constrained_answers_are_the_same_from_both_samplers(
    tokenizer: ChatTokenizer, policy: PeftModel, lean: LeanSampler
) -> None:
    stops = tokenizer.stop_token_ids
    constraint = SchemaConstraint.compile(SCHEMA, tokenizer, stops)
    rows = prompts(tokenizer)
    fast = sample(lean, policy, rows, stops, temperature=0, constraint=constraint)
    plain = sample(None, policy, rows, stops, temperature=0, constraint=constraint)
    assert [c.tokens for c in fast] == [c.tokens for c in plain]
    assert all(ResponseFormat(SCHEMA).violation(tokenizer.decode(c.tokens[:-1])) is None for c in fast)


def test_the_mask_leaves_finished_rows_alone_and_forbids_ids_beyond_the_tokenizer(tokenizer: ChatTokenizer) -> None:
    constraint = SchemaConstraint.compile({"type": "object"}, tokenizer, tokenizer.stop_token_ids)
    assert constraint is not None
    rows = constraint.rows(2)
    logits = torch.zeros(2, tokenizer.vocab_size + 40)  # an embedding padded past the vocabulary
    masked = rows.mask(logits, [False, True])
    allowed = torch.isfinite(masked[0]).nonzero().flatten().tolist()
    assert allowed
    assert all(tokenizer.decode([t]).startswith("{") for t in allowed)  # compact JSON: no leading blank
    assert max(allowed) < tokenizer.vocab_size
    vocab = tokenizer.vocab_size
    assert torch.equal(masked[1, :vocab], logits[1, :vocab]), "a finished row's draw is ignored: left as it is"
    assert not set(allowed) & set(tokenizer.stop_token_ids), "an empty answer is not JSON: no end of turn yet"


def test_a_schema_llguidance_cannot_compile_leaves_sampling_unconstrained(tokenizer: ChatTokenizer) -> None:
    dangling = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
    assert SchemaConstraint.compile(dangling, tokenizer, tokenizer.stop_token_ids) is None


# Grader: string_check on output_json.s; a short schema so answers fit the 16-token budget.
SHORT_SCHEMA = {
    "type": "object",
    "properties": {"s": {"enum": ["e", "f"]}},
    "required": ["s"],
    "additionalProperties": False,
}
S_CHECK = {"type": "string_check", "name": "s", "input": "{{sample.output_json.s}}", "reference": "{{item.target}}",
           "operation": "eq"}  # fmt: skip


def test_a_run_with_a_response_format_grades_answers_that_all_parse(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = make_spec(tiny_model_dir, tmp_path, "formatted", n_epochs=1, rft_group_size=2, rft_eval_interval=4,
                     grader=S_CHECK, rft_response_schema=SHORT_SCHEMA, rft_max_new_tokens=16)  # fmt: skip
    run(spec, ProgressWriter(spec.run_path))
    steps = records(spec, ProgressKind.STEP)
    assert len(steps) == 4
    assert all(s["train_parse_error_mean"] == 0.0 and s["train_grader_error_mean"] == 0.0 for s in steps)
    assert steps[-1]["valid_parse_error_mean"] == 0.0
    graded = control.read_graded(control.RunFolder(spec.run_path).graded(4))
    assert len(graded) == 4 * 2
    for answer in graded:
        value = json.loads(answer["output_text"])  # what the grader read as sample.output_json
        jsonschema.validate(value, SHORT_SCHEMA)
        assert answer["finished"]
        assert not answer["parse_error"]
        assert answer["reward"] == (1.0 if value["s"] == "e" else 0.0)
    assert records(spec, ProgressKind.COMPLETED)
