"""The dataset checks: every file of the golden corpus gets exactly its problems (line, code, message);
good files pass; statistics with a word-counting fake tokenizer; the problem cap; BOM/CRLF; ``expected``;
and streaming (bounded reads, flat memory, over-long lines never held whole).

Run: ``pytest tests/unit/training/test_datasets.py`` (the corpus is ``tests/golden/datasets``; its
expectations are in ``expected.json`` there).
"""

from __future__ import annotations

import codecs
import copy
import io
import json
import os
import random
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tunery.domain.datasets import DatasetFormat, DatasetStats, ValidationReport
from tunery.domain.errors import InvalidRequest
from tunery.training import validate_jsonl
from tunery.training.datasets import COUNT_BATCH_BYTES, COUNT_BATCH_EXAMPLES

CORPUS = Path(__file__).resolve().parents[2] / "golden" / "datasets"
EXPECTED: dict[str, Any] = json.loads((CORPUS / "expected.json").read_text())
MiB = 1024 * 1024


def check_file(path: Path, **options: Any) -> ValidationReport:
    with path.open("rb") as stream:
        return validate_jsonl(stream, **options)


def check_bytes(data: bytes, **options: Any) -> ValidationReport:
    return validate_jsonl(io.BytesIO(data), **options)


def jsonl(*examples: Any, newline: str = "\n") -> bytes:
    return "".join(json.dumps(e) + newline for e in examples).encode()


def chat(user: str = "What is the capital of France?", assistant: str = "Paris.") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def preference(prompt: list[dict[str, Any]], preferred: str, rejected: str) -> dict[str, Any]:
    return {
        "input": {"messages": prompt},
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": rejected}],
    }


def codes(report: ValidationReport) -> list[tuple[int | None, str]]:
    return [(p.line, p.code) for p in report.problems]


class WordTokenizer:
    """An ``ExampleTokenizer`` that counts whitespace-separated words: each message costs its words plus
    one, each tool definition one; trainable tokens are the words of assistant messages whose weight is
    not 0. Simple enough to work out expected statistics by hand."""

    def __init__(self, context_length: int = 1000, name: str = "fake-words") -> None:
        self._context_length = context_length
        self._name = name
        self.calls: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def context_length(self) -> int:
        return self._context_length

    def count_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> tuple[int, int]:
        self.calls.append((messages, tools))
        total, trainable = len(tools or []), 0
        for message in messages:
            content = message.get("content")
            text = content if isinstance(content, str) else ""
            words = len(text.split())
            total += words + 1
            if message["role"] == "assistant" and message.get("weight", 1) != 0:
                trainable += words
        return total, trainable


# -------------------------------------------------------------------------------------- the corpus
def test_corpus_files_and_expectations_match() -> None:
    on_disk = {p.name for p in CORPUS.glob("*.jsonl")}
    listed = set(EXPECTED["bad"]) | set(EXPECTED["good"])
    assert on_disk == listed
    assert len(EXPECTED["bad"]) >= 32
    assert all(problems for problems in EXPECTED["bad"].values())


@pytest.mark.parametrize("name", sorted(EXPECTED["bad"]))
def test_bad_file_reports_exact_lines_codes_and_messages(name: str) -> None:
    expected = EXPECTED["bad"][name]

    report = check_file(CORPUS / name)

    assert not report.ok
    assert codes(report) == [(e["line"], e["code"]) for e in expected]
    assert report.problem_count == len(expected)
    for want, problem in zip(expected, report.problems, strict=True):
        assert want["message"] in problem.message, problem
        assert not problem.message.startswith("Line"), "describe() adds the line number"


@pytest.mark.parametrize("name", sorted(EXPECTED["good"]))
def test_good_file_passes(name: str) -> None:
    expected = EXPECTED["good"][name]

    report = check_file(CORPUS / name)

    assert report.problems == []
    assert report.ok
    assert report.examples == expected["examples"]
    assert report.format == DatasetFormat(expected["format"])
    assert report.stats is None
    assert report.summary() == f"{expected['examples']} valid examples."


