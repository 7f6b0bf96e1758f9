"""Graders give exact rewards on known cases and reject bad definitions with the offending param."""

from __future__ import annotations

from typing import Any

import pytest

from tunery.graders import (
    ChatMessage,
    InvalidGrader,
    JudgeReply,
    JudgeSampling,
    JudgeUsage,
    parse_grader,
    passes,
    run_grader,
    sample_from_text,
    validate_grader,
)
from tunery.graders.model_graders import parse_label, parse_score


def _run(raw: dict[str, Any], answer: str, item: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    grader = parse_grader(raw)
    validate_grader(grader)
    return run_grader(grader, sample=sample_from_text(answer), item=item or {}, **kwargs)


def _check(operation: str, reference: str = "{{item.answer}}") -> dict[str, Any]:
    return {
        "type": "string_check",
        "name": "check",
        "input": "{{sample.output_text}}",
        "reference": reference,
        "operation": operation,
    }


@pytest.mark.parametrize(
    ("operation", "answer", "expected"),
    [
        ("eq", "Paris", 1.0),
        ("eq", "paris", 0.0),
        ("ne", "paris", 1.0),
        ("neq", "Paris", 0.0),
        ("like", "It is Paris.", 1.0),
        ("like", "It is PARIS.", 0.0),
        ("ilike", "It is PARIS.", 1.0),
        ("ilike", "London", 0.0),
    ],
)
def test_string_check_operations(operation: str, answer: str, expected: float) -> None:
    result = _run(_check(operation), answer, {"answer": "Paris"})
    assert result.reward == expected
    assert not result.errored
    assert result.metadata.type == "string_check"
    assert result.metadata.name == "check"
    assert result.metadata.token_usage is None


def test_neq_is_echoed_as_ne() -> None:
    assert parse_grader(_check("neq")).model_dump(exclude_unset=True)["operation"] == "ne"


def test_templates_render_nested_paths_and_json_values() -> None:
    raw = _check("eq", "{{ item.meta.tags[1] }}|{{item.meta.n}}|{{item.meta.list}}")
    result = _run(raw, 'b|3|[1,"x"]', {"meta": {"tags": ["a", "b"], "n": 3, "list": [1, "x"]}})
    assert result.reward == 1.0


def test_missing_item_field_is_an_invalid_variable_error_not_a_crash() -> None:
    result = _run(_check("eq"), "Paris", {"other": 1})
    assert result.reward == 0.0
    assert result.metadata.errors.invalid_variable_error
    assert result.detail == "The template variable 'item.answer' does not exist in this item."
    assert "detail" not in result.model_dump()


def test_output_json_of_a_non_json_sample_is_a_sample_parse_error() -> None:
    result = _run(_check("eq", "{{sample.output_json.city}}"), "not json")
    assert result.metadata.errors.sample_parse_error
    assert _run({**_check("eq", "Paris"), "input": "{{sample.output_json.city}}"}, '{"city": "Paris"}').reward == 1.0


@pytest.mark.parametrize(
    ("metric", "answer", "reference", "expected"),
    [
        ("fuzzy_match", "the cat sat on the mat", "the cat sat on the mat", 1.0),
        ("fuzzy_match", "Hello World!", "hello world", 1.0),
        ("fuzzy_match", "abc", "xyz", 0.0),
        ("bleu", "the cat sat on the mat", "the cat sat on the mat", 1.0),
        ("gleu", "the cat sat on the mat", "the cat sat on the mat", 1.0),
        ("gleu", "a b c d", "a b x y", 0.3),  # 1-4-grams: 3 of 10 match on each side
        ("rouge_1", "the cat sat", "the cat ran", 2 / 3),
        ("rouge_2", "the cat sat", "the cat ran", 0.5),
        ("rouge_3", "the cat sat", "the cat ran", 0.0),
        ("rouge_l", "a b c d", "a x c d", 0.75),
        ("rouge_5", "one two three four five", "one two three four five", 1.0),
        ("meteor", "", "anything", 0.0),
    ],
)
def test_text_similarity_metrics(metric: str, answer: str, reference: str, expected: float) -> None:
    raw = {
        "type": "text_similarity",
        "name": "sim",
        "input": "{{sample.output_text}}",
        "reference": reference,
        "evaluation_metric": metric,
    }
    assert _run(raw, answer).reward == pytest.approx(expected, abs=1e-9)


def test_meteor_rewards_stems_without_wordnet() -> None:
    raw = {"type": "text_similarity", "name": "m", "input": "{{sample.output_text}}", "reference": "cats running"}
    exact = _run({**raw, "evaluation_metric": "meteor"}, "cats running").reward
    stemmed = _run({**raw, "evaluation_metric": "meteor"}, "cat run").reward
    unrelated = _run({**raw, "evaluation_metric": "meteor"}, "dog sleeps").reward
    assert exact > 0.9
    assert 0.3 < stemmed <= exact
    assert unrelated == 0.0


def test_cosine_without_an_embedding_model_is_a_400() -> None:
    raw = {"type": "text_similarity", "name": "c", "input": "a", "reference": "b", "evaluation_metric": "cosine"}
    with pytest.raises(InvalidGrader) as caught:
        validate_grader(parse_grader(raw))
    assert caught.value.param == "grader.evaluation_metric"
    assert "embedding model" in caught.value.message


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ({"type": "bogus", "name": "x"}, "grader.type"),
        ("not an object", "grader"),
        ({**_check("eq"), "operation": "startswith"}, "grader.operation"),
        ({k: v for k, v in _check("eq").items() if k != "reference"}, "grader.reference"),
        ({**_check("eq"), "extra": 1}, "grader.extra"),
        (
            {"type": "text_similarity", "name": "s", "input": "a", "reference": "b", "evaluation_metric": "bleurt"},
            "grader.evaluation_metric",
        ),
        ({**_check("eq"), "input": "{{ output_text }}"}, "grader.input"),
        ({**_check("eq"), "input": "{{sample.answer}}"}, "grader.input"),
        ({**_check("eq"), "input": "{{item}}"}, "grader.input"),
        (
            {"type": "score_model", "name": "s", "model": "m", "input": [{"role": "user", "content": "x"}],
             "range": [1, 0]},
            "grader.range",
        ),
        (
            {"type": "label_model", "name": "l", "model": "m", "input": [{"role": "user", "content": "x"}],
             "labels": ["a"], "passing_labels": ["b"]},
            "grader.passing_labels",
        ),
        ({"type": "python", "name": "p", "source": "def grade(:"}, "grader.source"),
        ({"type": "python", "name": "p", "source": "def other(a, b): return 1"}, "grader.source"),
        ({"type": "python", "name": "p", "source": "def grade(a): return 1"}, "grader.source"),
        ({"type": "python", "name": "p", "source": "def grade(s, i): return 1", "image_tag": "x"}, "grader.image_tag"),
    ],
)  # fmt: skip
def test_bad_definitions_name_the_param(raw: Any, param: str) -> None:
    with pytest.raises(InvalidGrader) as caught:
        validate_grader(parse_grader(raw))
    assert caught.value.param == param
    assert caught.value.message


