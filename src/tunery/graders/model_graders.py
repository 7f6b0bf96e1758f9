"""The ``score_model`` and ``label_model`` graders: render the prompt, ask the judge, parse its verdict.

Tunery's models have no structured outputs, so the prompt ends with an instruction to answer with a JSON
object ``{"steps": [...], "result": ...}`` (the format OpenAI's graders request) and the reply is parsed
leniently: the first JSON object holding ``result``, else (score) a bare number or (label) the one
label the reply names. Anything else is ``model_grader_parse_error`` with reward 0. A score is clipped to
``range``; a reply cut off by the token limit also sets ``truncated_observation_error``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from tunery.graders.judge import ChatMessage, Judge, JudgeReply, JudgeSampling
from tunery.graders.outcome import Outcome
from tunery.graders.result import TokenUsage
from tunery.graders.specs import (
    EvalItem,
    GraderLabelModel,
    GraderSamplingParams,
    GraderScoreModel,
    InputImage,
    InputText,
)
from tunery.graders.templates import render

DEFAULT_MAX_TOKENS = 128
_NUMBER = re.compile(r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$")


def score_instruction(low: float, high: float) -> str:
    return (
        f'Answer only with a JSON object {{"steps": [{{"description": "...", "conclusion": "..."}}], '
        f'"result": <a number from {low:g} to {high:g}>}}.'
    )


def label_instruction(labels: list[str]) -> str:
    return f'Answer only with a JSON object {{"steps": [...], "result": "<one of: {", ".join(labels)}>"}}.'


def judge_messages(
    grader: GraderScoreModel | GraderLabelModel, *, sample: dict[str, Any], item: dict[str, Any]
) -> list[ChatMessage]:
    """The messages the judge sees: the rendered ``input`` plus the answer-format instruction."""
    messages = [_render_message(m, i, sample, item) for i, m in enumerate(grader.input)]
    if isinstance(grader, GraderScoreModel):
        instruction = score_instruction(*grader.bounds)
    else:
        instruction = label_instruction(grader.labels)
    return [ChatMessage(role="system", content=instruction), *messages]


def _render_message(message: EvalItem, index: int, sample: dict[str, Any], item: dict[str, Any]) -> ChatMessage:
    param = f"input[{index}].content"
    parts = message.content if isinstance(message.content, list) else [message.content]
    texts = []
    for part in parts:
        if isinstance(part, str):
            texts.append(render(part, sample=sample, item=item, param=param))
        elif isinstance(part, InputText):
            texts.append(render(part.text, sample=sample, item=item, param=param))
        elif isinstance(part, InputImage):
            # Tunery's models read no images: show the URL as text, as OpenAI does for non-vision graders.
            texts.append(f"<image>{render(part.image_url, sample=sample, item=item, param=param)}</image>")
    role = "system" if message.role == "developer" else message.role
    return ChatMessage(role=role, content="\n".join(texts))


def _sampling(params: GraderSamplingParams | None) -> JudgeSampling:
    params = params or GraderSamplingParams()
    return JudgeSampling(
        temperature=0.0 if params.temperature is None else params.temperature,
        top_p=1.0 if params.top_p is None else params.top_p,
        seed=0 if params.seed is None else params.seed,
        max_tokens=params.max_completions_tokens or DEFAULT_MAX_TOKENS,
    )


def _ask(
    grader: GraderScoreModel | GraderLabelModel, judge: Judge | None, sample: dict[str, Any], item: dict[str, Any]
) -> tuple[JudgeReply | None, Outcome]:
    outcome = Outcome(reward=0.0, sampled_model_name=grader.model)
    messages = judge_messages(grader, sample=sample, item=item)
    if judge is None:
        outcome.errors.model_grader_server_error = True
        outcome.errors.model_grader_server_error_details = "No judge model is available to this grader."
        outcome.detail = outcome.errors.model_grader_server_error_details
        return None, outcome
    try:
        reply = judge.complete(grader.model, messages, _sampling(grader.sampling_params))
    except Exception as exc:  # any judge failure is this sample's error, never the caller's crash
        outcome.errors.model_grader_server_error = True
        outcome.errors.model_grader_server_error_details = str(getattr(exc, "message", None) or exc)[:2000]
        outcome.detail = f"The grader model '{grader.model}' failed: {outcome.errors.model_grader_server_error_details}"
        return None, outcome
    name = reply.model or grader.model
    outcome.sampled_model_name = name
    usage = reply.usage
    outcome.usage[name] = TokenUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
    )
    if reply.finish_reason == "length":
        outcome.errors.truncated_observation_error = True
    return reply, outcome


def grade_score_model(
    grader: GraderScoreModel, *, sample: dict[str, Any], item: dict[str, Any], judge: Judge | None
) -> Outcome:
    reply, outcome = _ask(grader, judge, sample, item)
    if reply is None:
        return outcome
    score = parse_score(reply.text)
    if score is None:
        outcome.errors.model_grader_parse_error = True
        outcome.detail = f"The grader model's reply has no numeric result: {reply.text[:500]!r}"
        return outcome
    low, high = grader.bounds
    outcome.reward = min(max(score, low), high)
    return outcome


def grade_label_model(
    grader: GraderLabelModel, *, sample: dict[str, Any], item: dict[str, Any], judge: Judge | None
) -> Outcome:
    reply, outcome = _ask(grader, judge, sample, item)
    if reply is None:
        return outcome
    label = parse_label(reply.text, grader.labels)
    if label is None:
        outcome.errors.model_grader_parse_error = True
        outcome.detail = f"The grader model's reply names none of the labels: {reply.text[:500]!r}"
        return outcome
    outcome.reward = 1.0 if label in grader.passing_labels else 0.0
    return outcome


def parse_score(text: str) -> float | None:
    """The numeric ``result`` of a judge's reply, or ``None`` when it has none."""
    found = _result(text)
    if found is None and _NUMBER.match(text):
        found = text.strip()
    if isinstance(found, bool) or found is None:
        return None
    try:
        value = float(found)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def parse_label(text: str, labels: list[str]) -> str | None:
    """The label a judge's reply chose, or ``None`` when it chose none (or several)."""
    found = _result(text)
    if isinstance(found, str):
        matches = [label for label in labels if label.casefold() == found.strip().casefold()]
        return matches[0] if matches else None
    stripped = text.strip().strip("\"'.").casefold()
    exact = [label for label in labels if label.casefold() == stripped]
    if exact:
        return exact[0]
    named = [label for label in labels if re.search(rf"\b{re.escape(label.casefold())}\b", text.casefold())]
    return named[0] if len(named) == 1 else None


def _result(text: str) -> Any:
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(value, dict) and "result" in value:
            return value["result"]
    return None
