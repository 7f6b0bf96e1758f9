"""Streaming text: incremental detokenization (split UTF-8 characters, SmolLM2-style byte-level BPE) and
stop strings (held back while they may still match, cut before the earliest one).

Run: ``.venv/bin/pytest tests/unit/inference/test_detokenizer.py -q``
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from tunery.inference.detokenizer import IncrementalDetokenizer, StopStrings

SAMPLES = (
    "héllo wörld",
    "emoji 😀🎉 and CJK 日本語テキスト",
    "  leading spaces, tabs\tand\nnewlines ",
    "Ünïcödé ﬁ ligature — dashes … ellipsis",
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))


@pytest.mark.parametrize("sample", SAMPLES)
def test_pieces_add_up_to_the_decoded_text_and_never_show_half_a_character(tokenizer: Tokenizer, sample: str) -> None:
    prompt = tokenizer.encode("<|im_start|>assistant\n").ids
    ids = tokenizer.encode(sample).ids
    assert len(ids) > len(sample.split())  # the tiny vocabulary splits characters into bytes
    detokenizer = IncrementalDetokenizer(lambda i: tokenizer.decode(i, skip_special_tokens=True), prompt)
    pieces = [detokenizer.push(token) for token in ids]
    pieces.append(detokenizer.flush())
    assert "".join(pieces) == sample
    assert not any("\ufffd" in piece for piece in pieces)
    assert "" in pieces  # some tokens only completed a character with the next one


def test_an_unfinished_character_is_flushed_as_a_replacement_character(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("😀").ids
    detokenizer = IncrementalDetokenizer(lambda i: tokenizer.decode(i), [])
    assert [detokenizer.push(token) for token in ids[:-1]] == [""] * (len(ids) - 1)
    assert "\ufffd" in detokenizer.flush()


def test_stop_strings_are_held_back_then_cut() -> None:
    stops = StopStrings(["</answer>", "STOP"])
    assert stops.push("The answer is 4") == "The answer is 4"
    assert stops.push(" </ans") == " "  # may become "</answer>": wait
    assert stops.push("wer> and more") == ""
    assert stops.stopped
    assert stops.push("ignored") == ""
    assert stops.flush() == ""


def test_the_earliest_stop_string_wins_and_false_alarms_are_released() -> None:
    stops = StopStrings(["cd", "abcd"])
    assert stops.push("xa") == "x"
    assert stops.push("bc") == ""
    assert stops.push("d!") == ""  # "abcd" starts before "cd"
    assert stops.stopped

    stops = StopStrings(["STOP"])
    assert stops.push("ST") == ""
    assert stops.push("ART") == "START"
    assert stops.push("ST") == ""
    assert stops.flush() == "ST"  # generation ended without the stop string
    assert not stops.stopped


def test_without_stop_strings_everything_passes_through() -> None:
    stops = StopStrings(["", ""])
    assert stops.push("a") == "a"
    assert stops.flush() == ""
