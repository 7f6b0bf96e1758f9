"""Line splitting across chunk boundaries (with the over-long-line rule), and recognising files that are
not UTF-8 text by their first bytes.

Run: ``pytest tests/unit/training/test_jsonl_lines.py``
"""

from __future__ import annotations

import codecs
import random

import pytest

from tunery.training.jsonl_lines import sniff_not_text, split_lines


def reference_lines(data: bytes, limit: int) -> list[bytes | int]:
    """What ``split_lines`` must yield, computed with the whole data in memory."""
    pieces = data.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()
    return [piece if len(piece) <= limit else len(piece) for piece in pieces]


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


SAMPLES = [
    b"",
    b"\n",
    b"abc",
    b"abc\n",
    b"abc\ndef",
    b"a\n\nb\n\n",
    b"0123456789\n01234567890\nxy\r\n",
    b"\n\n\n",
    b"exactly8\n123456789\n",
]


@pytest.mark.parametrize("data", SAMPLES)
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 8, 64])
def test_split_lines_matches_the_in_memory_reference(data: bytes, chunk_size: int) -> None:
    assert list(split_lines(chunked(data, chunk_size), 8)) == reference_lines(data, 8)


def test_split_lines_on_random_data_and_chunk_sizes() -> None:
    rng = random.Random(7)
    for _ in range(300):
        data = bytes(rng.choice(b"ab\n\r") for _ in range(rng.randrange(0, 120)))
        limit = rng.randrange(0, 12)
        size = rng.randrange(1, 20)
        assert list(split_lines(chunked(data, size), limit)) == reference_lines(data, limit), (data, limit, size)


def test_a_long_line_spanning_many_chunks_is_reported_by_length() -> None:
    chunks = [b"ok\n" + b"x" * 10, *([b"x" * 10] * 100), b"x\nend"]

    assert list(split_lines(chunks, 50)) == [b"ok", 1011, b"end"]


@pytest.mark.parametrize(
    ("first_bytes", "says"),
    [
        (codecs.BOM_UTF16_LE + '{"a": 1}\n'.encode("utf-16-le"), "File is UTF-16 encoded"),
        (codecs.BOM_UTF16_BE + '{"a": 1}\n'.encode("utf-16-be"), "File is UTF-16 encoded"),
        (codecs.BOM_UTF32_LE + '{"a": 1}\n'.encode("utf-32-le"), "File is UTF-32 encoded"),
        ('{"messages": []}\n'.encode("utf-16-le"), "File looks UTF-16 encoded"),
        ('{"messages": []}\n'.encode("utf-16-be"), "File looks UTF-16 encoded"),
        (b"\x1f\x8b\x08\x00rest", "gzip archive"),
        (b"PK\x03\x04rest", "ZIP archive"),
        (b"PAR1rest", "Parquet"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "a PNG image"),
        (b"no NUL on line one\n" + bytes(range(256)) * 4, "File looks binary"),
        (b"\x00\x01binary first line", "File looks binary"),
    ],
)
def test_sniff_names_what_the_file_is(first_bytes: bytes, says: str) -> None:
    reason = sniff_not_text(first_bytes)

    assert reason is not None
    assert says in reason


@pytest.mark.parametrize(
    "first_bytes",
    [
        b"",
        b'{"messages": []}\n',
        codecs.BOM_UTF8 + b'{"messages": []}\n',
        b'{"messages": []}\n{"x": "\x00 on line 2 is judged per line"}\n',
        '{"content": "naïve café"}\n'.encode(),
    ],
)
def test_sniff_lets_utf8_text_through(first_bytes: bytes) -> None:
    assert sniff_not_text(first_bytes) is None