def test_item_fields_are_checked_when_known() -> None:
    grader = parse_grader(_check("eq", "{{item.answer}}"))
    validate_grader(grader, item_fields={"answer"})
    with pytest.raises(InvalidGrader) as caught:
        validate_grader(grader, item_fields={"question"}, param="testing_criteria[0]")
    assert caught.value.param == "testing_criteria[0].reference"
    assert "'answer'" in caught.value.message


def _multi(formula: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "multi",
        "name": "combo",
        "graders": {
            "exact": _check("eq", "Paris"),
            "fuzzy": {"type": "text_similarity", "name": "fuzzy", "input": "{{sample.output_text}}",
                      "reference": "Paris", "evaluation_metric": "fuzzy_match"},
        },
        "calculate_output": formula,
        **extra,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("formula", "expected"),
    [
        ("0.5 * exact + 0.5 * fuzzy", 1.0),
        ("(exact + fuzzy) / 2", 1.0),
        ("2 ^ 3 ^ 2 / 512", 1.0),
        ("-exact + 3", 2.0),
        ("max(exact, 0.2) + min(fuzzy, 0.1) + abs(-1) + floor(1.7) + ceil(0.2)", 4.1),
        ("sqrt(4) * exp(0) + log(1)", 2.0),
    ],
)
def test_multi_formula(formula: str, expected: float) -> None:
    result = _run(_multi(formula), "Paris")
    assert result.reward == pytest.approx(expected)
    assert result.metadata.scores == {"exact": 1.0, "fuzzy": 1.0}
    assert result.sub_rewards == {"exact": 1.0, "fuzzy": 1.0}