def test_corpus_problems_read_as_plain_english_with_line_numbers() -> None:
    report = check_file(CORPUS / "bad_wrong_role.jsonl")

    assert report.summary() == (
        "1 problem(s) found:\n"
        "Line 5: messages[1].role 'robot' is not one of system, user, assistant, tool, function, developer"
    )


# ------------------------------------------------------------------------------ encoding and lines
def test_bom_and_crlf_are_accepted_and_do_not_shift_line_numbers() -> None:
    broken = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}
    data = codecs.BOM_UTF8 + jsonl(chat(), chat(), broken, *[chat()] * 9, newline="\r\n")

    report = check_bytes(data)

    assert codes(report) == [(3, "missing_content")]
    assert report.examples == 11


def test_last_line_without_newline_and_trailing_blank_lines_are_fine() -> None:
    body = jsonl(*[chat()] * 10)

    assert check_bytes(body[:-1]).ok
    assert check_bytes(body + b"\n\r\n  \n").ok


def test_each_blank_line_in_the_middle_is_a_problem() -> None:
    data = jsonl(chat(), chat()) + b"\n  \n" + jsonl(*[chat()] * 10)

    report = check_bytes(data)

    assert codes(report) == [(3, "empty_line"), (4, "empty_line")]
    assert report.examples == 12


def test_deeply_nested_json_is_a_problem_not_a_crash() -> None:
    data = jsonl(*[chat()] * 10) + b"[" * 200_000 + b"\n"

    report = check_bytes(data)

    assert codes(report) == [(11, "invalid_json")]


def test_first_line_without_a_format_is_reported_and_the_next_line_decides() -> None:
    data = jsonl({"text": "hello"}, *[preference([{"role": "user", "content": "Q?"}], "A.", "B.")] * 10)

    report = check_bytes(data)

    assert codes(report) == [(1, "unrecognized_format")]
    assert report.format is DatasetFormat.PREFERENCE
    assert report.examples == 10


def test_mixed_formats_name_the_line_that_decided() -> None:
    dpo = preference([{"role": "user", "content": "Q?"}], "A.", "B.")
    data = b"not json\n" + jsonl(dpo, dpo, chat(), *[dpo] * 9)

    report = check_bytes(data)

    assert codes(report) == [(1, "invalid_json"), (4, "mixed_formats")]
    assert "line 2 made this a preference file" in report.problems[1].message


def test_most_lines_decide_chat_against_reinforcement_not_one_odd_first_line() -> None:
    prompt = {"messages": [{"role": "user", "content": "What is 2 + 1?"}], "answer": "3"}
    # A chat file whose line 1 lacks its reply: that line is the problem, not the other eleven.
    data = b"\n".join([jsonl(prompt).strip(), b"not json", b"", jsonl(*[chat()] * 11)])
    report = check_bytes(data)
    assert report.format is DatasetFormat.CHAT
    assert codes(report) == [(1, "unrecognized_key"), (1, "example_missing_assistant_message"), (2, "invalid_json"),
                             (3, "empty_line")]  # fmt: skip
    assert report.examples == 11
    # Two lines, one of each: the first line decides, as before.
    assert check_bytes(jsonl(chat(), prompt), min_examples=0).format is DatasetFormat.CHAT
    assert check_bytes(jsonl(prompt, chat()), min_examples=0).format is DatasetFormat.REINFORCEMENT


ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    2,
    0.5,
    "",
    " ",
    "tool",
    "text",
    "image_url",
    [],
    {},
    [1],
    ["text"],
    {"type": ["text"]},
    {"type": {"a": 1}},
    [{"type": {}}],
]
ODD_KEYS = ["weight", "role", "content", "type", "function", "tool_calls", "tools", "messages", "input", "zzz"]


def json_paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from json_paths(child, (*prefix, key))


