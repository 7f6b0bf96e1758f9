"""The checks of files uploaded with purpose ``evals``: JSON objects one a line, with line numbers, none of
the training-file rules, and one clear problem for a pretty-printed JSON array.

Run alone: ``.venv/bin/pytest tests/unit/training/test_eval_files.py``
"""

from __future__ import annotations

import io
import json
from typing import Any

from tunery.domain.datasets import ValidationReport
from tunery.training import validate_eval_jsonl


def check(data: bytes, **options: Any) -> ValidationReport:
    return validate_eval_jsonl(io.BytesIO(data), **options)


def jsonl(*rows: Any) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def test_rows_need_no_chat_format_and_no_minimum_count() -> None:
    report = check(jsonl({"item": {"question": "2+2?", "answer": "4"}},
                         {"item": {"q": 1}, "sample": {"output_text": "x"}},
                         {"question": "a bare object is the item"}))  # fmt: skip
    assert report.ok, report.summary()
    assert report.examples == 3
    assert report.format is None
    assert report.stats is None
    assert report.summary() == "3 valid rows."


def test_bad_lines_are_reported_with_their_numbers() -> None:
    data = b'{"item": {"q": 1}}\n{"item": \n["not", "an", "object"]\n{"item": "text"}\n\n{"item": {}, "sample": 3}\n'
    report = check(data)
    assert [(p.line, p.code) for p in report.problems] == [
        (2, "invalid_json"),
        (3, "data_type"),
        (4, "invalid_item"),
        (5, "empty_line"),
        (6, "invalid_sample"),
    ]
    assert report.examples == 1
    described = report.summary()
    assert "Line 4: 'item' must be a JSON object" in described
    assert "got a string ('text')" in described


def test_a_pretty_printed_json_array_is_one_clear_problem() -> None:
    rows = [{"item": {"question": f"q{i}"}} for i in range(30)]
    report = check(json.dumps(rows, indent=2).encode())
    assert report.problem_count == 1
    (problem,) = report.problems
    assert problem.line is None
    assert problem.code == "invalid_file_format"
    assert "JSON array" in problem.message
    assert "one JSON object per line" in problem.message


def test_an_array_of_objects_on_one_line_is_the_same_problem() -> None:
    report = check(json.dumps([{"item": {"q": 1}}, {"item": {"q": 2}}]).encode() + b"\n")
    assert [(p.line, p.code) for p in report.problems] == [(None, "invalid_file_format")]
    assert "on one line" in report.problems[0].message


def test_empty_and_binary_files_are_whole_file_problems() -> None:
    assert [p.code for p in check(b"").problems] == ["empty_file"]
    assert [p.code for p in check(b"\x1f\x8b\x08\x00rest").problems] == ["invalid_file_format"]


def test_a_bom_is_accepted() -> None:
    assert check(b"\xef\xbb\xbf" + jsonl({"item": {"q": 1}})).ok


def test_the_problem_list_is_capped_but_every_problem_counted() -> None:
    report = check(b"nope\n" * 50, max_problems=5)
    assert len(report.problems) == 5
    assert report.problem_count == 50