@pytest.mark.parametrize(
    "formula",
    ["exact +", "exact + unknown", "__import__('os')", "exact.real", "[exact]", "exact if 1 else 0", "pow(exact, 2)",
     "max(*[1])", "'a'", "True", "exact < 1", "lambda: 1", ""],
)  # fmt: skip
def test_multi_formula_rejects_anything_outside_the_grammar(formula: str) -> None:
    with pytest.raises(InvalidGrader) as caught:
        validate_grader(parse_grader(_multi(formula)))
    assert caught.value.param == "grader.calculate_output"


def test_multi_math_error_gives_invalid_grade() -> None:
    result = _run(_multi("exact / (fuzzy - 1)", invalid_grade=-1), "Paris")
    assert result.reward == -1
    assert result.metadata.errors.other_error
    assert "division by zero" in (result.detail or "")
    assert _run(_multi("10 ^ 10 ^ 10"), "Paris").metadata.errors.other_error


def test_multi_accepts_list_and_rejects_nested_multi() -> None:
    listed = {**_multi("check"), "graders": [_check("eq", "Paris")]}
    assert _run(listed, "Paris").reward == 1.0
    nested = {**_multi("inner"), "graders": {"inner": _multi("exact")}}
    with pytest.raises(InvalidGrader) as caught:
        parse_grader(nested)
    assert caught.value.param == "grader.graders.inner.type"


def test_multi_child_errors_bubble_up() -> None:
    raw = {**_multi("exact + fuzzy"), "graders": {**_multi("")["graders"], "exact": _check("eq", "{{item.x}}")}}
    result = _run(raw, "Paris", {})
    assert result.metadata.errors.invalid_variable_error
    assert result.metadata.scores["exact"] == 0.0


class FakeJudge:
    """Answers every prompt with a fixed reply and records what it was asked."""

    def __init__(self, text: str, *, finish_reason: str = "stop", fail: Exception | None = None) -> None:
        self.text = text
        self.finish_reason = finish_reason
        self.fail = fail
        self.calls: list[tuple[str, list[ChatMessage], JudgeSampling]] = []

    def complete(self, model: str, messages: list[ChatMessage], sampling: JudgeSampling) -> JudgeReply:
        self.calls.append((model, messages, sampling))
        if self.fail is not None:
            raise self.fail
        return JudgeReply(self.text, JudgeUsage(prompt_tokens=20, completion_tokens=5), self.finish_reason)


def _score_model(**extra: Any) -> dict[str, Any]:
    return {
        "type": "score_model",
        "name": "judge",
        "model": "SmolLM2-135M-Instruct",
        "input": [
            {"role": "developer", "content": "Grade the answer to: {{item.question}}"},
            {"role": "user", "content": [{"type": "input_text", "text": "Answer: {{sample.output_text}}"}]},
        ],
        **extra,
    }


@pytest.mark.parametrize(
    ("reply", "reward", "parse_error"),
    [
        ('{"steps": [{"description": "ok", "conclusion": "good"}], "result": 0.8}', 0.8, False),
        ('Sure! {"result": 7} because', 1.0, False),  # clipped to the default range [0, 1]
        ("0.25", 0.25, False),
        ("I think it is good", 0.0, True),
        ('{"result": "high"}', 0.0, True),
    ],
)
def test_score_model(reply: str, reward: float, parse_error: bool) -> None:
    judge = FakeJudge(reply)
    result = _run(_score_model(), "Paris", {"question": "Capital of France?"}, judge=judge)
    assert result.reward == reward
    assert result.metadata.errors.model_grader_parse_error is parse_error
    assert result.metadata.token_usage == 25
    assert result.metadata.sampled_model_name == "SmolLM2-135M-Instruct"
    usage = result.model_grader_token_usage_per_model["SmolLM2-135M-Instruct"]
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (20, 5, 25)
    model, messages, sampling = judge.calls[0]
    assert model == "SmolLM2-135M-Instruct"
    assert [m.role for m in messages] == ["system", "system", "user"]
    assert messages[1].content == "Grade the answer to: Capital of France?"
    assert messages[2].content == "Answer: Paris"
    assert sampling.temperature == 0.0