def mangle(example: Any, rng: random.Random) -> Any:
    """Replace, delete or add a few values anywhere in a good example."""
    example = copy.deepcopy(example)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(list(json_paths(example)))
        if not path:
            continue
        parent = example
        for key in path[:-1]:
            parent = parent[key]
        roll = rng.random()
        if roll < 0.5:
            parent[path[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
        elif roll < 0.7:
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[rng.choice(ODD_KEYS)] = copy.deepcopy(rng.choice(ODD_VALUES))
        else:
            parent.append(copy.deepcopy(rng.choice(ODD_VALUES)))
    return example


def test_mangled_examples_are_reported_never_crash() -> None:
    rng = random.Random(1)
    good = [
        json.loads(line)
        for name in EXPECTED["good"]
        for line in (CORPUS / name).read_text(encoding="utf-8-sig").splitlines()
    ]
    for _ in range(400):
        data = jsonl(*(mangle(rng.choice(good), rng) for _ in range(5)))
        for expected in (None, DatasetFormat.CHAT, DatasetFormat.PREFERENCE):
            report = check_bytes(data, expected=expected, tokenizer=WordTokenizer())
            assert all(p.code and p.message for p in report.problems)


# ---------------------------------------------------------------------------------------- expected
def test_expected_format_rejects_every_line_of_the_other_format() -> None:
    report = check_file(CORPUS / "good_chat.jsonl", expected=DatasetFormat.PREFERENCE)

    assert codes(report)[:12] == [(n, "unexpected_format") for n in range(1, 13)]
    assert codes(report)[-1] == (None, "invalid_n_examples")
    assert "this file must hold preference" in report.problems[0].message
    assert report.format is DatasetFormat.PREFERENCE
    assert report.examples == 0


def test_expected_format_that_matches_passes() -> None:
    assert check_file(CORPUS / "good_dpo.jsonl", expected=DatasetFormat.PREFERENCE).ok
    assert check_file(CORPUS / "good_chat.jsonl", expected=DatasetFormat.CHAT).ok


def test_expected_format_checks_undecided_lines_against_its_rules() -> None:
    data = jsonl(*[chat()] * 10, {"prompt": "2+2=", "completion": "4"})

    report = check_bytes(data, expected=DatasetFormat.CHAT)

    assert codes(report) == [(11, "missing_messages_list")]


# ------------------------------------------------------------------------------ counts and the cap
def test_problem_list_is_capped_but_every_problem_is_counted() -> None:
    bad_role = {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}
    lines = [chat()] * 12 + [bad_role] * 30

    report = check_bytes(jsonl(*lines), max_problems=20)

    assert report.problem_count == 30
    assert codes(report) == [(n, "unrecognized_role") for n in range(13, 33)]
    assert report.summary().startswith("30 problem(s) found; the first 20 are listed:\nLine 13: ")


def test_a_long_run_of_blank_lines_is_counted_in_full() -> None:
    data = jsonl(chat()) + b"\n" * 25 + jsonl(*[chat()] * 10)

    report = check_bytes(data, max_problems=5)

    assert report.problem_count == 25
    assert codes(report) == [(n, "empty_line") for n in range(2, 7)]


def test_too_few_examples_counts_only_valid_lines() -> None:
    data = jsonl(*[chat()] * 9) + b"{oops\n[]\n"

    report = check_bytes(data)

    assert codes(report) == [(10, "invalid_json"), (11, "data_type"), (None, "invalid_n_examples")]
    assert report.problems[-1].message == (
        "Training file has 9 example(s), but must have at least 10 examples (2 line(s) with problems are not counted)"
    )


def test_min_examples_is_configurable() -> None:
    seven = check_file(CORPUS / "bad_too_few_examples.jsonl", min_examples=7)

    assert seven.ok
    assert seven.examples == 7


# ---------------------------------------------------------------------------------- token statistics
def examples_of_growing_length() -> bytes:
    # Example i: user has i+1 words, assistant 2 words -> (i+1)+1 + 2+1 = i+5 tokens, 2 trainable.
    return jsonl(*[chat(" ".join(["word"] * (i + 1)), "two words") for i in range(10)])


def test_stats_with_a_tokenizer() -> None:
    report = check_bytes(examples_of_growing_length(), tokenizer=WordTokenizer(context_length=100))

    assert report.ok
    assert report.stats == DatasetStats(
        examples=10,
        tokens_total=95,  # 5 + 6 + ... + 14
        tokens_min=5,
        tokens_mean=9.5,
        tokens_max=14,
        trainable_tokens=20,
        examples_over_context=0,
        context_length=100,
        tokenizer="fake-words",
    )


def test_examples_over_the_context_length_are_problems_with_line_numbers() -> None:
    tokenizer = WordTokenizer(context_length=12, name="SmolLM2-135M-Instruct")

    report = check_bytes(examples_of_growing_length(), tokenizer=tokenizer)

    assert codes(report) == [(9, "exceeds_max_tokens"), (10, "exceeds_max_tokens")]
    assert report.problems[0].message == "example has 13 tokens; SmolLM2-135M-Instruct accepts at most 12"
    assert report.examples == 10
    assert report.stats is not None
    assert report.stats.examples_over_context == 2


def test_weight_zero_turns_are_not_trainable() -> None:
    example = {
        "messages": [
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "context only here", "weight": 0},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "trained reply", "weight": 1},
        ]
    }

    report = check_bytes(jsonl(*[example] * 10), tokenizer=WordTokenizer())

    assert report.stats is not None
    assert report.stats.trainable_tokens == 10 * 2
    assert report.stats.tokens_total == 10 * (2 + 4 + 2 + 3)


