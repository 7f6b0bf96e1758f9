"""Model graders in reinforcement fine-tuning: the trainer's ``RemoteJudge`` asks the worker's ``JudgeRelay``,
which answers with the same ``ChatJudge`` evals use (here over the chat service on the FakeEngine), so a
score_model's reward is exactly what the served judge model replied; a judge failure is the grading's
``model_grader_server_error`` with its reason, and a wrong token or a closed relay never gets an answer.

Run alone: ``.venv/bin/pytest tests/unit/api/test_rft_judge.py``
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.api.conftest import Api
from tunery.graders import ChatMessage, JudgeReply, JudgeSampling
from tunery.services.graders import ChatJudge
from tunery.services.judge_relay import JudgeRelay
from tunery.training.remote_judge import JudgeUnavailable, RemoteJudge
from tunery.training.rft import Rewarder

SCORE = {"type": "score_model", "name": "judge", "model": "tiny-llama", "range": [0, 10],
         "input": [{"role": "user", "content": "Score {{sample.output_text}} against {{item.answer}}"}]}  # fmt: skip
LABEL_IN_MULTI = {
    "type": "multi", "name": "both", "calculate_output": "verdict + exact",
    "graders": {
        "verdict": {"type": "label_model", "name": "verdict", "model": "tiny-llama", "labels": ["right", "wrong"],
                    "passing_labels": ["right"], "input": [{"role": "user", "content": "{{sample.output_text}}"}]},
        "exact": {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                  "reference": "{{item.answer}}", "operation": "eq"},
    },
}  # fmt: skip


@pytest.fixture
def relay(api: Api) -> Iterator[JudgeRelay]:
    relay = JudgeRelay(ChatJudge(api.services.chat, api.project_id))
    yield relay
    relay.close()


def test_a_score_model_reward_is_what_the_served_judge_replied(api: Api, relay: JudgeRelay) -> None:
    api.engine.enqueue('{"steps": [], "result": 7}', "3.5")
    rewarder = Rewarder(SCORE, concurrency=1, parse_json=True, judge=RemoteJudge(relay.url, relay.token))
    try:
        first, second = rewarder.grade(["4", "5"], [{"answer": "4"}] * 2)
    finally:
        rewarder.close()
    assert (first.reward, second.reward) == (7.0, 3.5)
    assert not first.errored
    assert first.metadata.sampled_model_name == "tiny-llama"
    assert (first.metadata.token_usage or 0) > 0
    assert [r.base_model for r in api.engine.requests] == ["tiny-llama", "tiny-llama"]  # the served judge model
    assert api.engine.requests[0].params.max_tokens == 128  # the grader's default judge budget


def test_a_label_model_inside_a_multi_grader_is_judged_too(api: Api, relay: JudgeRelay) -> None:
    api.engine.enqueue('{"result": "right"}', '{"result": "wrong"}')
    rewarder = Rewarder(LABEL_IN_MULTI, concurrency=1, parse_json=True, judge=RemoteJudge(relay.url, relay.token))
    try:
        results = rewarder.grade(["4", "5"], [{"answer": "4"}] * 2)
    finally:
        rewarder.close()
    assert [r.reward for r in results] == [2.0, 0.0]
    assert results[0].sub_rewards == {"verdict": 1.0, "exact": 1.0}


def test_a_judge_that_fails_is_the_gradings_server_error_with_its_reason() -> None:
    class Broken:
        def complete(self, model: str, messages: list[ChatMessage], sampling: JudgeSampling) -> JudgeReply:
            raise LookupError(f"no model named {model}")

    relay = JudgeRelay(Broken())
    rewarder = Rewarder(SCORE, concurrency=1, parse_json=True, judge=RemoteJudge(relay.url, relay.token))
    try:
        (result,) = rewarder.grade(["4"], [{"answer": "4"}])
    finally:
        rewarder.close()
        relay.close()
    assert result.reward == 0.0
    assert result.metadata.errors.model_grader_server_error
    assert "no model named tiny-llama" in (result.metadata.errors.model_grader_server_error_details or "")


def test_a_wrong_token_or_a_closed_relay_gets_no_answer(api: Api, relay: JudgeRelay) -> None:
    question = [ChatMessage(role="user", content="hi")]
    with pytest.raises(JudgeUnavailable, match="token"):
        RemoteJudge(relay.url, "not-the-token").complete("tiny-llama", question, JudgeSampling())
    assert RemoteJudge(relay.url, relay.token).complete("tiny-llama", question, JudgeSampling()).text
    url = relay.url
    relay.close()
    with pytest.raises(JudgeUnavailable, match="cannot be reached"):
        RemoteJudge(url, relay.token, timeout_s=5).complete("tiny-llama", question, JudgeSampling())