def test_score_model_range_and_sampling_params() -> None:
    judge = FakeJudge('{"result": -3}', finish_reason="length")
    raw = _score_model(range=[1, 5], sampling_params={"temperature": 0.5, "max_completions_tokens": 9, "seed": 4})
    result = _run(raw, "Paris", {"question": "q"}, judge=judge)
    assert result.reward == 1.0
    assert result.metadata.errors.truncated_observation_error
    assert judge.calls[0][2] == JudgeSampling(temperature=0.5, top_p=1.0, seed=4, max_tokens=9)
    assert "from 1 to 5" in judge.calls[0][1][0].content


def test_unreachable_judge_is_a_model_grader_server_error() -> None:
    judge = FakeJudge("", fail=RuntimeError("model 'nope' is not served"))
    result = _run(_score_model(), "Paris", {"question": "q"}, judge=judge)
    assert result.reward == 0.0
    assert result.metadata.errors.model_grader_server_error
    assert "nope" in (result.metadata.errors.model_grader_server_error_details or "")
    no_judge = _run(_score_model(), "Paris", {"question": "q"})
    assert no_judge.metadata.errors.model_grader_server_error


def test_label_model() -> None:
    raw = {
        "type": "label_model",
        "name": "sentiment",
        "model": "m",
        "input": [{"role": "user", "content": "Classify: {{sample.output_text}}"}],
        "labels": ["positive", "neutral", "negative"],
        "passing_labels": ["positive"],
    }
    assert _run(raw, "great", judge=FakeJudge('{"result": "positive"}')).reward == 1.0
    assert _run(raw, "meh", judge=FakeJudge("Neutral.")).reward == 0.0
    unparsed = _run(raw, "?", judge=FakeJudge("positive or negative"))
    assert unparsed.metadata.errors.model_grader_parse_error


def test_parsers() -> None:
    assert parse_score('{"result": true}') is None
    assert parse_score('{"result": "0.5"}') == 0.5
    assert parse_score("nan") is None
    assert parse_label('{"result": "B"}', ["a", "b"]) == "b"
    assert parse_label("the answer is a", ["a", "b"]) == "a"


def test_passes() -> None:
    check = parse_grader(_check("eq"))
    assert passes(check, 1.0)
    assert not passes(check, 0.0)
    sim = parse_grader({"type": "text_similarity", "name": "s", "input": "a", "reference": "b",
                        "evaluation_metric": "bleu", "pass_threshold": 0.3})  # fmt: skip
    assert passes(sim, 0.3)
    assert not passes(sim, 0.29)
    score = parse_grader(_score_model(range=[0, 10]))
    assert passes(score, 5.0)
    assert not passes(score, 4.9)


@pytest.mark.parametrize(
    ("graders", "param"),
    [
        ({"string_check": {**_check("eq"), "operation": "x"}}, "grader.graders.string_check.operation"),
        ([_check("eq"), {**_check("eq"), "operation": "x"}], "grader.graders[1].operation"),
        ({**_check("eq"), "operation": "x"}, "grader.graders.operation"),
        ({"a": {k: v for k, v in _check("eq").items() if k != "input"}}, "grader.graders.a.input"),
    ],
)
def test_param_paths_skip_pydantic_union_tags(graders: Any, param: str) -> None:
    raw = {"type": "multi", "name": "m", "graders": graders, "calculate_output": "1"}
    with pytest.raises(InvalidGrader) as caught:
        parse_grader(raw)
    assert caught.value.param == param


def test_param_path_into_message_content() -> None:
    raw = _score_model()
    raw["input"] = [{"role": "user", "content": [{"type": "input_text"}]}]
    with pytest.raises(InvalidGrader) as caught:
        parse_grader(raw)
    assert caught.value.param == "grader.input[0].content[0].text"