def test_legacy_functions_reach_the_tokenizer_as_tools() -> None:
    tokenizer = WordTokenizer()

    report = check_file(CORPUS / "good_legacy_functions.jsonl", tokenizer=tokenizer)

    assert report.ok
    _, tools = tokenizer.calls[0]
    assert tools is not None
    assert tools[0]["type"] == "function"
    assert tools[0]["function"]["name"] == "get_current_weather"


def test_preference_stats_train_on_the_preferred_output_only() -> None:
    prompt = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an earlier answer"},
        {"role": "user", "content": "second question"},
    ]
    example = preference(prompt, "short", "a much longer rejected reply")

    report = check_bytes(jsonl(*[example] * 10), tokenizer=WordTokenizer())

    assert report.ok
    assert report.stats is not None
    # prompt: 3 + 4 + 3 = 10; the longer output (rejected) 5 + 1 = 6 -> 16; trainable: "short" = 1.
    assert report.stats.tokens_max == 16
    assert report.stats.trainable_tokens == 10 * 1


class TextOnlyTemplateTokenizer(WordTokenizer):
    """Like a chat template that reads ``message['content']`` unconditionally (SmolLM2's does): messages
    without text content cannot be rendered."""

    def count_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> tuple[int, int]:
        if any(not isinstance(m.get("content"), str) for m in messages):
            raise InvalidRequest(f"The chat template of model '{self.name}' cannot render these messages")
        return super().count_chat(messages, tools)


def test_examples_the_chat_template_cannot_render_are_problems_with_line_numbers() -> None:
    report = check_file(CORPUS / "good_tools.jsonl", tokenizer=TextOnlyTemplateTokenizer())

    assert codes(report) == [(n, "chat_template_error") for n in range(1, 11)]
    assert report.problems[0].message.endswith("this example calls tools, which that template may not support")
    assert report.stats is not None
    assert report.stats.examples == 0


class BatchWordTokenizer(WordTokenizer):
    """A ``WordTokenizer`` that also counts in batches (records each batch's size), like ``ChatTokenizer``.
    A batch holding a message with content ``"unrenderable"`` raises, as a chat template error would."""

    def __init__(self, context_length: int = 1000) -> None:
        super().__init__(context_length)
        self.batches: list[int] = []

    def count_chat_batch(
        self, examples: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]]
    ) -> list[tuple[int, int]]:
        self.batches.append(len(examples))
        for messages, _ in examples:
            if any(m.get("content") == "unrenderable" for m in messages):
                raise InvalidRequest("The chat template of model 'fake-words' cannot render these messages")
        return [super(BatchWordTokenizer, self).count_chat(messages, tools) for messages, tools in examples]

    def count_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> tuple[int, int]:
        if any(m.get("content") == "unrenderable" for m in messages):
            raise InvalidRequest("The chat template of model 'fake-words' cannot render these messages")
        return super().count_chat(messages, tools)


