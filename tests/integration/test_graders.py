"""Grader endpoints through the official openai client against a real server and the real engine.

Each grader type gives its exact reward; hostile python graders (a loop, an exception, a read of the
data directory, a socket) are reported in ``metadata.errors`` and the server keeps serving; a
score_model grader is judged by the tiny base model. Run alone:
``.venv/bin/pytest tests/integration/test_graders.py``
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.integration.harness import Server
from tunery.graders.model_graders import parse_score, score_instruction

pytestmark = pytest.mark.integration

CHECK: dict[str, Any] = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}


@pytest.fixture
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0)


@pytest.fixture
def azure(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/openai/v1/", api_key=server.key, max_retries=0)


def _run(client: openai.OpenAI, grader: dict[str, Any], sample: str, item: dict[str, Any] | None = None) -> Any:
    return client.fine_tuning.alpha.graders.run(grader=grader, model_sample=sample, item=item or {})  # type: ignore[arg-type]


def test_validate_echoes_the_grader(client: openai.OpenAI, azure: openai.OpenAI) -> None:
    for api in (client, azure):
        validated = api.fine_tuning.alpha.graders.validate(grader=CHECK)  # type: ignore[arg-type]
        assert validated.grader is not None
        assert validated.grader.to_dict() == CHECK


@pytest.mark.parametrize(
    ("grader", "sample", "item", "reward"),
    [
        (CHECK, "Paris", {"answer": "Paris"}, 1.0),
        ({**CHECK, "operation": "ilike"}, "It is PARIS.", {"answer": "paris"}, 1.0),
        ({**CHECK, "operation": "ne"}, "Paris", {"answer": "Paris"}, 0.0),
        ({"type": "text_similarity", "name": "s", "input": "{{sample.output_text}}", "reference": "the cat sat",
          "evaluation_metric": "rouge_2"}, "the cat ran", {}, 0.5),
        ({"type": "text_similarity", "name": "s", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
          "evaluation_metric": "fuzzy_match"}, "Hello World!", {"answer": "hello world"}, 1.0),
        ({"type": "python", "name": "p",
          "source": "def grade(sample, item):\n    return len(sample['output_text']) / item['n']\n"},
         "abc", {"n": 4}, 0.75),
        ({"type": "multi", "name": "m", "calculate_output": "(a + 3 * b) / 4",
          "graders": {"a": CHECK, "b": {**CHECK, "name": "b", "operation": "like", "reference": "ar"}}},
         "Paris", {"answer": "London"}, 0.75),
    ],
)  # fmt: skip
def test_exact_rewards(
    client: openai.OpenAI, grader: dict[str, Any], sample: str, item: dict[str, Any], reward: float
) -> None:
    result = _run(client, grader, sample, item)
    assert result.reward == pytest.approx(reward)
    assert result.metadata.name == grader["name"]
    assert result.metadata.type == grader["type"]
    assert not any(v for v in result.metadata.errors.to_dict().values())
    assert result.metadata.execution_time >= 0


@pytest.mark.parametrize(
    ("source", "flag", "detail"),
    [
        ("def grade(sample, item):\n    while True:\n        pass\n", "python_grader_server_error", None),
        ("def grade(sample, item):\n    raise RuntimeError('grader bug')\n", "python_grader_runtime_error",
         "grader bug"),
        ("def grade(sample, item):\n    return len(open(item['path']).read())\n", "python_grader_runtime_error",
         "sandbox does not allow"),
        ("import socket\ndef grade(sample, item):\n    socket.create_connection((item['host'], item['port']), 2)\n"
         "    return 1\n", "python_grader_runtime_error", None),
    ],
    ids=["loops-forever", "raises", "reads-data-dir", "opens-socket"],
)  # fmt: skip
def test_hostile_python_graders_are_reported_and_the_server_is_unharmed(
    client: openai.OpenAI, server: Server, source: str, flag: str, detail: str | None
) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    item = {"path": str(server.data_dir / "tunery.db"), "host": host, "port": int(port)}
    result = _run(client, {"type": "python", "name": "hostile", "source": source}, "x", item)
    errors = result.metadata.errors
    assert result.reward == 0.0
    assert getattr(errors, flag) is True
    if detail is not None:
        assert detail in (errors.python_grader_runtime_error_details or "")
    if flag == "python_grader_server_error":
        assert errors.python_grader_server_error_type == "timeout"
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    assert _run(client, CHECK, "ok", {"answer": "ok"}).reward == 1.0


def test_score_model_judged_by_the_tiny_base_model(client: openai.OpenAI) -> None:
    grader = {
        "type": "score_model",
        "name": "judge",
        "model": "tiny-llama",
        "input": [{"role": "user", "content": "Is {{sample.output_text}} the capital of {{item.country}}?"}],
        "sampling_params": {"max_completions_tokens": 12, "seed": 3},
    }
    result = _run(client, grader, "Paris", {"country": "France"})
    # The same prompt through chat completions: the grader's reward is exactly what its reply parses to.
    reply = client.chat.completions.create(
        model="tiny-llama",
        messages=[
            {"role": "system", "content": score_instruction(0, 1)},
            {"role": "user", "content": "Is Paris the capital of France?"},
        ],
        temperature=0.0,
        top_p=1.0,
        seed=3,
        max_tokens=12,
    )
    text = reply.choices[0].message.content or ""
    parsed = parse_score(text)
    assert result.metadata.errors.model_grader_parse_error is (parsed is None)
    assert result.reward == (0.0 if parsed is None else min(max(parsed, 0.0), 1.0))
    assert result.metadata.sampled_model_name == "tiny-llama"
    assert reply.usage is not None
    assert result.metadata.token_usage == reply.usage.total_tokens
    assert not result.metadata.errors.model_grader_server_error


@pytest.mark.parametrize(
    ("grader", "param"),
    [
        ({**CHECK, "type": "regex"}, "grader.type"),
        ({**CHECK, "operation": "startswith"}, "grader.operation"),
        ({**CHECK, "reference": "{{ answer }}"}, "grader.reference"),
        ({"type": "multi", "name": "m", "graders": {"a": CHECK}, "calculate_output": "a * (2"},
         "grader.calculate_output"),
        ({"type": "multi", "name": "m", "graders": {"a": CHECK}, "calculate_output": "a + b"},
         "grader.calculate_output"),
        ({"type": "score_model", "name": "s", "model": "no-such-model", "input": [{"role": "user", "content": "x"}]},
         "grader.model"),
    ],
)  # fmt: skip
def test_bad_graders_are_400s_naming_the_param(client: openai.OpenAI, grader: dict[str, Any], param: str) -> None:
    for call in (
        lambda: client.fine_tuning.alpha.graders.validate(grader=grader),  # type: ignore[arg-type]
        lambda: _run(client, grader, "x"),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            call()
        assert caught.value.status_code == 400
        assert caught.value.param == param
