"""Chat JSONL → tokenized examples: labels on assistant turns only (weight 0 is context), the same tokens the
dataset checks count, truncation to ``max_seq_len`` with a log line, and line-numbered errors.

Run: .venv/bin/pytest tests/unit/training/test_examples.py -q  (builds the tiny model once, < 5 s)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from tunery.catalog.chat_tokenizer import ChatTokenizer
from tunery.training.examples import IGNORE_INDEX, InvalidTrainingData, chat_tools, encode_example, read_examples

WEIGHTED = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Lyon.", "weight": 0},
    {"role": "user", "content": "Wrong."},
    {"role": "assistant", "content": "Paris.", "weight": 1},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> ChatTokenizer:
    return ChatTokenizer.from_dir(tiny_model_dir)


def write_jsonl(path: Path, records: list[Any], *, bom: bool = False) -> Path:
    text = "\n".join(json.dumps(r) for r in records) + "\n"
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


def labelled_text(tokenizer: ChatTokenizer, labels: list[int]) -> list[str]:
    """The decoded runs of consecutive trainable labels."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return [tokenizer.decode(run) for run in runs]


def test_labels_cover_weighted_assistant_turns_only(tokenizer: ChatTokenizer) -> None:
    example, truncated = encode_example({"messages": WEIGHTED}, tokenizer, max_seq_len=1024)

    assert not truncated
    assert example.input_ids == tokenizer.encode(tokenizer.render(WEIGHTED))
    assert labelled_text(tokenizer, example.labels) == ["Paris.<|im_end|>"]  # "Lyon." (weight 0) is context
    assert all(label in (token, IGNORE_INDEX) for token, label in zip(example.input_ids, example.labels, strict=True))


def test_counts_agree_with_the_dataset_checks(tokenizer: ChatTokenizer, tmp_path: Path) -> None:
    records = [
        {"messages": WEIGHTED},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]},
    ]
    examples = read_examples(write_jsonl(tmp_path / "train.jsonl", records), tokenizer, max_seq_len=1024)

    for record, example in zip(records, examples, strict=True):
        assert (len(example), example.trainable_count) == tokenizer.count_chat(record["messages"])


def test_long_examples_are_truncated_and_logged(
    tokenizer: ChatTokenizer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    long = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok " * 50}]}
    path = write_jsonl(tmp_path / "train.jsonl", [{"messages": WEIGHTED}, long])

    with caplog.at_level(logging.WARNING, logger="tunery.training.examples"):
        short, cut = read_examples(path, tokenizer, max_seq_len=128)

    assert len(cut) == len(cut.labels) == 128
    assert cut.input_ids == encode_example(long, tokenizer, 10_000)[0].input_ids[:128]
    assert len(short) < 128
    assert "1 example(s) longer than 128 tokens" in caplog.text
    assert "lines 2" in caplog.text


def test_bom_and_blank_lines_are_tolerated(tokenizer: ChatTokenizer, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [{"messages": WEIGHTED}], bom=True)
    path.write_text(path.read_text(encoding="utf-8") + "\n  \n", encoding="utf-8")

    assert len(read_examples(path, tokenizer, max_seq_len=1024)) == 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        ("[1, 2]", "line 2: not a JSON object"),
        ('{"prompt": "x"}', "line 2: not a chat example"),
    ],
)
def test_bad_lines_name_their_line(tokenizer: ChatTokenizer, tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"messages": WEIGHTED}) + "\n" + line + "\n", encoding="utf-8")

    with pytest.raises(InvalidTrainingData, match=message):
        read_examples(path, tokenizer, max_seq_len=1024)


def test_empty_file_is_an_error(tokenizer: ChatTokenizer, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("\n")

    with pytest.raises(InvalidTrainingData, match="no examples"):
        read_examples(path, tokenizer, max_seq_len=1024)


def test_legacy_functions_are_shown_as_tools() -> None:
    function = {"name": "get_weather", "parameters": {"type": "object"}}

    assert chat_tools({"messages": [], "functions": [function]}) == [{"type": "function", "function": function}]
    assert chat_tools({"messages": [], "tools": [{"type": "function", "function": function}]}) == [
        {"type": "function", "function": function}
    ]
    assert chat_tools({"messages": [], "tools": []}) is None