@pytest.mark.parametrize("name", sorted(EXPECTED["good"]) + sorted(EXPECTED["bad"]))
def test_batch_counting_gives_the_same_report_as_counting_one_by_one(name: str) -> None:
    one_by_one = check_file(CORPUS / name, tokenizer=WordTokenizer(context_length=40))
    batched = BatchWordTokenizer(context_length=40)

    assert check_file(CORPUS / name, tokenizer=batched) == one_by_one
    assert not batched.calls or batched.batches  # the batch method was used


def test_problems_stay_in_line_order_when_examples_are_counted_in_batches() -> None:
    long = chat(" ".join(["word"] * 50))
    lines = [jsonl(chat()), jsonl(long), b"{oops\n", jsonl(long), jsonl({"messages": "x"}), jsonl(long)] * 30
    data = b"".join(lines) + b"\n\n" + jsonl(long, chat())

    for max_problems in (3, 20, 1000):
        expected = check_bytes(data, tokenizer=WordTokenizer(context_length=20), max_problems=max_problems)
        batched = check_bytes(data, tokenizer=BatchWordTokenizer(context_length=20), max_problems=max_problems)
        assert batched == expected
        lines_kept = [p.line for p in batched.problems if p.line is not None]
        assert lines_kept == sorted(lines_kept)
    assert codes(expected)[:4] == [
        (2, "exceeds_max_tokens"),
        (3, "invalid_json"),
        (4, "exceeds_max_tokens"),
        (5, "missing_messages_list"),
    ]


