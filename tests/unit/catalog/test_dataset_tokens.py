"""The dataset checks with SmolLM2's real ChatTokenizer: every valid example of the golden corpus renders
(tool calls and legacy functions included) and counting in batches gives exactly the one-by-one counts.

Run: .venv/bin/pytest tests/unit/catalog/test_dataset_tokens.py -q  (prepares SmolLM2's tokenizer from the
bundled GGUF once per session, ~6 s)
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import pytest

from tunery.catalog import ChatTokenizer
from tunery.domain.datasets import DatasetFormat, ValidationReport
from tunery.training import validate_jsonl

CORPUS = Path(__file__).resolve().parents[2] / "golden" / "datasets"
EXPECTED: dict[str, Any] = json.loads((CORPUS / "expected.json").read_text())


class OneByOne:
    """The same tokenizer without ``count_chat_batch``: the checks then count example by example."""

    def __init__(self, tokenizer: ChatTokenizer) -> None:
        self._tokenizer = tokenizer

    @property
    def name(self) -> str:
        return self._tokenizer.name

    @property
    def context_length(self) -> int:
        return self._tokenizer.context_length

    def count_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> tuple[int, int]:
        return self._tokenizer.count_chat(messages, tools)


@pytest.fixture(scope="module")
def smollm2(smollm2_tokenizer_dir: Path) -> ChatTokenizer:
    return ChatTokenizer.from_dir(smollm2_tokenizer_dir)


def check(data: bytes, tokenizer: Any) -> ValidationReport:
    return validate_jsonl(io.BytesIO(data), tokenizer=tokenizer)


@pytest.mark.parametrize("name", sorted(EXPECTED["good"]))
def test_good_files_pass_with_smollm2s_tokenizer(smollm2: ChatTokenizer, name: str) -> None:
    data = (CORPUS / name).read_bytes()

    report = check(data, smollm2)

    assert report.problems == []
    assert report.format == DatasetFormat(EXPECTED["good"][name]["format"])
    assert report.stats is not None
    assert report.stats.examples == EXPECTED["good"][name]["examples"]
    # an RFT prompt has nothing to imitate: the grader, not the file, judges the answer
    assert (report.stats.trainable_tokens > 0) is (report.format is not DatasetFormat.REINFORCEMENT)
    assert check(data, OneByOne(smollm2)) == report


@pytest.mark.parametrize("name", sorted(EXPECTED["bad"]))
def test_bad_files_get_no_template_errors_with_smollm2s_tokenizer(smollm2: ChatTokenizer, name: str) -> None:
    data = (CORPUS / name).read_bytes()

    report = check(data, smollm2)

    expected = EXPECTED["bad"][name]
    assert [(p.line, p.code) for p in report.problems] == [(e["line"], e["code"]) for e in expected]
    assert check(data, OneByOne(smollm2)) == report


def test_tool_examples_count_their_tool_calls_as_trainable(smollm2: ChatTokenizer) -> None:
    data = (CORPUS / "good_tools.jsonl").read_bytes()
    first = json.loads(data.splitlines()[0])
    stats = check(data, smollm2).stats
    assert stats is not None

    tokens, trainable = smollm2.count_chat(first["messages"], first["tools"])
    final_answer = smollm2.encode(first["messages"][-1]["content"] + "<|im_end|>")
    assert trainable > len(final_answer)  # the <tool_call> turn is trained on too
    assert stats.tokens_min <= tokens <= stats.tokens_max


def test_batched_counts_equal_one_by_one_counts_on_mixed_chats(smollm2: ChatTokenizer) -> None:
    # Bench-like lines (bench/validate_files.py): multi-turn, weights, tool calls, unicode, whitespace edges.
    good = [
        example
        for name in EXPECTED["good"]
        if EXPECTED["good"][name]["format"] == "chat"
        for line in (CORPUS / name).read_text(encoding="utf-8-sig").splitlines()
        if "messages" in (example := json.loads(line))
    ]
    rng = random.Random(3)
    pieces = ["Paris", " the", "\n", "\n\n", "  ", "🙂", "東京", "é", "<|im_end|>", "'s", "1234", "."]
    lines = []
    for _ in range(700):
        example = json.loads(json.dumps(rng.choice(good)))
        for message in example["messages"]:
            if isinstance(message.get("content"), str) and message["content"]:
                message["content"] = "".join(rng.choices(pieces, k=3)) + message["content"] + rng.choice(pieces)
        lines.append(json.dumps(example))
    data = ("\n".join(lines) + "\n").encode()

    report = check(data, smollm2)

    assert report == check(data, OneByOne(smollm2))
    assert report.stats is not None
    assert report.stats.examples == 700