def test_batches_are_bounded_in_examples_and_bytes() -> None:
    tokenizer = BatchWordTokenizer()
    report = check_bytes(jsonl(*[chat()] * (2 * COUNT_BATCH_EXAMPLES + 7)), tokenizer=tokenizer)

    assert report.ok
    assert tokenizer.batches == [COUNT_BATCH_EXAMPLES, COUNT_BATCH_EXAMPLES, 7]

    tokenizer = BatchWordTokenizer(context_length=10**6)
    big = chat("word " * (COUNT_BATCH_BYTES // 20))  # about a fifth of the byte budget per line
    check_bytes(jsonl(*[big] * 12), tokenizer=tokenizer)

    assert max(tokenizer.batches) <= 5
    assert sum(tokenizer.batches) == 12


def test_a_batch_that_cannot_be_rendered_is_counted_one_by_one_to_find_the_line() -> None:
    broken = chat(assistant="unrenderable")
    tokenizer = BatchWordTokenizer()

    report = check_bytes(jsonl(*[chat()] * 5, broken, *[chat()] * 5, broken), tokenizer=tokenizer)

    assert codes(report) == [(6, "chat_template_error"), (12, "chat_template_error")]
    assert report.stats is not None
    assert report.stats.examples == 10


def test_invalid_examples_are_not_tokenized() -> None:
    tokenizer = WordTokenizer()
    bad = {"messages": [{"role": "user", "content": "no reply"}]}

    report = check_bytes(jsonl(*[chat()] * 10, bad), tokenizer=tokenizer)

    assert len(tokenizer.calls) == 10
    assert report.stats is not None
    assert report.stats.examples == 10


def test_warnings_count_examples_without_system_or_user_messages() -> None:
    no_user = {"messages": [{"role": "system", "content": "Be kind."}, {"role": "assistant", "content": "Hi."}]}

    report = check_bytes(jsonl(*[chat()] * 11, no_user))

    assert report.ok
    assert report.warnings == [
        "11 example(s) have no system message (e.g. line 1, 2, 3)",
        "1 example(s) have no user message (e.g. line 12)",
    ]


# ------------------------------------------------------------------------------------------ streaming
class ChunkOnlyStream(io.RawIOBase):
    """A stream that only serves bounded ``read(n)`` calls and records them; anything that would read
    the whole file at once (``read()``, ``readall()``, ``readline()`` without a limit) fails the test."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.sizes: list[int] = []

    def read(self, size: int = -1) -> bytes:
        assert 0 < size <= 4 * MiB, f"unbounded read({size})"
        self.sizes.append(size)
        return self._data.read(size)

    def readall(self) -> bytes:
        raise AssertionError("readall() reads the whole file")

    def readline(self, size: int | None = -1) -> bytes:
        raise AssertionError("readline() is not bounded by the checks")

    def readable(self) -> bool:
        return True


def test_reads_the_stream_in_bounded_chunks() -> None:
    data = jsonl(*[chat("x " * 2000)] * 2000)  # about 8 MB
    stream = ChunkOnlyStream(data)

    report = validate_jsonl(stream)  # type: ignore[arg-type]

    assert report.ok
    assert report.examples == 2000
    assert len(stream.sizes) > 4


@pytest.fixture(scope="module")
def huge_line_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 lines; line 3 is a 9 MiB JSON object (over the default 8 MiB limit); line 7 has a bad role."""
    path = tmp_path_factory.mktemp("huge") / "huge_line.jsonl"
    huge = chat("word " * (9 * MiB // 5))
    bad = {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}
    lines = [chat()] * 12
    lines[2], lines[6] = huge, bad
    path.write_bytes(jsonl(*lines))
    return path


def test_a_line_over_the_default_limit_is_reported_and_the_rest_still_checked(huge_line_file: Path) -> None:
    report = check_file(huge_line_file)

    assert codes(report) == [(3, "line_too_long"), (7, "unrecognized_role")]
    assert "the limit is 8,388,608 bytes per line" in report.problems[0].message
    assert report.examples == 10


def test_an_over_long_line_is_never_held_whole(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    path.write_bytes(jsonl(chat(), chat("x" * (24 * MiB)), *[chat()] * 10))

    tracemalloc.start()
    try:
        report = check_file(path, max_line_bytes=64 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert codes(report) == [(2, "line_too_long")]
    length = len(json.dumps(chat("x" * (24 * MiB))))
    assert f"this line is {length:,} bytes long" in report.problems[0].message
    assert peak < 6 * MiB, f"peak {peak / MiB:.1f} MiB for a 24 MiB line"


def generated_chat_lines(target_bytes: int) -> Iterator[bytes]:
    size, i = 0, 0
    while size < target_bytes:
        user = " ".join(f"token{j}" for j in range(i % 97 + 3))
        line = json.dumps(chat(f"Question {i}: {user}?", f"Answer {i}: " + "ok " * (i % 211))).encode() + b"\n"
        size += len(line)
        i += 1
        yield line


def test_memory_stays_flat_on_a_large_file(tmp_path: Path) -> None:
    path = tmp_path / "large.jsonl"
    with path.open("wb") as out:
        out.writelines(generated_chat_lines(16 * MiB))

    tracemalloc.start()
    try:
        report = check_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert report.ok
    assert report.examples > 10_000
    assert peak < 6 * MiB, f"peak {peak / MiB:.1f} MiB while checking a 16 MiB file"


def test_importing_the_training_package_does_not_import_the_ml_stack() -> None:
    code = (
        "import sys, tunery.training\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'transformers', 'peft', 'numpy'}))"
    )
    env = os.environ | {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)

    assert result.stdout.strip() == "[]"


def test_a_lone_surrogate_escape_is_reported_on_its_line() -> None:
    good = json.dumps(chat())
    pair = json.dumps(chat(user="smile \U0001f600"))  # json.dumps writes it as the pair \ud83d\ude00: fine
    lone = good.replace("France?", "France? \\ud83d")
    report = check_bytes(f"{good}\n{pair}\n{lone}\n{good}\n".encode(), min_examples=1)
    assert codes(report) == [(3, "invalid_encoding")]
    message = report.problems[0].message
    assert "unpaired UTF-16 surrogate" in message
    assert "\\ud83d" in message


@pytest.mark.parametrize("indent", [None, 2, "\t"])
def test_a_json_array_is_one_problem_whatever_its_layout(indent: int | str | None) -> None:
    example = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    data = b"\xef\xbb\xbf" + json.dumps([example] * 40, indent=indent).encode()
    report = check_bytes(data, min_examples=0)
    assert codes(report) == [(1, "json_array")]
    assert report.problem_count == 1
    assert "JSONL needs one object per line" in report.problems[0].describe()


def test_the_minimum_is_not_applied_when_the_role_is_not_known() -> None:
    example = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    assert check_bytes(jsonl(*[example] * 4), min_examples=0).ok
    assert codes(check_bytes(jsonl(*[example] * 4))) == [(None, "invalid_n_examples")]
